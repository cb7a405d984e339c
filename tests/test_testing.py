"""The test harness: fake time with the in-memory transport, and `published`.

A test marked ``looptime`` runs on an event loop whose clock jumps ahead whenever
every task waits on a timer, so hours of backoff pass in milliseconds. Chirp's
consumers take their schedule from the loop's clock, so retries follow it.
"""

import asyncio
import time

import pytest
from chirptest.messages_pb2 import EchoRequest, EchoResponse, Ping, PingDone

import chirp
from chirp.testing import running_workers


@pytest.mark.looptime
async def test_a_long_backoff_passes_in_fake_time(memory_client: chirp.Client) -> None:
    attempts: list[tuple[int, float]] = []
    backoff = chirp.Backoff(base=600, cap=3600)

    @chirp.worker(name="slow-retry", backoff=backoff)
    async def flaky(ctx: chirp.Context, msg: Ping) -> None:
        attempts.append((ctx.attempt, time.monotonic()))
        if ctx.attempt < 3:
            raise RuntimeError("the dependency is down")
        await ctx.msg(PingDone(key=msg.key, attempt=ctx.attempt))

    started = time.monotonic()
    async with running_workers(memory_client, flaky):
        done = await memory_client.context().publish_wait(
            Ping(key="k"), PingDone, timeout=4 * 3600
        )

    assert done.body.attempt == 3
    assert [attempt for attempt, _ in attempts] == [1, 2, 3]
    assert time.monotonic() - started < 5


@pytest.mark.looptime
async def test_an_operation_deadline_passes_in_fake_time(
    memory_client: chirp.Client,
) -> None:
    @chirp.operation(name="very-slow", timeout=300)
    async def very_slow(ctx: chirp.Context, req: EchoRequest) -> EchoResponse:
        await asyncio.sleep(3600)
        return EchoResponse()

    started = time.monotonic()
    with pytest.raises(chirp.ChirpTimeoutError):
        await very_slow(memory_client.context(), EchoRequest())
    assert time.monotonic() - started < 5


async def test_published_lists_what_a_worker_published(
    memory_client: chirp.Client,
) -> None:
    from chirp.testing import published

    @chirp.worker(name="answers")
    async def answers(ctx: chirp.Context, msg: Ping) -> None:
        await ctx.msg(PingDone(key=msg.key, text="done"))

    ctx = memory_client.context()
    async with running_workers(memory_client, answers):
        await ctx.publish_wait(Ping(key="a"), PingDone, timeout=5)
        await ctx.publish_wait(Ping(key="b"), PingDone, timeout=5)

    everything = await published(memory_client, PingDone)
    only_b = await published(memory_client, PingDone, {"key": "b"})
    assert [r.body.key for r in everything] == ["a", "b"]
    assert [r.body.key for r in only_b] == ["b"]
    assert only_b[0].trace[-1].context_name == "answers"
