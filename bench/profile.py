"""Sample where Chirp spends its time: ``python -m bench.profile [SCENARIO...]``.

Runs each scenario under py-spy (from ``.venv/peers``) against embedded
servers, then ranks the sampled frames: *self* (the frame was the one running) and
*inclusive* (the frame was anywhere on the stack, for lines in ``chirp/``). Writes
``bench/results/profile-SCENARIO.txt`` (collapsed stacks, for flame graph tools) and
``bench/results/profile.md``; needs root or ptrace rights.

Scenarios: ``ops`` (no-op operation calls), ``publish`` (100 concurrent ``ctx.msg``),
``worker`` (a host draining at concurrency 128), ``latency`` (sequential
``publish_wait``, caller side).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import redis.asyncio as redis_asyncio

from bench.core import (
    PEERS_PYTHON,
    QUICK,
    RESULTS,
    Lab,
    chirp_host,
    python_module,
    seed_jobs,
    spawn,
    stop,
)
from chirp._embedded import embedded_servers

PY_SPY = PEERS_PYTHON.parent / "py-spy"
RATE = 500
TOP = 12
WORKER_SECONDS = 8


def _record(out: Path, target: list[str], env: dict[str, str]) -> None:
    """Run `target` (a command, or ``--pid N --duration S``) under py-spy."""
    command = [str(PY_SPY), "record", "--format", "raw", "-r", str(RATE)]
    command += ["-o", str(out), "--nonblocking", *target]
    subprocess.run(command, env=env, check=True, capture_output=True)


async def _scenario(lab: Lab, name: str, out: Path) -> None:
    env = lab.env(f"prof-{name}", BENCH_MODE="reply", BENCH_CONCURRENCY=128)
    if name == "ops":
        command = python_module("bench.procs", "op-loop", 300_000)
        await asyncio.to_thread(_record, out, ["--", *command], env)
    elif name == "publish":
        command = python_module("bench.procs", "chirp-publish", 200_000)
        await asyncio.to_thread(_record, out, ["--", *command], env)
    elif name == "latency":
        host = spawn("profile-host", chirp_host(), env)
        try:
            command = python_module("bench.procs", "wait-loop", 3_000)
            await asyncio.to_thread(_record, out, ["--", *command], env)
        finally:
            stop(host)
    else:
        await seed_jobs(lab, "prof-worker", 400_000, 256)
        host = spawn("profile-worker", chirp_host(), lab.env("prof-worker"))
        try:
            await asyncio.sleep(1.5)
            target = ["--pid", str(host.pid), "--duration", str(WORKER_SECONDS)]
            await asyncio.to_thread(_record, out, target, env)
        finally:
            stop(host)
    await lab.redis.flushdb()


def rank(collapsed: Path) -> tuple[int, Counter[str], Counter[str]]:
    """Return total samples, self samples per frame, inclusive per chirp frame."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if "chirp/" in frame:
                inclusive[frame] += count
    return total, own, inclusive


def summary(name: str, collapsed: Path) -> str:
    """Return the top frames of one scenario as Markdown."""
    total, own, inclusive = rank(collapsed)
    lines = [f"### {name} ({total} samples)", "", "self:", ""]
    lines += [f"- {n / total:5.1%} {frame}" for frame, n in own.most_common(TOP)]
    lines += ["", "inclusive, chirp/ only:", ""]
    lines += [f"- {n / total:5.1%} {frame}" for frame, n in inclusive.most_common(TOP)]
    return "\n".join(lines)


async def main_async(names: list[str]) -> str:
    """Start servers, profile each scenario, return the Markdown summary."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    parts = []
    async with embedded_servers() as servers:
        redis = redis_asyncio.Redis.from_url(servers.redis_url)
        lab = Lab(QUICK, True, servers.nats_url, servers.redis_url, redis)
        for name in names:
            out = RESULTS / f"profile-{name}.txt"
            print(f"profiling {name}...", flush=True)
            await _scenario(lab, name, out)
            parts.append(summary(name, out))
        await redis.aclose()
    return "\n\n".join(parts)


def main() -> None:
    """Profile the scenarios named on the command line (all by default)."""
    names = sys.argv[1:] or ["ops", "publish", "worker", "latency"]
    text = asyncio.run(main_async(names))
    (RESULTS / "profile.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
