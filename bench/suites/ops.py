"""Operation call overhead: ``await op(ctx, req)`` against ``await fn(ctx, req)``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import chirp
from bench.core import Lab, Row
from bench.messages_pb2 import Empty, ProfileRequest, ProfileResponse

_REPEATS = 5


async def noop_fn(ctx: chirp.Context, req: Empty) -> Empty:
    """Return an empty response."""
    return Empty()


async def profile_fn(ctx: chirp.Context, req: ProfileRequest) -> ProfileResponse:
    """Build a response of a few fields from the request, as a small lookup would."""
    return ProfileResponse(
        user_id=req.user_id, handle="ada", score=req.limit * 10, badges=["a", "b"]
    )


noop_op = chirp.operation(name="bench-noop")(noop_fn)
profile_op = chirp.operation(name="bench-profile")(profile_fn)


async def _per_call_ns(
    call: Callable[[chirp.Context, Any], Awaitable[Any]],
    ctx: chirp.Context,
    req: object,
    calls: int,
) -> float:
    """Return the best of several timed loops, in nanoseconds per call."""
    best = float("inf")
    for _ in range(_REPEATS):
        started = time.perf_counter_ns()
        for _ in range(calls):
            await call(ctx, req)
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


async def run(lab: Lab) -> None:
    """Time a no-op and a realistic operation, each against its bare function."""
    calls = lab.sizes.op_calls // _REPEATS
    async with chirp.Client(
        name="bench", nats_url=lab.nats_url, redis_url=lab.redis_url
    ) as client:
        ctx = client.context()
        cases = [
            ("noop", "no-op", noop_op, noop_fn, Empty()),
            ("profile", "4-field request/response", profile_op, profile_fn, None),
        ]
        for key, label, op, fn, req in cases:
            req = req or ProfileRequest(user_id="u1", region="eu", limit=5)
            bare = await _per_call_ns(fn, ctx, req, calls)
            chirped = await _per_call_ns(op, ctx, req, calls)
            lab.add(
                Row(
                    f"ops.{key}",
                    "operation",
                    f"operation call, {label}",
                    chirped,
                    "ns/call",
                    "bare await",
                    bare,
                    higher_is_better=False,
                )
            )
