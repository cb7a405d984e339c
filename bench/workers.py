"""Workers the benchmark runs with ``python -m chirp run bench.workers``.

Everything comes from environment variables, so one module serves every scenario:

- ``BENCH_MODE``: ``drain`` (one no-op worker), ``reply`` (publishes `JobDone` for
  each `Job`, for publish-and-wait) or ``fanout`` (``BENCH_FANOUT`` no-op workers,
  each its own consumer group on the same stream).
- ``BENCH_WORKER``: the worker's name, so several runs can drain one backlog, each
  through a consumer group of its own.
- ``BENCH_CONCURRENCY`` and ``BENCH_BATCH``: the worker settings under test.
- ``BENCH_GATE``: a start gate to wait at once imported (`bench.core.pass_gate`).
"""

from __future__ import annotations

import os
from typing import Any

import chirp
from bench.core import pass_gate
from bench.messages_pb2 import Job, JobDone

MODE = os.environ.get("BENCH_MODE", "drain")
NAME = os.environ.get("BENCH_WORKER", "bench-drain")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))
BATCH = int(os.environ.get("BENCH_BATCH", "64"))
FANOUT = int(os.environ.get("BENCH_FANOUT", "10"))


async def noop(ctx: chirp.Context, msg: Job) -> None:
    """Do nothing: what is measured is the machinery around the handler."""


async def reply(ctx: chirp.Context, msg: Job) -> None:
    """Publish the completion a publish-and-wait caller is waiting for."""
    await ctx.msg(JobDone(key=msg.key))


def _declare() -> dict[str, chirp.Worker[Any]]:
    """Return the workers of this mode, by the module attribute they become."""
    settings: dict[str, Any] = {"concurrency": CONCURRENCY, "batch": BATCH}
    if MODE == "reply":
        return {"reply_worker": chirp.worker(name=NAME, **settings)(reply)}
    if MODE == "fanout":
        return {
            f"fanout_{i}": chirp.worker(name=f"{NAME}-{i}", **settings)(noop)
            for i in range(FANOUT)
        }
    return {"drain_worker": chirp.worker(name=NAME, **settings)(noop)}


# `chirp run` runs the workers found at a module's top level.
globals().update(_declare())
# Imported by `chirp run` before it connects: what is left after the gate is the
# connection and the consumer group, tens of milliseconds.
pass_gate()
