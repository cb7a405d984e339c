"""Workers on both transports: retries, dead letters, hand-back, takeover, status."""

import asyncio
import itertools
import random
import time
from typing import Any, cast

from chirptest.messages_pb2 import Ping, PingDone
from waits import wait_for, wait_for_value

import chirp
from chirp import Backoff, Client, Context
from chirp._state import status
from chirp._store import WorkerStore
from chirp.envelope_pb2 import Envelope
from chirp.testing import running_workers


class _Ceiling(random.Random):
    """Jitter that always picks the largest delay, so the schedule is exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _stream(client: Client) -> str:
    return client.names.stream_key("test-ping")


async def _pending(client: Client, group: str) -> int:
    summary: Any = await client.redis.xpending(_stream(client), group)
    return int(summary["pending"])


async def _read_by_hand(client: Client, group: str, consumer: str) -> str:
    """Deliver one entry to `consumer` and never ack it, as a crashed host would."""
    await WorkerStore(
        client.redis, client.names, worker=group, message="test-ping"
    ).ensure_group()
    reply: Any = await client.redis.xreadgroup(
        group, consumer, {_stream(client): ">"}, count=1
    )
    [(_, [(entry_id, _)])] = reply
    return cast(bytes, entry_id).decode()


async def test_a_failing_handler_is_retried_until_it_succeeds(
    client: Client, other: Client, unique_name: str
) -> None:
    starts: list[tuple[int, bool, float]] = []
    backoff = Backoff(base=0.05, cap=1, rng=_Ceiling())

    @chirp.worker(name=unique_name, backoff=backoff)
    async def flaky(ctx: Context, msg: Ping) -> None:
        starts.append((ctx.attempt, ctx.redelivered, time.monotonic()))
        if ctx.attempt <= msg.fail_times:
            raise RuntimeError("dependency down")
        await ctx.msg(PingDone(key=msg.key, attempt=ctx.attempt))

    async with running_workers(other, flaky):
        done = await client.context().publish_wait(
            Ping(key="k", fail_times=2), PingDone, timeout=5
        )

    assert done.body.attempt == 3
    assert [(a, r) for a, r, _ in starts] == [(1, False), (2, True), (3, True)]
    gaps = [later[2] - earlier[2] for earlier, later in itertools.pairwise(starts)]
    assert gaps[0] >= 0.049 and gaps[1] >= 0.099
    stats = await client.redis.hgetall(client.names.stats_key(unique_name))
    assert stats[b"retries"] == b"2"
    assert await client.redis.zcard(client.names.retry_key(unique_name)) == 0
    assert await client.redis.hlen(client.names.attempts_key(unique_name)) == 0
    assert await _pending(client, unique_name) == 0


async def test_the_attempt_limit_ends_in_dead_letters(
    client: Client, unique_name: str
) -> None:
    @chirp.worker(
        name=unique_name, backoff=Backoff(base=0.01, cap=0.02, max_attempts=2)
    )
    async def hopeless(ctx: Context, msg: Ping) -> None:
        raise ValueError(f"cannot handle {msg.key}")

    await client.context().msg(Ping(key="doomed"))
    dead_key = client.names.dead_letter_key(unique_name)
    async with running_workers(client, hopeless):
        await wait_for_value(lambda: client.redis.xlen(dead_key), 1)

    [(_, fields)] = await client.redis.xrange(dead_key)
    assert fields[b"attempts"] == b"2"
    assert fields[b"reason"] == (
        b"gave up after attempt 2: ValueError: cannot handle doomed"
    )
    assert Envelope.FromString(fields[b"envelope"]).name == "test-ping"
    assert await client.redis.zcard(client.names.retry_key(unique_name)) == 0
    assert await client.redis.hlen(client.names.attempts_key(unique_name)) == 0
    assert await _pending(client, unique_name) == 0


async def test_undecodable_entries_are_dead_lettered_and_the_next_is_handled(
    client: Client, unique_name: str
) -> None:
    handled: list[str] = []

    @chirp.worker(name=unique_name)
    async def record(ctx: Context, msg: Ping) -> None:
        handled.append(msg.key)

    wrong_body = Envelope(name="test-ping", body=b"\xff\xff\xff")
    garbage = await client.redis.xadd(_stream(client), {b"e": b"\xff\x00 nonsense"})
    no_field = await client.redis.xadd(_stream(client), {b"other": b"field"})
    bad_body = await client.redis.xadd(
        _stream(client), {b"e": wrong_body.SerializeToString()}
    )
    await client.context().msg(Ping(key="good"))

    dead_key = client.names.dead_letter_key(unique_name)
    async with running_workers(client, record):
        await wait_for(lambda: handled == ["good"])
        await wait_for_value(lambda: client.redis.xlen(dead_key), 3)

    dead = await client.redis.xrange(dead_key)
    reasons = {fields[b"entry_id"]: fields[b"reason"].decode() for _, fields in dead}
    assert "not a Chirp envelope" in reasons[garbage]
    assert "no 'e' field" in reasons[no_field]
    assert "does not parse as chirptest.Ping" in reasons[bad_body]
    assert await _pending(client, unique_name) == 0


async def test_a_stopped_host_hands_its_message_to_the_next(
    client: Client, other: Client, unique_name: str
) -> None:
    attempts: list[int] = []
    first_started = asyncio.Event()

    @chirp.worker(name=unique_name, lease=60)
    async def long(ctx: Context, msg: Ping) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            first_started.set()
            await asyncio.sleep(60)

    async with running_workers(client, long, grace=0.05):
        await client.context().msg(Ping(key="x"))
        await asyncio.wait_for(first_started.wait(), 2)

    # A lease of 60 s: only the hand-back can make the entry available this soon.
    async with running_workers(other, long):
        await wait_for(lambda: len(attempts) == 2, timeout=2)
    assert attempts == [1, 1]
    assert await _pending(client, unique_name) == 0
    assert await client.redis.zcard(client.names.retry_key(unique_name)) == 0


async def test_the_entry_of_a_crashed_consumer_is_taken_over_after_its_lease(
    client: Client, unique_name: str
) -> None:
    runs: list[tuple[int, bool, float]] = []

    @chirp.worker(name=unique_name, lease=0.3)
    async def survivor(ctx: Context, msg: Ping) -> None:
        runs.append((ctx.attempt, ctx.redelivered, time.monotonic()))

    await client.context().msg(Ping(key="orphan"))
    entry_id = await _read_by_hand(client, unique_name, "crashed")
    read_at = time.monotonic()

    async with running_workers(client, survivor):
        await wait_for(lambda: len(runs) == 1, timeout=2)

    [(attempt, redelivered, started)] = runs
    assert (attempt, redelivered) == (1, True)
    assert started - read_at >= 0.29
    assert await _pending(client, unique_name) == 0
    assert entry_id


async def test_a_running_handler_keeps_its_lease(
    client: Client, other: Client, unique_name: str
) -> None:
    runs: list[str] = []

    @chirp.worker(name=unique_name, lease=0.3)
    async def long(ctx: Context, msg: Ping) -> None:
        runs.append(msg.key)
        await asyncio.sleep(0.8)

    async with running_workers(client, long), running_workers(other, long):
        await client.context().msg(Ping(key="x"))
        await wait_for(lambda: len(runs) == 1)
        await asyncio.sleep(0.9)
    assert runs == ["x"]
    assert await _pending(client, unique_name) == 0


async def test_an_idempotency_key_is_completed_once(
    client: Client, unique_name: str
) -> None:
    runs: list[str] = []

    @chirp.worker(name=unique_name)
    async def once(ctx: Context, msg: Ping) -> None:
        runs.append(msg.text)

    ctx = client.context()
    await ctx.msg(Ping(key="k", text="first"), idempotency_key="order-1")
    await ctx.msg(Ping(key="k", text="again"), idempotency_key="order-1")
    await ctx.msg(Ping(key="k", text="other"), idempotency_key="order-2")
    stats_key = client.names.stats_key(unique_name)
    async with running_workers(client, once):
        await wait_for_value(lambda: client.redis.hget(stats_key, "duplicates"), b"1")
        await wait_for(lambda: len(runs) == 2)

    assert sorted(runs) == ["first", "other"]
    marker = await client.redis.get(client.names.done_key(unique_name, "order-1"))
    assert marker == b"done"
    assert await _pending(client, unique_name) == 0


async def test_status_counts_pending_scheduled_and_dead_entries(
    client: Client, unique_name: str
) -> None:
    failed = asyncio.Event()

    @chirp.worker(name=unique_name, backoff=Backoff(base=60))
    async def broken(ctx: Context, msg: Ping) -> None:
        failed.set()
        raise RuntimeError("down")

    await client.context().msg(Ping(key="scheduled"))
    await client.redis.xadd(_stream(client), {b"e": b"garbage"})
    dead_key = client.names.dead_letter_key(unique_name)
    async with running_workers(client, broken):
        await asyncio.wait_for(failed.wait(), 2)
        await wait_for_value(lambda: client.redis.xlen(dead_key), 1)
    await client.context().msg(Ping(key="pending"))
    await _read_by_hand(client, unique_name, "crashed")
    await client.context().msg(Ping(key="new"))

    [found] = await status(client.redis, client.names)
    assert (found.worker, found.message, found.group) == (
        unique_name,
        "test-ping",
        True,
    )
    counts = (found.stream_length, found.lag, found.pending, found.scheduled)
    assert counts == (4, 1, 1, 1)
    assert (found.dead_letters, found.retries) == (1, 1)
    assert {c.name: c.pending for c in found.consumers}["crashed"] == 1
    store = WorkerStore(client.redis, client.names, worker=unique_name, message="x")
    store.stream = _stream(client)
    levels = await store.levels()
    assert levels == {"pending": 1, "lag": 1, "scheduled": 1, "dead_letters": 1}


async def test_a_stopped_host_leaves_its_group_and_idle_ghosts_go(
    client: Client, unique_name: str
) -> None:
    done: list[str] = []

    @chirp.worker(name=unique_name)
    async def quick(ctx: Context, msg: Ping) -> None:
        done.append(msg.key)

    await client.context().msg(Ping(key="held"))
    await _read_by_hand(client, unique_name, "crashed")
    async with running_workers(client, quick):
        await client.context().msg(Ping(key="x"))
        await wait_for(lambda: done == ["x"])
        # A crashed host's consumer that read nothing, so holds nothing.
        await client.redis.xreadgroup(
            unique_name, "ghost", {_stream(client): ">"}, count=1
        )

    async def consumers() -> set[bytes]:
        rows: Any = await client.redis.xinfo_consumers(_stream(client), unique_name)
        return {row["name"] for row in rows}

    assert await consumers() == {b"crashed", b"ghost"}
    store = WorkerStore(
        client.redis, client.names, worker=unique_name, message="test-ping"
    )
    assert await store.forget_idle(0) == 1
    assert await consumers() == {b"crashed"}
