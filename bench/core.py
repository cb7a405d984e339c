"""What every benchmark shares: run sizes, result rows, servers and child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_sync
import redis.asyncio as redis_asyncio
from redis.exceptions import ResponseError

from bench.messages_pb2 import Job
from chirp._embedded import parent_death_hook
from chirp._wire import ENVELOPE_FIELD, Names
from chirp.envelope_pb2 import Envelope, TraceEntry

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PEERS_PYTHON = REPO / ".venv" / "peers" / "bin" / "python"
PAYLOAD_SIZE = 256
DRAIN_TIMEOUT = 900.0
# Environment variable naming the start gate of a child (see `pass_gate`).
GATE_ENV = "BENCH_GATE"
GATE_TIMEOUT = 120
_POLL_SECONDS = 0.01


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does; `--quick` and the full run differ here."""

    op_calls: int
    publishes: int
    backlog: int
    latency_calls: int
    fanout: int
    memory_backlog: int
    memory_waits: int
    scale_backlog: int
    repeats: int = 3


QUICK = Sizes(20_000, 20_000, 30_000, 640, 5_000, 60_000, 2_000, 10_000)
FULL = Sizes(200_000, 100_000, 100_000, 6_400, 20_000, 1_000_000, 10_000, 50_000)


@dataclass
class Row:
    """One figure of the results table, next to the baseline it is judged against.

    The ratio is always ``value / baseline_value``; `higher_is_better` says how to
    read it (throughput: above 1 is better; time: below 1 is).
    """

    key: str
    suite: str
    name: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        """The figure divided by its baseline, or None without one."""
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value


@dataclass
class Lab:
    """The running servers and everything measured so far in this run."""

    sizes: Sizes
    quick: bool
    nats_url: str
    redis_url: str
    redis: redis_asyncio.Redis
    rows: list[Row] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        """Record a row and print it at once, so a long run shows progress."""
        self.rows.append(row)
        base = ""
        if row.baseline is not None and row.ratio is not None:
            base = f"  vs {row.baseline} {row.baseline_value:,.1f}: x{row.ratio:.2f}"
        print(f"  {row.name}: {row.value:,.1f} {row.unit}{base}", flush=True)

    def env(self, namespace: str, **extra: object) -> dict[str, str]:
        """Return the environment of a child process talking to this run's servers."""
        variables = dict(os.environ)
        variables.update(
            CHIRP_NATS_URL=self.nats_url,
            CHIRP_REDIS_URL=self.redis_url,
            CHIRP_NAMESPACE=namespace,
            PYTHONPATH=str(REPO),
        )
        variables.update({k: str(v) for k, v in extra.items()})
        return variables


def stream_key(namespace: str) -> str:
    """Return the Redis stream that `Job` messages of a namespace go to."""
    return Names(namespace).stream_key("bench-job")


def job(size: int = PAYLOAD_SIZE, key: str = "k") -> Job:
    """Return a `Job` with a payload of `size` bytes."""
    return Job(key=key, payload=b"x" * size)


def envelope(size: int = PAYLOAD_SIZE) -> bytes:
    """Return the envelope of one `Job`, as Chirp writes it (see docs/wire.md)."""
    hop = TraceEntry(context_name="bench", request_id="0" * 32, ts=int(time.time()))
    return Envelope(
        name="bench-job",
        parameters=["k"],
        ray_id="1" * 32,
        request_id="2" * 32,
        ts=int(time.time() * 1000),
        trace=[hop],
        body=job(size).SerializeToString(),
    ).SerializeToString()


async def seed(
    redis: redis_asyncio.Redis, stream: str, count: int, fields: dict[bytes, bytes]
) -> None:
    """Append `count` copies of one entry to a stream, 1000 per pipeline."""
    for start in range(0, count, 1000):
        pipe = redis.pipeline(transaction=False)
        for _ in range(min(1000, count - start)):
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        await pipe.execute()


async def seed_jobs(lab: Lab, namespace: str, count: int, size: int) -> str:
    """Fill a namespace's `Job` stream with `count` envelopes; return the stream."""
    stream = stream_key(namespace)
    await seed(lab.redis, stream, count, {ENVELOPE_FIELD: envelope(size)})
    return stream


# Child processes ---------------------------------------------------------------------


# Children started and not yet stopped, so an interrupted run can stop them all.
_children: set[subprocess.Popen[bytes]] = set()


def spawn(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a child process; its output goes to ``bench/results/logs/{name}.log``."""
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "wb") as log:
        # A benchmark killed outright takes its children with it.
        process = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=parent_death_hook(),
        )
    _children.add(process)
    return process


def chirp_host() -> list[str]:
    """Return the command of a worker host running `bench.workers`."""
    return [sys.executable, "-m", "chirp", "run", "bench.workers", "--grace", "2"]


def python_module(module: str, *args: object) -> list[str]:
    """Return the command running ``python -m module args`` in the project venv."""
    return [sys.executable, "-m", module, *map(str, args)]


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a child (SIGTERM, then SIGKILL after 15 s)."""
    _children.discard(process)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pass_gate() -> None:
    """In a child: if ``BENCH_GATE`` names a gate, say so and wait to be let through.

    Processes that must start together (several hosts on one group, a publisher and
    its consumer) would otherwise begin a few tenths of a second apart, each as its
    interpreter finishes importing: longer than some drains. Each gated child pushes
    its pid to ``GATE:ready`` and blocks on ``GATE:go``; `open_gate` lets them all go.
    """
    gate = os.environ.get(GATE_ENV)
    if not gate:
        return
    client = redis_sync.Redis.from_url(os.environ["CHIRP_REDIS_URL"])
    try:
        client.rpush(f"{gate}:ready", os.getpid())
        if client.blpop([f"{gate}:go"], timeout=GATE_TIMEOUT) is None:
            raise TimeoutError(f"gate {gate} was not opened in {GATE_TIMEOUT}s")
    finally:
        client.close()


async def open_gate(
    lab: Lab, gate: str, processes: list[subprocess.Popen[bytes]]
) -> float:
    """Wait until all `processes` wait at `gate`; let them go; return when it opened."""
    deadline = time.perf_counter() + GATE_TIMEOUT
    while await lab.redis.llen(f"{gate}:ready") < len(processes):
        _check_alive(processes)
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{len(processes)} processes did not reach gate {gate}")
        await asyncio.sleep(_POLL_SECONDS)
    await lab.redis.rpush(f"{gate}:go", *range(len(processes)))
    return time.perf_counter()


def terminate_children() -> None:
    """Send SIGTERM to every child still running, without waiting for them."""
    for process in list(_children):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)


def memory_kib(pid: int, field_name: str = "VmRSS") -> int:
    """Return a process's resident memory (VmRSS) or its peak (VmHWM) in KiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # the process ended; `_check_alive` tells why
        return 0
    for line in status.splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    return 0


@dataclass
class Drain:
    """How one drain went: seconds from first read to all acked, and memory."""

    seconds: float
    rss_kib: list[tuple[float, int]]  # (perf_counter, VmRSS) every 0.1 s or so
    peak_kib: int


async def _group_progress(
    redis: redis_asyncio.Redis, stream: str, groups: list[str]
) -> tuple[int, int]:
    """Return (entries read, entries not yet done) summed over some consumer groups."""
    try:
        found = {_text(g["name"]): g for g in await redis.xinfo_groups(stream)}
    except ResponseError:  # the stream does not exist yet
        return 0, 1
    read = remaining = 0
    for group in groups:
        info = found.get(group)
        if info is None:
            return read, 1
        read += int(info.get("entries-read") or 0)
        remaining += int(info.get("lag") or 0) + int(info["pending"])
    return read, remaining


async def wait_drained(
    lab: Lab,
    stream: str,
    groups: list[str],
    expected: int,
    processes: list[subprocess.Popen[bytes]],
    started: float | None = None,
    finite: int = 0,
) -> Drain:
    """Wait until every group read `expected` entries and acked them all.

    The clock starts at `started` if given, else when the first entry is read, so
    process start-up and imports do not count; the host's memory (the first process)
    is sampled along the way. The last `finite` processes (publishers) may end before
    the drain does; any other that ends, or any that fails, stops the run.
    """
    samples: list[tuple[float, int]] = []
    deadline = time.perf_counter() + DRAIN_TIMEOUT
    lasting = len(processes) - finite
    while time.perf_counter() < deadline:
        _check_alive(processes, lasting)
        read, remaining = await _group_progress(lab.redis, stream, groups)
        now = time.perf_counter()
        if read and started is None:
            started = now
        if read and (not samples or now - samples[-1][0] > 0.1):
            samples.append((now, memory_kib(processes[0].pid)))
        if started is not None and read >= expected * len(groups) and not remaining:
            peak = memory_kib(processes[0].pid, "VmHWM")
            return Drain(now - started, samples, peak)
        await asyncio.sleep(_POLL_SECONDS)
    raise TimeoutError(f"{stream} was not drained by {groups} in {DRAIN_TIMEOUT}s")


def _check_alive(processes: list[subprocess.Popen[bytes]], lasting: int = 0) -> None:
    """Raise if a process failed, or if one of the first `lasting` ended at all."""
    for i, process in enumerate(processes):
        code = process.poll()
        if code is not None and (code != 0 or i < lasting):
            raise RuntimeError(f"{process.args} exited with {code} before the end")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
