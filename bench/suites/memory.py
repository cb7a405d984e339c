"""Memory: the worker host draining a large backlog, and 10k waiting callers."""

from __future__ import annotations

import asyncio
import json
import subprocess

from bench.core import (
    RESULTS,
    Drain,
    Lab,
    Row,
    chirp_host,
    python_module,
    seed_jobs,
    spawn,
    stop,
)
from bench.suites.drain import drain_chirp, drain_raw

MIB = 1024
# RSS after this share of the drain is the warm-up level the rest is compared with.
WARM_SHARE = 0.2
# Growth after warm-up still counted as flat (allocator noise, lazily loaded code).
FLAT_TOLERANCE = 0.10


def growth(drain: Drain) -> tuple[float, float]:
    """Return (RSS after warm-up, highest RSS after it), in MiB."""
    samples = [kib for _, kib in drain.rss_kib]
    warm = samples[int(len(samples) * WARM_SHARE)]
    return warm / MIB, max(samples[int(len(samples) * WARM_SHARE) :]) / MIB


async def run(lab: Lab) -> None:
    """Drain the memory backlog once with Chirp and once raw; hold many waits."""
    count = lab.sizes.memory_backlog
    await seed_jobs(lab, "bench-mem", count, 256)
    raw = await drain_raw(lab, "bench-mem", count)
    drain = await drain_chirp(lab, "bench-mem", count)
    await lab.redis.flushdb()
    warm, highest = growth(drain)
    lab.series["rss_mib"] = [
        (t - drain.rss_kib[0][0], kib / MIB) for t, kib in drain.rss_kib
    ]
    lab.series["rss_flat"] = highest <= warm * (1 + FLAT_TOLERANCE)
    lab.add(
        Row(
            "mem.peak",
            "memory",
            f"host peak RSS draining {count:,}",
            drain.peak_kib / MIB,
            "MiB",
            "raw loop peak RSS",
            raw.peak_kib / MIB,
            higher_is_better=False,
        )
    )
    lab.add(
        Row(
            "mem.growth",
            "memory",
            "host RSS after warm-up, highest",
            highest,
            "MiB",
            f"RSS at {WARM_SHARE:.0%} of the drain",
            warm,
            higher_is_better=False,
        )
    )
    await _waits(lab, lab.sizes.memory_waits)


async def _waits(lab: Lab, count: int) -> None:
    """Peak RSS of one process holding `count` publish-and-wait calls at once."""
    env = lab.env("bench-waits", BENCH_MODE="reply", BENCH_CONCURRENCY=128)
    host = spawn("waits-host", chirp_host(), env)
    waiter = spawn("waits", python_module("bench.procs", "hold-waits", count), env)
    try:
        code = await asyncio.to_thread(waiter.wait, 600)
    except subprocess.TimeoutExpired:
        code = -1
    finally:
        stop(waiter)
        stop(host)
        await lab.redis.flushdb()
    if code != 0:
        raise RuntimeError(f"hold-waits exited with {code}; see bench/results/logs")
    log = (RESULTS / "logs" / "waits.log").read_text().splitlines()
    report = json.loads(next(line for line in reversed(log) if line.startswith("{")))
    lab.add(
        Row(
            "mem.waits",
            "memory",
            f"caller peak RSS, {count:,} concurrent waits",
            report["peak_kib"] / MIB,
            "MiB",
            "same client after 1 call",
            report["idle_kib"] / MIB,
            higher_is_better=False,
        )
    )
