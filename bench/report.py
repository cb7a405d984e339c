"""The results of a run: the machine, the table, the targets, JSON and Markdown."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.core import PEERS_PYTHON, REPO, RESULTS, Lab, Row
from chirp._embedded import nats_server_binary, valkey_server_binary

DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


@dataclass(frozen=True)
class Target:
    """A goal the project set itself, stated on one row's ratio."""

    key: str
    goal: str
    at_most: float | None = None
    at_least: float | None = None

    def met(self, ratio: float) -> bool:
        """Tell whether a ratio meets the goal."""
        if self.at_most is not None and ratio > self.at_most:
            return False
        return self.at_least is None or ratio >= self.at_least


TARGETS = (
    Target("ops.noop", "operation overhead <= 20x a bare await", at_most=20),
    Target("pub.c100", "100-concurrent publish >= 60% of pipelined XADD", at_least=0.6),
    Target("worker.c128", "drain at c128 >= 50% of raw XREADGROUP/XACK", at_least=0.5),
    Target("peers.faststream_redis", "drain at c128 >= 15x FastStream", at_least=15),
    Target("latency.1.p50", "publish-and-wait p50 <= 3x raw NATS p50", at_most=3),
    Target("mem.growth", "worker host RSS flat after warm-up (<= +10%)", at_most=1.1),
)


def machine() -> dict[str, str]:
    """Describe the machine the run measured: CPU, cores, Python, server versions."""
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "nats-server": _version([str(nats_server_binary()), "--version"]),
        "valkey": _version([str(valkey_server_binary()), "--version"]),
        "clients": _packages(sys.executable, ("redis", "hiredis", "nats-py")),
        "peers": _packages(str(PEERS_PYTHON), ("faststream", "taskiq-redis")),
        "os": platform.platform(),
    }


def _packages(python: str, names: tuple[str, ...]) -> str:
    """Return ``name version, ...`` of packages installed for `python`."""
    if not Path(python).exists():
        return "not installed"
    script = (
        "import importlib.metadata as m, sys\n"
        "print(', '.join(f'{n} {m.version(n)}' for n in sys.argv[1:]))"
    )
    found = subprocess.run(
        [python, "-c", script, *names], capture_output=True, text=True
    )
    return found.stdout.strip() or "unknown"


def _version(command: list[str]) -> str:
    output = subprocess.run(command, capture_output=True, text=True).stdout
    found = re.search(r"v?=?(\d+\.\d+\.\d+)", output)
    return found.group(1) if found else output.strip()


def target_lines(rows: list[Row]) -> list[str]:
    """Return one Markdown bullet per target measured in this run: met or not."""
    by_key = {row.key: row for row in rows}
    lines = []
    for target in TARGETS:
        row = by_key.get(target.key)
        if row is None or row.ratio is None:
            continue
        verdict = "met" if target.met(row.ratio) else "**not met**"
        lines.append(f"- {target.goal}: {verdict} (ratio x{row.ratio:.2f})")
    return lines


def table(rows: list[Row]) -> str:
    """Return the results as a Markdown table, each figure beside its baseline."""
    lines = [
        "| suite | measurement | Chirp | baseline | baseline figure | ratio |",
        "|---|---|---:|---|---:|---:|",
    ]
    for row in rows:
        ratio = "" if row.ratio is None else f"x{row.ratio:.2f}"
        better = "higher" if row.higher_is_better else "lower"
        base = "" if row.baseline_value is None else _figure(row.baseline_value)
        lines.append(
            f"| {row.suite} | {row.name} | {_figure(row.value)} {row.unit} "
            f"| {row.baseline or ''} | {base} | {ratio} ({better} is better) |"
        )
    return "\n".join(lines)


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def markdown(lab: Lab, info: dict[str, str], seconds: float) -> str:
    """Return the Markdown report of a run: machine, table and targets."""
    mode = "quick" if lab.quick else "full"
    described = ", ".join(f"{k} {v}" for k, v in info.items() if k != "os")
    return "\n".join(
        [
            f"Run of {time.strftime('%Y-%m-%d %H:%M')} ({mode} mode, {seconds:.0f} s) "
            f"on {described}.",
            "",
            table(lab.rows),
            "",
            "Targets:",
            "",
            *target_lines(lab.rows),
        ]
    )


def write(lab: Lab, seconds: float, stem: str = "latest", docs: bool = True) -> str:
    """Write ``{stem}.json`` and ``{stem}.md``; with `docs`, refresh the docs page.

    The docs page gets the new table and its plots are drawn again.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine()
    document: dict[str, Any] = {
        "mode": "quick" if lab.quick else "full",
        "seconds": seconds,
        "machine": info,
        "sizes": asdict(lab.sizes),
        "rows": [asdict(row) | {"ratio": row.ratio} for row in lab.rows],
        "series": lab.series,
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(document, indent=1))
    text = markdown(lab, info, seconds)
    (RESULTS / f"{stem}.md").write_text(text + "\n")
    if docs:
        _update_doc(text)
        _plot()
    return text


def _update_doc(text: str) -> None:
    """Replace the generated block of docs/performance.md with the latest table."""
    if not DOC.exists():
        return
    page = DOC.read_text()
    start, end = page.find(BEGIN), page.find(END)
    if start < 0 or end < start:
        return
    DOC.write_text(page[: start + len(BEGIN)] + "\n" + text + "\n" + page[end:])


def _plot() -> None:
    """Draw the PNG plots with matplotlib from the peers' venv, if it is there."""
    if not PEERS_PYTHON.exists():
        print("no .venv/peers: plots skipped", file=sys.stderr)
        return
    env = {"PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    command = [str(PEERS_PYTHON), "-m", "bench.plot", str(RESULTS / "latest.json")]
    subprocess.run(command, env=env, check=False)
