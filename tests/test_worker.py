"""Workers against real servers: retries, dead letters, backlog, sharing, shutdown."""

import asyncio
import itertools
import logging
import random
import time
from typing import Any

import pytest
from chirptest.messages_pb2 import Ping, PingDone, PingFailed

import chirp
from chirp import Backoff, Client, Context
from chirp.testing import running_workers


class _Ceiling(random.Random):
    """Jitter that always picks the largest delay, so the schedule is exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _pending(client: Client, group: str) -> int:
    stream = client.names.stream_key("test-ping")
    summary = await client.redis.xpending(stream, group)
    return int(summary["pending"])


async def test_failing_handler_is_retried_with_backoff(
    client: Client, unique_name: str
) -> None:
    starts: list[tuple[int, float]] = []

    @chirp.worker(name=unique_name, backoff=Backoff(base=0.2, cap=5, rng=_Ceiling()))
    async def flaky(ctx: Context, msg: Ping) -> None:
        starts.append((ctx.attempt, time.monotonic()))
        if ctx.attempt <= msg.fail_times:
            raise RuntimeError("dependency down")
        await ctx.msg(PingDone(key=msg.key, attempt=ctx.attempt))

    async with running_workers(client, flaky):
        done = await client.context().publish_wait(
            Ping(key="k", fail_times=2), PingDone, timeout=10
        )

    assert done.body.attempt == 3
    assert [attempt for attempt, _ in starts] == [1, 2, 3]
    gaps = [later[1] - earlier[1] for earlier, later in itertools.pairwise(starts)]
    # The ceilings are 0.2 s then 0.4 s; schedule times are whole milliseconds.
    assert gaps[0] >= 0.199
    assert gaps[1] >= 0.399
    stats = await client.redis.hgetall(client.names.stats_key(unique_name))
    assert stats[b"retries"] == b"2"
    assert await client.redis.zcard(client.names.retry_key(unique_name)) == 0


async def test_a_cancellation_escaping_a_handler_is_a_failed_attempt(
    client: Client, unique_name: str
) -> None:
    handled: list[tuple[str, int]] = []

    @chirp.worker(name=unique_name, concurrency=1, backoff=Backoff(base=0.05, cap=0.05))
    async def cancelled_inside(ctx: Context, msg: Ping) -> None:
        if msg.text == "cancel" and ctx.attempt == 1:
            # A future cancelled elsewhere: its CancelledError escapes the handler,
            # though nobody cancelled the handler itself.
            gone = asyncio.get_running_loop().create_future()
            gone.cancel()
            await gone
        handled.append((msg.key, ctx.attempt))

    ctx = client.context()
    async with running_workers(client, cancelled_inside):
        await ctx.msg(Ping(key="bad", text="cancel"))
        for index in range(3):
            await ctx.msg(Ping(key=str(index)))
        await _wait_for(lambda: len(handled) == 4, timeout=5)

    assert sorted(handled) == [("0", 1), ("1", 1), ("2", 1), ("bad", 2)]


async def _wait_for_async(read: Any, expected: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while await read() != expected:
        assert time.monotonic() < deadline, f"never reached {expected!r}"
        await asyncio.sleep(0.02)


async def test_backlog_published_before_the_worker_existed_is_handled(
    client: Client, unique_name: str
) -> None:
    ctx = client.context()
    for index in range(50):
        await ctx.msg(Ping(key=str(index)))
    handled: set[str] = set()

    @chirp.worker(name=unique_name)
    async def late(ctx: Context, msg: Ping) -> None:
        handled.add(msg.key)

    async with running_workers(client, late):
        await _wait_for(lambda: len(handled) == 50)
    assert handled == {str(i) for i in range(50)}


async def test_two_workers_each_get_every_message_and_instances_share(
    client: Client, unique_name: str
) -> None:
    seen: dict[str, list[str]] = {"audit": [], "mail-1": [], "mail-2": []}

    def make(name: str, label: str) -> chirp.Worker[Ping]:
        @chirp.worker(name=name, concurrency=1)
        async def handle(ctx: Context, msg: Ping) -> None:
            await asyncio.sleep(0.005)
            seen[label].append(msg.key)

        return handle

    audit = make(f"{unique_name}-audit", "audit")
    mail_1 = make(f"{unique_name}-mail", "mail-1")
    mail_2 = make(f"{unique_name}-mail", "mail-2")
    async with (
        running_workers(client, audit),
        running_workers(client, mail_1),
        running_workers(client, mail_2),
    ):
        ctx = client.context()
        for index in range(40):
            await ctx.msg(Ping(key=str(index)))
        await _wait_for(lambda: len(seen["mail-1"]) + len(seen["mail-2"]) == 40)
        await _wait_for(lambda: len(seen["audit"]) == 40)

    everything = {str(i) for i in range(40)}
    assert set(seen["audit"]) == everything
    assert sorted(seen["mail-1"] + seen["mail-2"], key=int) == sorted(
        everything, key=int
    )
    assert seen["mail-1"] and seen["mail-2"]


async def test_stop_lets_in_flight_handlers_finish(
    client: Client, unique_name: str
) -> None:
    started = asyncio.Event()
    finished: list[str] = []

    @chirp.worker(name=unique_name)
    async def slow(ctx: Context, msg: Ping) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(msg.key)

    async with running_workers(client, slow, grace=5):
        await client.context().msg(Ping(key="x"))
        await asyncio.wait_for(started.wait(), 5)

    assert finished == ["x"]
    assert await _pending(client, unique_name) == 0


async def test_retry_schedule_survives_a_restart_of_the_host(
    client: Client, unique_name: str
) -> None:
    starts: list[tuple[int, float]] = []
    failed = asyncio.Event()

    @chirp.worker(name=unique_name, backoff=Backoff(base=1.0, rng=_Ceiling()))
    async def once_broken(ctx: Context, msg: Ping) -> None:
        starts.append((ctx.attempt, time.monotonic()))
        if ctx.attempt == 1:
            failed.set()
            raise RuntimeError("first try fails")

    async with running_workers(client, once_broken):
        await client.context().msg(Ping(key="x"))
        await asyncio.wait_for(failed.wait(), 5)

    async with running_workers(client, once_broken):
        await _wait_for(lambda: len(starts) == 2, timeout=5)
    assert [attempt for attempt, _ in starts] == [1, 2]
    assert starts[1][1] - starts[0][1] >= 0.99


def test_worker_declaration_errors() -> None:
    with pytest.raises(chirp.UsageError, match="must be an async function"):

        @chirp.worker
        def not_async(ctx: Context, msg: Ping) -> None:  # type: ignore[arg-type]
            pass

    with pytest.raises(chirp.SchemaError, match=r"no \(chirp.message\) option"):
        from chirptest.messages_pb2 import Plain

        @chirp.worker
        async def plain(ctx: Context, msg: Plain) -> None:
            pass

    with pytest.raises(chirp.UsageError, match="kebab-case"):

        @chirp.worker(name="Not_Kebab")
        async def named(ctx: Context, msg: Ping) -> None:
            pass


async def test_concurrency_limit_holds_and_is_reached(
    client: Client, unique_name: str
) -> None:
    running = 0
    most = 0
    done: list[str] = []

    @chirp.worker(name=unique_name, concurrency=3, batch=2)
    async def bounded(ctx: Context, msg: Ping) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1
        done.append(msg.key)

    ctx = client.context()
    for index in range(20):
        await ctx.msg(Ping(key=str(index)))
    async with running_workers(client, bounded):
        await _wait_for(lambda: len(done) == 20)
    assert most == 3


async def test_handler_context_describes_the_message(
    client: Client, unique_name: str
) -> None:
    seen: list[Context] = []

    @chirp.worker(name=unique_name)
    async def look(ctx: Context, msg: Ping) -> None:
        seen.append(ctx)

    publisher = client.context()
    published = await publisher.msg(Ping(key="x"))
    await asyncio.sleep(0.2)
    async with running_workers(client, look):
        await _wait_for(lambda: len(seen) == 1)

    [ctx] = seen
    assert (ctx.ray_id, ctx.request_id) == (publisher.ray_id, published.request_id)
    assert ctx.trace[-1].request_id == publisher.request_id
    assert ctx.name == unique_name
    assert ctx.attempt == 1
    assert 0.2 <= ctx.req_dt < 10


# Short envelopes are searched for the worker's name before their trace is walked;
# long ones go straight to the walk. Both must find the loop.
@pytest.mark.parametrize("text", ["first", "long " * 1000], ids=["short", "long"])
async def test_a_recursive_message_is_refused_with_its_code(
    client: Client, unique_name: str, text: str
) -> None:
    runs: list[str] = []

    @chirp.worker(name=unique_name, failure=PingFailed)
    async def echo_loop(ctx: Context, msg: Ping) -> None:
        runs.append(msg.text)
        await ctx.msg(Ping(key=msg.key, text="again"))

    ctx = client.context()
    async with (
        await ctx.subscribe(PingFailed, {"key": "loop"}) as failures,
        running_workers(client, echo_loop),
    ):
        await ctx.msg(Ping(key="loop", text=text))
        refused = await failures.next(timeout=5)

    assert runs == [text]
    assert refused.body.code == "CHIRP_RECURSIVE_MESSAGE"
    assert refused.body.key == "loop"
    assert unique_name in refused.body.message
    assert await _pending(client, unique_name) == 0


async def test_a_stale_message_is_answered_not_handled(
    client: Client, unique_name: str
) -> None:
    runs: list[str] = []

    @chirp.worker(name=unique_name, failure=PingFailed, max_age=0.3)
    async def fresh_only(ctx: Context, msg: Ping) -> None:
        runs.append(msg.key)

    ctx = client.context()
    await ctx.msg(Ping(key="old"))
    await asyncio.sleep(0.5)
    async with (
        await ctx.subscribe(PingFailed) as failures,
        running_workers(client, fresh_only),
    ):
        refused = await failures.next(timeout=5)
        await ctx.msg(Ping(key="new"))
        await _wait_for(lambda: runs == ["new"])

    assert refused.body.code == "CHIRP_STALE_MESSAGE"
    assert refused.body.key == "old"


async def test_a_refusal_without_failure_message_is_dead_lettered(
    client: Client, unique_name: str
) -> None:
    @chirp.worker(name=unique_name, max_age=0.1)
    async def strict(ctx: Context, msg: Ping) -> None:
        raise AssertionError("a stale message must not run")

    await client.context().msg(Ping(key="old"))
    await asyncio.sleep(0.3)
    dead_key = client.names.dead_letter_key(unique_name)
    async with running_workers(client, strict):
        await _wait_for_async(lambda: client.redis.xlen(dead_key), 1)
    [(_, fields)] = await client.redis.xrange(dead_key)
    assert fields[b"reason"].startswith(b"CHIRP_STALE_MESSAGE: ")


async def test_bodies_are_logged_at_debug_except_sensitive_ones(
    client: Client, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    from chirptest.messages_pb2 import Secret

    seen: list[str] = []

    @chirp.worker(name=f"{unique_name}-open")
    async def open_one(ctx: Context, msg: Ping) -> None:
        seen.append(msg.text)

    @chirp.worker(name=f"{unique_name}-secret")
    async def secret_one(ctx: Context, msg: Secret) -> None:
        seen.append(msg.key)

    caplog.set_level(logging.DEBUG, logger="chirp._consumer")
    ctx = client.context()
    await ctx.msg(Ping(key="p", text="visible-text"))
    await ctx.msg(Secret(key="s", password="hunter2"))
    async with running_workers(client, open_one, secret_one):
        await _wait_for(lambda: len(seen) == 2)

    assert "visible-text" in caplog.text
    assert "hunter2" not in caplog.text
    assert "<sensitive>" in caplog.text
