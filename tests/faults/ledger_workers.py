"""Workers the fault tests run in `chirp run` host processes.

Each worker records what it did in Redis, beside Chirp's own keys, so a test can check
the outcome exactly from outside the process (`{ns}` is the namespace):

- `faults:{ns}:ledger:{worker}`: set of the request ids handled successfully. The id
  is added before the handler returns, so a handling is recorded even if the host dies
  before it acks (then the message runs again: at least once).
- `faults:{ns}:starts:{worker}:{key}`: one `attempt pid time` item per start, for
  messages that ask to be traced (`text` contains `trace`, `hang` or `block`).
- `faults:{ns}:runs:{worker}`: one `key start end pid` item per finished run of a
  message that sleeps.

The message (`chirptest.Ping`) steers its handler:

- `text` contains `hang`: the first start of a key awaits forever (a dependency that
  never answers); `block`: the first start blocks the whole event loop (a dependency
  called synchronously that never answers); later starts complete.
- `text` contains `flag`: raise while the key `faults:{ns}:down` exists.
- `text` contains `reply`: publish `PingDone` when done.
- `fail_times`: raise on attempts up to this number.
- `sleep`: seconds to sleep before succeeding.

Settings come from the environment, so a test can make leases and backoff short:
`FAULTS_WORKERS` (space-separated names, default `ledger-a ledger-b`, all consuming
`Ping`), `FAULTS_LEASE`, `FAULTS_CONCURRENCY`, `FAULTS_BACKOFF_BASE`,
`FAULTS_BACKOFF_CAP`, and `FAULTS_JITTER=max` to pin the jitter to its ceiling.
"""

import asyncio
import os
import random
import time

from chirptest.messages_pb2 import Ping, PingDone

import chirp

WORKERS = os.environ.get("FAULTS_WORKERS", "ledger-a ledger-b").split()
LEASE = float(os.environ.get("FAULTS_LEASE", "30"))
CONCURRENCY = int(os.environ.get("FAULTS_CONCURRENCY", "16"))
BACKOFF_BASE = float(os.environ.get("FAULTS_BACKOFF_BASE", "0.5"))
BACKOFF_CAP = float(os.environ.get("FAULTS_BACKOFF_CAP", "300"))
PID = os.getpid()


class _Ceiling(random.Random):
    """Jitter that always picks the largest delay, so the schedule is exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _backoff() -> chirp.Backoff:
    pinned = os.environ.get("FAULTS_JITTER") == "max"
    rng = _Ceiling() if pinned else random.Random()
    return chirp.Backoff(base=BACKOFF_BASE, cap=BACKOFF_CAP, rng=rng)


def key_prefix(namespace: str) -> str:
    """Return the prefix of every key these workers write in a namespace."""
    return f"faults:{namespace}"


def _make_worker(name: str) -> chirp.Worker[Ping]:
    async def handle(ctx: chirp.Context, msg: Ping) -> None:
        await _handle(name, ctx, msg)

    return chirp.worker(
        name=name, lease=LEASE, concurrency=CONCURRENCY, backoff=_backoff()
    )(handle)


async def _handle(worker: str, ctx: chirp.Context, msg: Ping) -> None:
    redis = ctx.client.redis
    prefix = key_prefix(ctx.client.names.namespace)
    started = time.time()
    if any(mode in msg.text for mode in ("trace", "hang", "block")):
        starts = f"{prefix}:starts:{worker}:{msg.key}"
        count = await redis.rpush(starts, f"{ctx.attempt} {PID} {started}")
        if count == 1:
            await _hang_if_asked(msg.text)
    if "flag" in msg.text and await redis.exists(f"{prefix}:down"):
        raise chirp.TransportError("the dependency is down")
    if ctx.attempt <= msg.fail_times:
        raise chirp.TransportError(f"failing attempt {ctx.attempt} on purpose")
    if msg.sleep:
        await asyncio.sleep(msg.sleep)
        runs = f"{prefix}:runs:{worker}"
        await redis.rpush(runs, f"{msg.key} {started} {time.time()} {PID}")
    await redis.sadd(f"{prefix}:ledger:{worker}", ctx.request_id)
    if "reply" in msg.text:
        await ctx.msg(PingDone(key=msg.key, attempt=ctx.attempt))


async def _hang_if_asked(text: str) -> None:
    if "hang" in text:
        await asyncio.Event().wait()
    if "block" in text:
        time.sleep(3600)  # noqa: ASYNC251 - blocking the loop is the fault


for _name in WORKERS:
    globals()[_name.replace("-", "_")] = _make_worker(_name)
