"""The handler slots of one consumer: runner tasks that handle taken entries.

A task per message would cost more than a no-op handler itself. Instead, at most
`concurrency` runner tasks each handle one entry after another. One runner works
through the queue; whenever it yields to the event loop (its handler awaits something)
while entries still wait, more runners are woken or started for them. Handlers that
never wait so cost no task switch at all, and handlers that do wait still run
`concurrency` at a time.

A context variable a handler sets and does not reset is seen by the next message its
runner handles.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from chirp._store import Taken

logger = logging.getLogger(__name__)


class Runners:
    """Queue taken entries and handle them on at most `concurrency` runner tasks.

    Args:
        handle: Handles one entry and records its outcome; called by a runner.
        concurrency: Most entries handled at once.
        worker: The worker's name, for logs.
        progress: Called each time an entry has been handled.
    """

    def __init__(
        self,
        handle: Callable[[Taken], Awaitable[None]],
        *,
        concurrency: int,
        worker: str,
        progress: Callable[[], None],
    ) -> None:
        self._handle = handle
        self._concurrency = concurrency
        self._worker = worker
        self._progress = progress
        self._waiting: deque[Taken] = deque()
        # Busy runners and the entry each handles; all runners; idle runners' wake-ups.
        self._running: dict[asyncio.Task[None], Taken] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._idle: list[asyncio.Future[None]] = []
        # Runners woken or started that have not yet looked at the queue.
        self._starting = 0
        self._yield_watch = False
        self._slot_freed = asyncio.Event()
        self._stopping = False

    @property
    def in_flight(self) -> int:
        """Entries being handled now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Entries taken and not yet started."""
        return len(self._waiting)

    def held(self) -> list[Taken]:
        """Return every entry taken and not yet finished: leases to renew."""
        return [*self._running.values(), *self._waiting]

    async def free_slots(self) -> int:
        """Wait for a free slot; return how many are free, 0 once stopping.

        Entries taken but not yet started count as taken: two loops may each fill the
        slots they saw free, and the surplus waits its turn instead of overshooting.
        """
        while not self._stopping:
            free = self._concurrency - len(self._running) - len(self._waiting)
            if free > 0:
                return free
            self._slot_freed.clear()
            await self._slot_freed.wait()
        return 0

    def take(self, entries: list[Taken]) -> None:
        """Queue taken entries; a runner starts on them unless one is about to."""
        if entries:
            self._waiting.extend(entries)
            if not self._starting and not self._stopping:
                self._wake(1)

    def stop(self) -> None:
        """Start no more entries, and release the loops waiting for a free slot."""
        self._stopping = True
        self._slot_freed.set()
        for idle in self._idle:
            idle.set_result(None)
        self._idle.clear()

    def unstarted(self) -> list[Taken]:
        """Return, and forget, the entries taken and never started."""
        unstarted = list(self._waiting)
        self._waiting.clear()
        return unstarted

    async def finish(self, grace: float) -> list[Taken]:
        """Let running handlers finish within `grace` seconds, cancel the rest.

        Returns:
            The entries whose handlers were cancelled.
        """
        if self._running:
            await asyncio.wait(list(self._running), timeout=grace)
        leftover = list(self._running.values())
        for task in self._runners:
            task.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        self._runners.clear()
        return leftover

    def _wake(self, wanted: int) -> None:
        """Wake idle runners, or start new ones within the concurrency, for entries."""
        while wanted > 0 and self._idle:
            self._idle.pop().set_result(None)
            self._starting += 1
            wanted -= 1
        spare = self._concurrency - len(self._runners)
        for _ in range(min(wanted, spare)):
            task = asyncio.get_running_loop().create_task(self._runner())
            self._runners.add(task)
            task.add_done_callback(self._runners.discard)
            self._starting += 1

    def _on_yield(self) -> None:
        """Called once a runner yielded to the loop: get runners for what waits."""
        self._yield_watch = False
        unserved = len(self._waiting) - self._starting
        if unserved > 0 and not self._stopping:
            self._wake(unserved)

    async def _runner(self) -> None:
        """Handle waiting entries one after another; wait idle when there are none."""
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        self._starting -= 1
        while not self._stopping:
            if not self._waiting:
                idle: asyncio.Future[None] = loop.create_future()
                self._idle.append(idle)
                await idle
                self._starting -= 1
                continue
            entry = self._waiting.popleft()
            if self._waiting and not self._yield_watch:
                # Runs as soon as this runner yields: if its handler waits, the rest
                # of the queue gets runners of its own.
                self._yield_watch = True
                loop.call_soon(self._on_yield)
            self._running[task] = entry
            try:
                await self._handle(entry)
            except asyncio.CancelledError:
                if task.cancelling():
                    raise  # the host stops: the entry is handed back
                self._outcome_lost(entry, "a cancellation that escaped the handler")
            except Exception as error:
                self._outcome_lost(entry, f"{type(error).__name__}: {error}")
            finally:
                del self._running[task]
                self._progress()
                self._slot_freed.set()

    def _outcome_lost(self, entry: Taken, why: str) -> None:
        # The entry stays leased to nobody: it returns after the lease.
        logger.error(
            "worker %s: recording the outcome of %s failed: %s",
            self._worker,
            entry.entry_id,
            why,
            extra={"worker": self._worker},
        )
