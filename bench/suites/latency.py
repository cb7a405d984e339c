"""Publish-and-wait latency through a worker host, against raw NATS request/reply."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import nats

import chirp
from bench.core import Lab, Row, chirp_host, job, python_module, spawn, stop
from bench.messages_pb2 import JobDone

CONCURRENT = 64
SUBJECT = "bench.request"
_WARMUP = 50


def percentile(samples: list[float], fraction: float) -> float:
    """Return the value below which `fraction` of the samples fall (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _timed(
    calls: int, callers: int, call: Callable[[int], Awaitable[object]]
) -> list[float]:
    """Run `calls` calls from `callers` tasks; return each call's seconds."""
    samples: list[float] = []

    async def caller(first: int) -> None:
        for i in range(first, calls, callers):
            started = time.perf_counter()
            await call(i)
            samples.append(time.perf_counter() - started)

    await asyncio.gather(*(caller(i) for i in range(callers)))
    return samples


async def _chirp_samples(lab: Lab, calls: int, callers: int) -> list[float]:
    async with chirp.Client(
        name="bench",
        nats_url=lab.nats_url,
        redis_url=lab.redis_url,
        namespace="bench-lat",
    ) as client:
        ctx = client.context()

        async def call(i: int) -> None:
            await ctx.publish_wait(job(key=f"k{i}"), JobDone, timeout=30)

        await _timed(_WARMUP, 1, call)
        return await _timed(calls, callers, call)


async def _nats_samples(lab: Lab, calls: int, callers: int) -> list[float]:
    nc = await nats.connect(lab.nats_url)
    data = job().SerializeToString()

    async def call(i: int) -> None:
        await nc.request(SUBJECT, data, timeout=30)

    try:
        await _timed(_WARMUP, 1, call)
        return await _timed(calls, callers, call)
    finally:
        await nc.close()


async def run(lab: Lab) -> None:
    """Measure p50 and p99 sequentially and with 64 concurrent callers."""
    host_env = lab.env("bench-lat", BENCH_MODE="reply", BENCH_CONCURRENCY=128)
    host = spawn("latency-host", chirp_host(), host_env)
    responder = spawn(
        "latency-nats", python_module("bench.procs", "nats-respond", SUBJECT), host_env
    )
    try:
        await asyncio.sleep(1.5)  # both children connect and subscribe
        for callers, label in (
            (1, "sequential"),
            (CONCURRENT, f"{CONCURRENT} callers"),
        ):
            calls = lab.sizes.latency_calls // (4 if callers == 1 else 1)
            raw = await _nats_samples(lab, calls, callers)
            ours = await _chirp_samples(lab, calls, callers)
            lab.series[f"latency_{callers}"] = {"chirp": ours, "nats": raw}
            for fraction, tag in ((0.5, "p50"), (0.99, "p99")):
                lab.add(
                    Row(
                        f"latency.{callers}.{tag}",
                        "latency",
                        f"publish-and-wait {tag}, {label}",
                        percentile(ours, fraction) * 1000,
                        "ms",
                        "raw nats-py request/reply",
                        percentile(raw, fraction) * 1000,
                        higher_is_better=False,
                    )
                )
    finally:
        stop(host)
        stop(responder)
        await lab.redis.flushdb()
