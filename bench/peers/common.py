"""What the peer scripts share: copying a framework's own stream entry."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis


async def duplicate_first(url: str, stream: str, count: int) -> None:
    """Append copies of a stream's first entry until it holds `count` entries.

    Filling through a framework's publisher would take longer than draining; the
    copies are byte for byte what that publisher wrote, so its consumer accepts them.
    """
    redis = Redis.from_url(url)
    [(_, fields)] = await redis.xrange(stream, count=1)
    for start in range(1, count, 1000):
        pipe = redis.pipeline(transaction=False)
        for _ in range(min(1000, count - start)):
            pipe.xadd(stream, fields)
        await pipe.execute()
    await redis.aclose()


def main(
    fill: Callable[[str, int, int], Awaitable[None]],
    consume: Callable[[str], Awaitable[None]],
) -> None:
    """Dispatch ``fill URL COUNT SIZE`` or ``consume URL`` from the command line."""
    command, url, *rest = sys.argv[1:]
    if command == "fill":
        asyncio.run(fill(url, int(rest[0]), int(rest[1])))
    else:
        asyncio.run(consume(url))
