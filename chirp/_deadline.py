"""Cheap enforced deadlines for operation calls.

`asyncio.timeout` costs about 4 us a call (a timer handle in the loop's heap, created
and cancelled every time), many times the cost of the call it guards. Operation calls
instead register in a per-loop table, and one watcher task, running only while calls
are in flight, sleeps until the earliest deadline (woken sooner when an earlier one
registers, and at least `TICK` seconds) and cancels the tasks whose deadline passed.
A deadline is so enforced within `TICK` of its time, for a few tens of nanoseconds a
call.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Final

TICK: Final = 0.01


class Deadline:
    """One call's deadline, registered with the loop's watcher while the call runs.

    Attributes:
        when: `loop.time()` by which the call must finish.
        expired: Set by the watcher when it cancelled the call's task for this deadline.
    """

    __slots__ = ("_key", "_watcher", "expired", "task", "when")

    def __init__(
        self, when: float, task: asyncio.Task[object], key: int, watcher: _Watcher
    ) -> None:
        self.when = when
        self.task = task
        self.expired = False
        self._key = key
        self._watcher = watcher

    def release(self) -> None:
        """Forget the call: it has finished, whatever its outcome."""
        del self._watcher.calls[self._key]


class _Watcher:
    """The deadlines of the calls in flight on one loop, and the task enforcing them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.calls: dict[int, Deadline] = {}
        self._keys = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._wake_at = 0.0
        self._earlier = asyncio.Event()

    def watch(self, when: float) -> Deadline:
        task = asyncio.current_task(self.loop)
        assert task is not None, "deadlines need a running task"
        deadline = Deadline(when, task, next(self._keys), self)
        self.calls[deadline._key] = deadline
        if self._task is None:
            self._task = self.loop.create_task(self._run())
        elif when < self._wake_at:
            self._earlier.set()
        return deadline

    async def _run(self) -> None:
        try:
            while self.calls:
                now = self.loop.time()
                self._expire(now)
                await self._sleep(now)
        finally:
            self._task = None

    async def _sleep(self, now: float) -> None:
        """Sleep until the earliest deadline, or until an earlier one registers."""
        waiting = [d.when for d in self.calls.values() if not d.expired]
        delay = max(TICK, min(waiting, default=now + TICK) - now)
        self._wake_at = now + delay
        self._earlier.clear()
        try:
            await asyncio.wait_for(self._earlier.wait(), delay)
        except TimeoutError:
            pass

    def _expire(self, now: float) -> None:
        cancelled: set[asyncio.Task[object]] = set()
        for deadline in list(self.calls.values()):
            if deadline.when > now or deadline.expired:
                continue
            deadline.expired = True
            # Cancel each task once, however many of its nested calls expired: the
            # innermost expired call turns the cancellation into a timeout.
            if deadline.task not in cancelled:
                cancelled.add(deadline.task)
                deadline.task.cancel()


_watcher: _Watcher | None = None


def watch(when: float) -> Deadline:
    """Register the current task's call with deadline `when` (in `loop.time()`)."""
    global _watcher
    loop = asyncio.get_running_loop()
    if _watcher is None or _watcher.loop is not loop:
        _watcher = _Watcher(loop)
    return _watcher.watch(when)
