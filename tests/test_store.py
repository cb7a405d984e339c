"""A worker's Redis state: safe trimming, retry copies, idempotency keys."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from chirptest.messages_pb2 import Ping

import chirp
from chirp import Client, Context
from chirp.testing import EmbeddedServers, running_workers


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def small(servers: EmbeddedServers, unique_name: str) -> AsyncIterator[Client]:
    """A client whose streams keep only 100 entries once every group has them."""
    async with Client(
        "test",
        nats_url=servers.nats_url,
        redis_url=servers.redis_url,
        namespace=unique_name,
        stream_retention=100,
    ) as connected:
        yield connected


async def test_trimming_keeps_what_a_group_has_not_acknowledged(
    small: Client, unique_name: str
) -> None:
    stream = small.names.stream_key("test-ping")
    redis = small.redis
    await redis.xgroup_create(stream, "slow-reader", id="0", mkstream=True)
    ctx = small.context()
    for index in range(50):
        await ctx.msg(Ping(key=str(index)))
    # The group reads (and so holds pending) only the first 10 entries.
    await redis.xreadgroup("slow-reader", "c", {stream: ">"}, count=10)
    for index in range(50, 600):
        await ctx.msg(Ping(key=str(index)))
    await small.writer.close()  # trims run beside the publishes: let them end

    assert await redis.xlen(stream) == 600
    await redis.xack(stream, "slow-reader", *[e for e, _ in await _pending(small)])
    for index in range(600, 700):
        await ctx.msg(Ping(key=str(index)))
    await small.writer.close()

    # Acked: the first 10; never delivered: 10..699. Only the 10 acked may go.
    entries = await redis.xrange(stream, count=1)
    assert Ping.FromString(_body(entries[0])).key == "10"
    assert await redis.xlen(stream) == 690


async def _pending(client: Client) -> list[tuple[str, Any]]:
    stream = client.names.stream_key("test-ping")
    rows = await client.redis.xpending_range(stream, "slow-reader", "-", "+", 100)
    return [(row["message_id"], row) for row in rows]


def _body(entry: Any) -> bytes:
    from chirp.envelope_pb2 import Envelope

    return Envelope.FromString(entry[1][b"e"]).body


async def test_trimming_keeps_the_retention_once_everything_is_acked(
    small: Client, unique_name: str
) -> None:
    handled: list[str] = []

    @chirp.worker(name=unique_name)
    async def record(ctx: Context, msg: Ping) -> None:
        handled.append(msg.key)

    ctx = small.context()
    async with running_workers(small, record):
        for index in range(500):
            await ctx.msg(Ping(key=str(index)))
        await _wait_for(lambda: len(handled) == 500)
        await asyncio.sleep(0.1)
        for index in range(500, 600):
            await ctx.msg(Ping(key=str(index)))
        await _wait_for(lambda: len(handled) == 600)
    await small.writer.close()

    length = await small.redis.xlen(small.names.stream_key("test-ping"))
    assert 100 <= length < 250


async def test_a_scheduled_retry_survives_its_stream_entry(
    client: Client, unique_name: str
) -> None:
    attempts: list[int] = []
    failed = asyncio.Event()

    @chirp.worker(name=unique_name, backoff=chirp.Backoff(base=0.3, cap=0.3))
    async def flaky(ctx: Context, msg: Ping) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            failed.set()
            raise RuntimeError("not yet")

    published = await client.context().msg(Ping(key="x"))
    async with running_workers(client, flaky):
        await asyncio.wait_for(failed.wait(), 5)
        stream = client.names.stream_key("test-ping")
        await client.redis.xdel(stream, published.entry_id)
        await _wait_for(lambda: attempts == [1, 2])

    assert await client.redis.hlen(client.names.retry_data_key(unique_name)) == 0


async def test_an_idempotency_key_is_completed_once(
    client: Client, unique_name: str
) -> None:
    runs: list[tuple[str, bool]] = []

    @chirp.worker(name=unique_name)
    async def once(ctx: Context, msg: Ping) -> None:
        runs.append((msg.text, ctx.redelivered))
        await asyncio.sleep(0.2)

    ctx = client.context()
    await ctx.msg(Ping(key="a", text="first"), idempotency_key="order-1")
    await ctx.msg(Ping(key="a", text="second"), idempotency_key="order-1")
    await ctx.msg(Ping(key="b", text="other"), idempotency_key="order-2")
    async with running_workers(client, once):
        await _wait_for(lambda: len(runs) == 2)
        stats = client.names.stats_key(unique_name)
        await _wait_for_async(lambda: client.redis.hget(stats, "duplicates"), b"1")

    # Either publish of "order-1" may win; the other is never run.
    texts = sorted(text for text, _ in runs)
    assert texts in (["first", "other"], ["other", "second"])
    assert not any(redelivered for _, redelivered in runs)


async def _wait_for_async(read: Any, expected: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while await read() != expected:
        assert time.monotonic() < deadline, f"never reached {expected!r}"
        await asyncio.sleep(0.02)


async def test_a_retry_is_marked_as_a_redelivery(
    client: Client, unique_name: str
) -> None:
    seen: list[tuple[int, bool]] = []

    @chirp.worker(name=unique_name, backoff=chirp.Backoff(base=0.01, cap=0.01))
    async def flaky(ctx: Context, msg: Ping) -> None:
        seen.append((ctx.attempt, ctx.redelivered))
        if ctx.attempt == 1:
            raise RuntimeError("once")

    await client.context().msg(Ping(key="x"))
    async with running_workers(client, flaky):
        await _wait_for(lambda: len(seen) == 2)
    assert seen == [(1, False), (2, True)]


async def test_a_large_pending_list_is_taken_over_in_batches(
    client: Client, unique_name: str
) -> None:
    stream = client.names.stream_key("test-ping")
    await client.redis.xgroup_create(stream, unique_name, id="0", mkstream=True)
    data = Ping(key="p").SerializeToString()
    from chirp.envelope_pb2 import Envelope

    envelope = Envelope(name="test-ping", body=data).SerializeToString()
    for _batch in range(10):
        pipe = client.redis.pipeline(transaction=False)
        for _entry in range(2_000):
            pipe.xadd(stream, {b"e": envelope})
        await pipe.execute()
    # A consumer that read everything and died: 20,000 entries pending on it.
    await client.redis.xreadgroup(unique_name, "dead", {stream: ">"}, count=20_000)
    handled = 0

    @chirp.worker(name=unique_name, lease=0.2, concurrency=128, batch=128)
    async def taker(ctx: Context, msg: Ping) -> None:
        nonlocal handled
        handled += 1

    async with running_workers(client, taker):
        await _wait_for(lambda: handled >= 20_000, timeout=60)

    summary = await client.redis.xpending(stream, unique_name)
    assert summary["pending"] == 0
