"""Publish throughput of ``ctx.msg``, against raw redis-py XADD and raw nats-py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import nats
import redis.asyncio as redis_asyncio

import chirp
from bench.core import Lab, Row, envelope, job, stream_key
from chirp._scripts import APPEND
from chirp._wire import ENVELOPE_FIELD

CONCURRENT = 100


async def _rate(count: int, work: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await work()
    return count / (time.perf_counter() - started)


async def _chirp_rates(lab: Lab, count: int) -> tuple[float, float]:
    """Return (sequential, 100-concurrent) publishes per second through Chirp."""
    async with chirp.Client(
        name="bench",
        nats_url=lab.nats_url,
        redis_url=lab.redis_url,
        namespace="bench-pub",
    ) as client:
        ctx = client.context()
        body = job()

        async def sequential() -> None:
            for _ in range(count):
                await ctx.msg(body)

        async def one_of_many() -> None:
            for _ in range(count // CONCURRENT):
                await ctx.msg(body)

        async def concurrent() -> None:
            await asyncio.gather(*(one_of_many() for _ in range(CONCURRENT)))

        return await _rate(count, sequential), await _rate(count, concurrent)


async def _raw_rates(lab: Lab, count: int) -> tuple[float, float, float, float]:
    """Return raw XADD sequential, pipelined by 100, batched by 100 in Chirp's
    append script, and NATS publish rates."""
    redis = redis_asyncio.Redis.from_url(lab.redis_url)
    stream = stream_key("bench-raw")
    fields = {ENVELOPE_FIELD: envelope()}

    async def sequential() -> None:
        for _ in range(count):
            await redis.xadd(stream, fields)  # type: ignore[arg-type]

    async def pipelined() -> None:
        for _ in range(count // CONCURRENT):
            pipe = redis.pipeline(transaction=False)
            for _ in range(CONCURRENT):
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            await pipe.execute()

    append = redis.register_script(APPEND)
    keys = [stream] * CONCURRENT
    args: list[bytes | int] = [ENVELOPE_FIELD, CONCURRENT]
    args += [fields[ENVELOPE_FIELD]] * CONCURRENT

    async def scripted() -> None:
        for _ in range(count // CONCURRENT):
            await append(keys=keys, args=args)

    nc = await nats.connect(lab.nats_url)
    data = fields[ENVELOPE_FIELD]

    async def announce() -> None:
        for _ in range(count):
            await nc.publish("chirp.msg.bench-job.k", data)
        await nc.flush()

    try:
        return (
            await _rate(count, sequential),
            await _rate(count, pipelined),
            await _rate(count, scripted),
            await _rate(count, announce),
        )
    finally:
        await nc.close()
        await redis.aclose()


async def run(lab: Lab) -> None:
    """Publish 256-byte jobs sequentially and from 100 tasks, beside raw clients.

    Each figure is the median of several rounds; a round measures all six, so
    baselines and Chirp see the same conditions. Chirp appends a batch of concurrent
    publishes with one script call; the raw run of that script shows what the batching
    itself costs, beside the pipeline the targets compare with.
    """
    count = lab.sizes.publishes
    rounds = []
    for _ in range(lab.sizes.repeats):
        rounds.append((*await _raw_rates(lab, count), *await _chirp_rates(lab, count)))
        await lab.redis.flushdb()
    raw_seq, raw_pipe, raw_script, raw_nats, seq, concurrent = (
        sorted(figures)[len(figures) // 2] for figures in zip(*rounds, strict=True)
    )
    rows = [
        ("pub.seq", "publish, 1 sequential", seq, "raw XADD sequential", raw_seq),
        (
            "pub.c100",
            "publish, 100 concurrent",
            concurrent,
            "raw XADD pipelined x100",
            raw_pipe,
        ),
        (
            "pub.c100.script",
            "publish, 100 concurrent",
            concurrent,
            "raw XADD x100 in Chirp's append script",
            raw_script,
        ),
        (
            "pub.c100.nats",
            "publish, 100 concurrent",
            concurrent,
            "raw nats-py publish",
            raw_nats,
        ),
    ]
    for key, name, value, base, base_value in rows:
        lab.add(Row(key, "publish", name, value, "msg/s", base, base_value))
