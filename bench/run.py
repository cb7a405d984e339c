"""Run the benchmark suite: ``python -m bench [--quick] [--only NAME]``.

Starts its own NATS and Valkey servers on free loopback ports, runs the suites in
order, prints each figure beside its baseline as it comes, then writes
``bench/results/latest.json`` and ``latest.md``, refreshes the table in
docs/performance.md and draws its plots. With ``--only`` or ``--quick``, the results
go to ``latest-NAME.*`` or ``latest-quick.*`` instead and the docs are left alone.
Ctrl-C or SIGTERM stops the children and the servers and writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as redis_asyncio

from bench import report
from bench.core import FULL, QUICK, Lab, terminate_children
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
        "--quick", action="store_true", help="small counts: the suite in ~2-3 minutes"
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
    _stop_on_signals(asyncio.current_task())
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


# The signal that stopped the run, once one arrived: what fails after that is the
# stop, not the run, and a run that ends anyway writes nothing.
_interrupted: signal.Signals | None = None


def _stop_on_signals(task: asyncio.Task[Lab] | None) -> None:
    """Make SIGINT and SIGTERM stop the children and cancel the run.

    One cancel is not enough: redis-py waits for replies with `asyncio.wait_for`,
    which on Python 3.11 drops a cancel that arrives as the reply does. So the run is
    cancelled again every half second until it ends.
    """
    assert task is not None
    loop = asyncio.get_running_loop()

    def cancel_until_done() -> None:
        if not task.done():
            task.cancel()
            loop.call_later(0.5, cancel_until_done)

    def interrupted(signum: signal.Signals) -> None:
        global _interrupted
        if _interrupted is None:
            print(f"\n{signum.name}: stopping; no results are written", file=sys.stderr)
        _interrupted = signum
        terminate_children()
        cancel_until_done()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted, signum)


def main() -> None:
    """Run the suite and write its results."""
    logging.basicConfig(level=logging.WARNING)
    args = parse()
    names = args.only or list(SUITES)
    started = time.perf_counter()
    try:
        lab = asyncio.run(run(names, args))
    except (asyncio.CancelledError, Exception):
        if _interrupted is None:
            raise
    # Also when the run ended before the cancel took.
    if _interrupted is not None:
        sys.exit(128 + _interrupted.value)
    seconds = time.perf_counter() - started
    # The results, the docs table and the plots are written whole: a signal now
    # takes effect once they are.
    held: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, _frame: held.append(number))
    tags = [*(args.only or []), *(["quick"] if args.quick else [])]
    if tags:
        text = report.write(lab, seconds, "-".join(["latest", *tags]), docs=False)
    else:
        text = report.write(lab, seconds)
    print()
    print(text)
    if held:
        sys.exit(128 + held[0])
