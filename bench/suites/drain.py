"""Worker throughput: a backlog drained by `chirp run` hosts, against a raw loop.

Every drain is timed the same way, from outside: `wait_drained` polls the consumer
groups from the first entry read (or, end to end, from the moment publisher and
consumer are let go together) until all are read and acked. Several drains of one
backlog each use a consumer group of their own, so the stream is seeded once.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Awaitable, Callable

from bench.core import (
    GATE_ENV,
    PAYLOAD_SIZE,
    Drain,
    Lab,
    Row,
    chirp_host,
    open_gate,
    python_module,
    seed_jobs,
    spawn,
    stop,
    stream_key,
    wait_drained,
)

CONCURRENCIES = (1, 16, 128)
HOSTS = (1, 2, 4)
PAYLOADS = (64, 256, 1024, 4096, 16384, 65536)
FANOUT = 10
UNIT = "msg/s"
RAW = "raw XREADGROUP/XACK loop"
_groups = itertools.count()


async def drain_chirp(
    lab: Lab,
    namespace: str,
    expected: int,
    *,
    concurrency: int = 128,
    hosts: int = 1,
    mode: str = "drain",
    also: list[list[str]] | None = None,
) -> Drain:
    """Run `hosts` worker hosts (and `also` commands) until the stream is drained."""
    worker = f"w{next(_groups)}"
    env = lab.env(
        namespace, BENCH_WORKER=worker, BENCH_CONCURRENCY=concurrency, BENCH_MODE=mode
    )
    groups = [f"{worker}-{i}" for i in range(FANOUT)] if mode == "fanout" else [worker]
    hosts_commands = [chirp_host() for _ in range(hosts)]
    stream = stream_key(namespace)
    return await _drain(
        lab, worker, hosts_commands, env, stream, groups, expected, also or []
    )


async def drain_raw(
    lab: Lab,
    namespace: str,
    expected: int,
    *,
    groups: int = 1,
    also: list[list[str]] | None = None,
) -> Drain:
    """Drain a stream with the bare XREADGROUP/XACK loop of `bench.procs`."""
    group = f"raw{next(_groups)}"
    stream = stream_key(namespace)
    consume = python_module("bench.procs", "raw-consume", stream, group, groups)
    names = [group] if groups == 1 else [f"{group}-{i}" for i in range(groups)]
    return await _drain(
        lab, group, [consume], lab.env(namespace), stream, names, expected, also or []
    )


async def _drain(
    lab: Lab,
    label: str,
    consumers: list[list[str]],
    env: dict[str, str],
    stream: str,
    groups: list[str],
    expected: int,
    publishers: list[list[str]],
) -> Drain:
    """Run consumers and publishers together; time the drain of `expected` per group.

    Several processes start together at a gate (`bench.core.pass_gate`). With
    publishers, the clock starts as the gate opens, the same moment for publisher and
    consumer; otherwise at the first read.
    """
    commands = consumers + publishers
    processes: list[subprocess.Popen[bytes]] = []
    gated = len(commands) > 1
    gate = f"bench-gate:{label}"
    if gated:
        env = env | {GATE_ENV: gate}
    try:
        for i, command in enumerate(commands):
            processes.append(spawn(f"{label}-{i}", command, env))
        opened = await open_gate(lab, gate, processes) if gated else None
        started = opened if publishers else None
        return await wait_drained(
            lab, stream, groups, expected, processes, started, finite=len(publishers)
        )
    finally:
        for process in processes:
            stop(process)


async def median_rate(
    lab: Lab, count: int, attempt: Callable[[], Awaitable[Drain]]
) -> float:
    """Run a drain of `count` entries several times; return the median rate.

    Drains of a second or less on two cores swing by tens of percent between runs, with
    the host, Valkey and the poller competing for the CPUs; the median steadies them.
    """
    return _median(
        [count / (await attempt()).seconds for _ in range(lab.sizes.repeats)]
    )


async def _in_turns(
    lab: Lab,
    units: int,
    raw: Callable[[], Awaitable[Drain]],
    ours: Callable[[], Awaitable[Drain]],
    after_round: Callable[[], Awaitable[object]] | None = None,
) -> tuple[float, float]:
    """Run a raw and a Chirp drain in turns, round after round; return median rates.

    Returns (Chirp, raw), each in `units` per second of drain.
    """
    raw_rates: list[float] = []
    rates: list[float] = []
    for _ in range(lab.sizes.repeats):
        raw_rates.append(units / (await raw()).seconds)
        rates.append(units / (await ours()).seconds)
        if after_round is not None:
            await after_round()
    return _median(rates), _median(raw_rates)


def _row(key: str, name: str, rate: float, base: str, base_rate: float) -> Row:
    return Row(key, "worker", name, rate, UNIT, base, base_rate)


async def run(lab: Lab) -> None:
    """Drain one backlog at concurrency 1, 16 and 128, then end to end and fan-out.

    The raw loop and the three Chirp drains take turns, round after round, and each
    keeps its median: on a shared machine speed drifts over minutes, and taking turns
    gives the baseline and Chirp the same conditions.
    """
    count = lab.sizes.backlog
    # At concurrency 1 a fifth of the backlog is enough for a steady rate.
    sizes = {1: count // 5, 16: count, 128: count}
    await seed_jobs(lab, "bench-drain", count, PAYLOAD_SIZE)
    await seed_jobs(lab, "bench-drain-1", sizes[1], PAYLOAD_SIZE)
    raw_rates: list[float] = []
    rates: dict[int, list[float]] = {c: [] for c in CONCURRENCIES}
    for _ in range(lab.sizes.repeats):
        raw_rates.append(count / (await drain_raw(lab, "bench-drain", count)).seconds)
        for concurrency in CONCURRENCIES:
            n = sizes[concurrency]
            namespace = "bench-drain-1" if concurrency == 1 else "bench-drain"
            drain = await drain_chirp(lab, namespace, n, concurrency=concurrency)
            rates[concurrency].append(n / drain.seconds)
    raw = _median(raw_rates)
    lab.series["worker_raw"] = raw
    for concurrency in CONCURRENCIES:
        rate = _median(rates[concurrency])
        lab.series[f"worker_c{concurrency}"] = rate
        name = f"worker drain, concurrency {concurrency}"
        lab.add(_row(f"worker.c{concurrency}", name, rate, RAW, raw))
    await lab.redis.flushdb()
    await _end_to_end(lab, count)
    await _fanout(lab, lab.sizes.fanout)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def _end_to_end(lab: Lab, count: int) -> None:
    """Publisher in another process while one host drains, against raw on both ends.

    Raw and Chirp take turns, each round on empty streams; medians are kept.
    """
    raw_stream = stream_key("bench-e2e-raw")
    raw_pub = python_module("bench.procs", "raw-publish", raw_stream, count)
    chirp_pub = python_module("bench.procs", "chirp-publish", count)
    rate, raw_rate = await _in_turns(
        lab,
        count,
        lambda: drain_raw(lab, "bench-e2e-raw", count, also=[raw_pub]),
        lambda: drain_chirp(lab, "bench-e2e", count, also=[chirp_pub]),
        after_round=lab.redis.flushdb,
    )
    name = "end to end: publisher process (100 tasks) + host c128"
    base = "raw pipelined XADD + raw loop"
    lab.add(_row("worker.e2e", name, rate, base, raw_rate))


async def _fanout(lab: Lab, count: int) -> None:
    """One backlog consumed by 10 workers (10 groups) in one host."""
    await seed_jobs(lab, "bench-fan", count, PAYLOAD_SIZE)
    deliveries = count * FANOUT
    rate, raw_rate = await _in_turns(
        lab,
        deliveries,
        lambda: drain_raw(lab, "bench-fan", count, groups=FANOUT),
        lambda: drain_chirp(lab, "bench-fan", count, mode="fanout"),
    )
    name = f"fan-out: 1 message to {FANOUT} workers (deliveries/s)"
    base = f"raw loop, {FANOUT} groups"
    lab.add(_row("worker.fanout", name, rate, base, raw_rate))
    await lab.redis.flushdb()


async def run_scale(lab: Lab) -> None:
    """Throughput with 1, 2 and 4 hosts, and with payloads from 64 B to 64 KiB."""
    count = lab.sizes.scale_backlog
    await seed_jobs(lab, "bench-scale", count, PAYLOAD_SIZE)
    rates: dict[int, float] = {}
    for hosts in HOSTS:

        def attempt(h: int = hosts) -> Awaitable[Drain]:
            return drain_chirp(lab, "bench-scale", count, hosts=h)

        rates[hosts] = await median_rate(lab, count, attempt)
        name = f"{hosts} host process(es), c128 each"
        lab.add(
            Row(
                f"scale.hosts{hosts}",
                "scale",
                name,
                rates[hosts],
                UNIT,
                "1 host",
                rates[1],
            )
        )
    await lab.redis.flushdb()
    for size in PAYLOADS:
        namespace = f"bench-size-{size}"
        await seed_jobs(lab, namespace, count, size)
        rate, raw_rate = await _in_turns(
            lab,
            count,
            lambda ns=namespace: drain_raw(lab, ns, count),
            lambda ns=namespace: drain_chirp(lab, ns, count),
        )
        name = f"payload {size:,} B, 1 host c128"
        lab.add(
            Row(
                f"scale.size{size}",
                "scale",
                name,
                rate,
                UNIT,
                "raw loop, same data",
                raw_rate,
            )
        )
        await lab.redis.flushdb()
