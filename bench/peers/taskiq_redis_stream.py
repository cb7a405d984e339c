"""Taskiq's Redis-stream broker with its receiver, with a no-op task."""

from __future__ import annotations

from taskiq.api import run_receiver_task
from taskiq_redis import RedisStreamBroker

from bench.peers.common import duplicate_first, main

STREAM = "taskiq-bench"
CONCURRENCY = 128


def make_broker(url: str) -> RedisStreamBroker:
    """Return a broker whose group starts at 0 and reads 100 entries at a time."""
    broker = RedisStreamBroker(url, queue_name=STREAM, consumer_id="0", xread_count=100)

    @broker.task(task_name="noop")
    async def noop(payload: str) -> None:
        """Do nothing."""

    return broker


async def fill(url: str, count: int, size: int) -> None:
    """Send one task through Taskiq, then copy it."""
    broker = make_broker(url)
    await broker.startup()
    task = broker.find_task("noop")
    assert task is not None
    await task.kiq("x" * size)
    await broker.shutdown()
    await duplicate_first(url, STREAM, count)


async def consume(url: str) -> None:
    """Run Taskiq's receiver with 128 concurrent tasks."""
    broker = make_broker(url)
    await broker.startup()
    await run_receiver_task(broker, max_async_tasks=CONCURRENCY)


if __name__ == "__main__":
    main(fill, consume)
