"""Workers that test processes run with ``chirp run chirptest.workers``.

The message steers them: `sleep` seconds on the first start of a key (counted in Redis,
so a second process can tell it is the second start), then the completion.
"""

import asyncio
import os

import chirp
from chirptest.messages_pb2 import Ping, PingDone

LEASE = float(os.environ.get("CHIRPTEST_LEASE", "30"))


@chirp.worker(name="test-process-ping", lease=LEASE, concurrency=4)
async def process_ping(ctx: chirp.Context, msg: Ping) -> None:
    """Sleep on the first start of a key, then publish the completion."""
    starts = await ctx.client.redis.incr(
        f"chirptest:{ctx.client.names.namespace}:{msg.key}"
    )
    if starts == 1 and msg.sleep:
        await asyncio.sleep(msg.sleep)
    await ctx.msg(PingDone(key=msg.key, text=str(starts), attempt=ctx.attempt))
