"""The demo's summary: requests by route and status, latencies, topics and workers."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from arena.traffic import ROUTES, Tally

# Mismatches listed one by one; the rest are only counted.
_SHOWN_MISMATCHES = 10


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """What one worker went through, as its counters in Redis say."""

    name: str
    consumes: str
    retries: int
    dead_letters: int


@dataclass(frozen=True, slots=True)
class SystemStats:
    """Messages per topic and counters per worker after the traffic."""

    topics: Sequence[tuple[str, int]]
    workers: Sequence[WorkerStats]


def print_summary(
    console: Console, tally: Tally, stats: SystemStats, *, seconds: float
) -> None:
    """Print the tables, then the verdict: which answers were not the expected ones."""
    count = len(tally.samples)
    console.print(
        f"\n{count} requests in {seconds:.1f}s ({count / seconds:.0f}/s)", style="bold"
    )
    console.print(requests_table(tally))
    console.print(errors_table(tally))
    console.print(topics_table(stats))
    console.print(workers_table(stats))
    print_mismatches(console, tally)


def requests_table(tally: Tally) -> Table:
    """Return requests per route: how many, by status, and their latency."""
    table = Table(title="Requests by route")
    table.add_column("route", no_wrap=True)
    table.add_column("requests", justify="right")
    table.add_column("by status")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")

    by_route: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for route, status, seconds in tally.samples:
        by_route[route].append((status, seconds))
    for route in ROUTES:
        _add_route_row(table, route, by_route[route])
    table.add_section()
    everything = [(status, seconds) for _, status, seconds in tally.samples]
    _add_route_row(table, "all", everything)
    return table


def _add_route_row(
    table: Table, route: str, samples: Sequence[tuple[int, float]]
) -> None:
    statuses = Counter(status for status, _ in samples)
    latencies = sorted(seconds for _, seconds in samples)
    table.add_row(
        route,
        str(len(samples)),
        " ".join(f"{status}:{n}" for status, n in sorted(statuses.items())),
        _milliseconds(percentile(latencies, 0.50)),
        _milliseconds(percentile(latencies, 0.99)),
    )


def errors_table(tally: Tally) -> Table:
    """Return the error answers by code: each failure the gateway gave on purpose."""
    table = Table(title="Errors by code")
    table.add_column("code", no_wrap=True)
    table.add_column("status", justify="right")
    table.add_column("answers", justify="right")
    for (code, status), count in sorted(tally.codes.items()):
        table.add_row(code, str(status), str(count))
    return table


def print_ray(console: Console, ray_id: str, lines: Sequence[str]) -> None:
    """Print the worker host's log lines of one ray: its path through the system."""
    console.print(f"\nFollowing ray {ray_id} through the worker host's log:")
    for line in lines:
        console.print(f"  {line}", markup=False, highlight=False)


def topics_table(stats: SystemStats) -> Table:
    """Return the number of messages in each topic's stream."""
    table = Table(title="Messages per topic")
    table.add_column("topic")
    table.add_column("messages", justify="right")
    for topic, length in stats.topics:
        table.add_row(topic, str(length))
    return table


def workers_table(stats: SystemStats) -> Table:
    """Return each worker's retries and dead letters."""
    table = Table(title="Workers")
    table.add_column("worker")
    table.add_column("consumes")
    table.add_column("retries", justify="right")
    table.add_column("dead letters", justify="right")
    for worker in stats.workers:
        table.add_row(
            worker.name,
            worker.consumes,
            str(worker.retries),
            str(worker.dead_letters),
        )
    return table


def print_mismatches(console: Console, tally: Tally) -> None:
    """Print the verdict, with the first few unexpected answers if there were any."""
    mismatches = tally.mismatches
    if not mismatches:
        console.print(
            "mismatches: 0, every request got its expected answer", style="green"
        )
        return

    console.print(f"mismatches: {len(mismatches)}", style="bold red")
    for mismatch in mismatches[:_SHOWN_MISMATCHES]:
        call = mismatch.call
        console.print(
            f"  {call.method} {call.path} {call.body or ''}: {mismatch.complaint} "
            f"(ray {mismatch.answer.ray_id})",
            markup=False,
            highlight=False,
        )
    if len(mismatches) > _SHOWN_MISMATCHES:
        console.print(f"  ... and {len(mismatches) - _SHOWN_MISMATCHES} more")


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Return the nearest-rank percentile of sorted values; None if there are none."""
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"
