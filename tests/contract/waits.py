"""Polling waits shared by the contract tests."""

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def wait_for_value(
    read: Callable[[], Awaitable[object]], expected: object, timeout: float = 5.0
) -> None:
    """Poll `read` until it returns `expected`; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while (value := await read()) != expected:
        assert time.monotonic() < deadline, f"got {value!r}, never {expected!r}"
        await asyncio.sleep(0.01)
