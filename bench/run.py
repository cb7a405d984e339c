"""Run the benchmark suite: ``python -m bench [--quick] [--only NAME]``.

Starts its own NATS and Valkey servers on free loopback ports, runs the suites in
order, prints each figure beside its baseline as it comes, then writes
``bench/results/latest.json`` and ``latest.md``, refreshes the table in
docs/performance.md and draws its plots. With ``--only``, the results go to
``latest-NAME.*`` instead and the docs are left alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as redis_asyncio

from bench import report
from bench.core import FULL, QUICK, RESULTS, Lab
from bench.suites import drain, latency, memory, ops, peers, publish
from chirp._embedded import embedded_servers

Suite = Callable[[Lab], Awaitable[None]]

SUITES: dict[str, Suite] = {
    "ops": ops.run,
    "publish": publish.run,
    "worker": drain.run,
    "latency": latency.run,
    "peers": peers.run,
    "memory": memory.run,
    "scale": drain.run_scale,
}


def parse() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small counts: the suite in ~3 minutes"
    )
    parser.add_argument(
        "--only", choices=sorted(SUITES), action="append", help="run only this suite"
    )
    parser.add_argument(
        "--backlog", type=int, help="messages of the memory drain (1,000,000 in full)"
    )
    return parser.parse_args()


async def run(names: list[str], args: argparse.Namespace) -> Lab:
    """Start the servers and run the named suites against them."""
    sizes = QUICK if args.quick else FULL
    if args.backlog:
        sizes = type(sizes)(**{**sizes.__dict__, "memory_backlog": args.backlog})
    async with embedded_servers() as servers:
        redis = redis_asyncio.Redis.from_url(servers.redis_url)
        lab = Lab(sizes, args.quick, servers.nats_url, servers.redis_url, redis)
        try:
            for name in names:
                if name == "peers" and not peers.peers_ready():
                    print("peers: skipped, no .venv/peers (run `make bench`)")
                    continue
                print(f"{name}:", flush=True)
                await SUITES[name](lab)
        finally:
            await redis.aclose()
    return lab


def main() -> None:
    """Run the suite and write its results."""
    logging.basicConfig(level=logging.WARNING)
    args = parse()
    names = args.only or list(SUITES)
    started = time.perf_counter()
    lab = asyncio.run(run(names, args))
    seconds = time.perf_counter() - started
    if args.only:
        tag = "-".join(args.only)
        RESULTS.mkdir(parents=True, exist_ok=True)
        text = report.markdown(lab, report.machine(), seconds)
        (RESULTS / f"latest-{tag}.md").write_text(text + "\n")
        rows = [row.__dict__ | {"ratio": row.ratio} for row in lab.rows]
        (RESULTS / f"latest-{tag}.json").write_text(json.dumps(rows, indent=1))
    else:
        text = report.write(lab, seconds)
    print()
    print(text)
