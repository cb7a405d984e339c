"""Draw the plots of docs/performance.md from a results file (needs matplotlib).

Run by the peers' venv, where matplotlib is installed:
``.venv/peers/bin/python -m bench.plot bench/results/latest.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONCURRENCIES = (1, 16, 128)
PEERS = {
    "peer_faststream_redis": "FastStream Redis stream",
    "peer_taskiq_redis_stream": "Taskiq Redis stream",
    "peer_faststream_nats": "FastStream NATS JetStream",
}


def throughput(series: dict[str, Any], out: Path) -> None:
    """Worker drain rate against handler concurrency, with the baselines as lines."""
    if not all(f"worker_c{c}" in series for c in CONCURRENCIES):
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    rates = [series[f"worker_c{c}"] for c in CONCURRENCIES]
    ax.plot(CONCURRENCIES, rates, marker="o", label="Chirp worker host")
    ax.axhline(series["worker_raw"], color="black", linestyle="--", label="raw loop")
    for key, label in PEERS.items():
        if key in series:
            ax.axhline(
                series[key], linestyle=":", color=f"C{len(ax.lines)}", label=label
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(CONCURRENCIES, [str(c) for c in CONCURRENCIES])
    ax.set_xlabel("handler concurrency (one host process)")
    ax.set_ylabel("messages drained per second")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    ax.set_title("Worker throughput, no-op handler, 256-byte body")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def latency(series: dict[str, Any], out: Path) -> None:
    """Cumulative distribution of publish-and-wait and raw NATS request latencies."""
    runs = [(k, v) for k, v in series.items() if k.startswith("latency_")]
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, samples in runs:
        callers = key.split("_")[1]
        for name, values in samples.items():
            ordered = sorted(v * 1000 for v in values)
            share = [(i + 1) / len(ordered) for i in range(len(ordered))]
            style = "-" if name == "chirp" else "--"
            label = f"{'Chirp publish_wait' if name == 'chirp' else 'raw NATS request'}"
            ax.plot(ordered, share, style, label=f"{label}, {callers} caller(s)")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("share of calls at or below")
    ax.legend(fontsize="small")
    ax.set_title("Publish-and-wait latency (message -> worker -> completion)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    """Draw both plots into docs/."""
    series = json.loads(Path(sys.argv[1]).read_text())["series"]
    throughput(series, DOCS / "performance-throughput.png")
    latency(series, DOCS / "performance-latency.png")


if __name__ == "__main__":
    main()
