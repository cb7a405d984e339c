"""Child processes of the benchmark that run in the project venv.

``python -m bench.procs COMMAND ARGS...``, with the servers in ``CHIRP_*`` variables:

- ``raw-consume STREAM GROUP [GROUPS]``: the baseline consumer, a bare
  ``XREADGROUP COUNT 100`` + one ``XACK`` per batch loop (per group, all in one
  process), until killed.
- ``raw-publish STREAM COUNT``: append COUNT envelopes, 100 per pipeline.
- ``chirp-publish COUNT``: publish COUNT jobs through ``ctx.msg`` from 100 tasks.
- ``nats-respond SUBJECT``: answer every request on SUBJECT, until killed.
- ``hold-waits COUNT``: start COUNT concurrent publish-and-wait calls, wait for all,
  then print as JSON the RSS after one warm-up call, the peak RSS (KiB) and the
  seconds taken.
- ``op-loop COUNT`` and ``wait-loop COUNT``: call a no-op operation, or make
  sequential publish-and-wait calls, COUNT times (what `bench.profile` samples).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable

import nats
import redis.asyncio as redis_asyncio
from redis.exceptions import ResponseError

import chirp
from bench.core import envelope, job, memory_kib, pass_gate
from bench.messages_pb2 import Empty, JobDone
from chirp._wire import ENVELOPE_FIELD

PUBLISHERS = 100


def _redis() -> redis_asyncio.Redis:
    return redis_asyncio.Redis.from_url(os.environ["CHIRP_REDIS_URL"])


async def raw_consume(stream: str, group: str, groups: str = "1") -> None:
    """Drain a stream through bare consumer-group reads and acks, forever."""
    redis = _redis()
    names = [group] if groups == "1" else [f"{group}-{i}" for i in range(int(groups))]
    for name in names:
        try:
            await redis.xgroup_create(stream, name, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
    await asyncio.gather(*(_consume_group(redis, stream, name) for name in names))


async def _consume_group(redis: redis_asyncio.Redis, stream: str, group: str) -> None:
    while True:
        reply = await redis.xreadgroup(
            group, "raw", {stream: ">"}, count=100, block=1000
        )
        for _, entries in reply or []:
            await redis.xack(stream, group, *[entry_id for entry_id, _ in entries])


async def raw_publish(stream: str, count: str) -> None:
    """Append envelopes the way a batching publisher would, 100 per pipeline."""
    redis = _redis()
    fields = {ENVELOPE_FIELD: envelope()}
    for start in range(0, int(count), PUBLISHERS):
        pipe = redis.pipeline(transaction=False)
        for _ in range(min(PUBLISHERS, int(count) - start)):
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        await pipe.execute()


async def chirp_publish(count: str) -> None:
    """Publish jobs through Chirp from 100 concurrent tasks."""
    async with chirp.Client(name="bench-publisher") as client:
        ctx = client.context()
        body = job()

        async def publisher(n: int) -> None:
            for _ in range(n):
                await ctx.msg(body)

        share = int(count) // PUBLISHERS
        await asyncio.gather(*(publisher(share) for _ in range(PUBLISHERS)))


async def nats_respond(subject: str) -> None:
    """Answer each request with a small reply, forever (the raw request baseline)."""
    nc = await nats.connect(os.environ["CHIRP_NATS_URL"])

    async def answer(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(b"done")

    await nc.subscribe(subject, cb=answer)
    await asyncio.Event().wait()


async def hold_waits(count: str) -> None:
    """Hold COUNT publish-and-wait calls at once; report peak RSS and duration."""
    async with chirp.Client(name="bench-waiter") as client:
        ctx = client.context()
        await ctx.publish_wait(job(key="warm-up"), JobDone, timeout=60)
        idle = memory_kib(os.getpid())
        started = time.perf_counter()
        await asyncio.gather(
            *(
                ctx.publish_wait(job(key=f"w{i}"), JobDone, timeout=300)
                for i in range(int(count))
            )
        )
        took = time.perf_counter() - started
    peak = memory_kib(os.getpid(), "VmHWM")
    print(json.dumps({"idle_kib": idle, "peak_kib": peak, "seconds": took}), flush=True)


async def op_loop(count: str) -> None:
    """Call the no-op operation of `bench.suites.ops` COUNT times (for profiling)."""
    from bench.suites.ops import noop_op

    async with chirp.Client(name="bench-caller") as client:
        ctx = client.context()
        request = Empty()
        for _ in range(int(count)):
            await noop_op(ctx, request)


async def wait_loop(count: str) -> None:
    """Make COUNT sequential publish-and-wait calls (for profiling)."""
    async with chirp.Client(name="bench-waiter") as client:
        ctx = client.context()
        for i in range(int(count)):
            await ctx.publish_wait(job(key=f"s{i}"), JobDone, timeout=30)


COMMANDS: dict[str, Callable[..., Awaitable[None]]] = {
    "raw-consume": raw_consume,
    "raw-publish": raw_publish,
    "chirp-publish": chirp_publish,
    "nats-respond": nats_respond,
    "hold-waits": hold_waits,
    "op-loop": op_loop,
    "wait-loop": wait_loop,
}


def main() -> None:
    """Run the command named by the first argument."""
    command, *args = sys.argv[1:]
    pass_gate()
    asyncio.run(COMMANDS[command](*args))


if __name__ == "__main__":
    main()
