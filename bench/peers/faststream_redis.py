"""FastStream's Redis-stream subscriber in a consumer group, with a no-op handler."""

from __future__ import annotations

from faststream import FastStream
from faststream.redis import RedisBroker, StreamSub
from redis.asyncio import Redis

from bench.peers.common import duplicate_first, main

STREAM = "faststream-bench"
GROUP = "faststream"


async def fill(url: str, count: int, size: int) -> None:
    """Publish one message through FastStream, then copy it; create the group at 0."""
    broker = RedisBroker(url)
    await broker.connect()
    await broker.publish(b"x" * size, stream=STREAM)
    await broker.stop()
    await duplicate_first(url, STREAM, count)
    # FastStream creates its group at "$" (new entries only); the backlog needs 0.
    await Redis.from_url(url).xgroup_create(STREAM, GROUP, id="0")


async def consume(url: str) -> None:
    """Run the subscriber; per-message logging is off, as it is in Chirp."""
    broker = RedisBroker(url, logger=None)
    sub = StreamSub(STREAM, group=GROUP, consumer="c1", max_records=100)

    @broker.subscriber(stream=sub)
    async def handle(body: bytes) -> None:
        """Do nothing."""

    await FastStream(broker, logger=None).run()


if __name__ == "__main__":
    main(fill, consume)
