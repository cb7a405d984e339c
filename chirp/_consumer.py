"""The runtime of one worker inside a host: take entries, run handlers, record outcomes.

The states an entry moves through, and the atomic steps between them, are described in
`chirp._store`. This module decides when to take which step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import MessageToJson
from redis.exceptions import RedisError

from chirp._acks import Acks
from chirp._context import Context
from chirp._errors import ChirpError, DecodeError
from chirp._metrics import WorkerMetrics
from chirp._refusals import Refusals
from chirp._runners import Runners
from chirp._schema import failure_for
from chirp._store import Taken, WorkerStore
from chirp._subscribe import Received, received_from
from chirp._tracing import active as tracing_active
from chirp._tracing import handle_span
from chirp._wire import ENVELOPE_FIELD, decode_envelope
from chirp._worker import Worker

if TYPE_CHECKING:
    from chirp._client import Client

logger = logging.getLogger(__name__)
# One line per handled message, at INFO: its own logger, so it can be turned down.
handled_logger = logging.getLogger("chirp.handled")

Clock = Callable[[], float]

# Longest XREADGROUP block, and so how long a stop waits for the read to return; also
# the longest sleep of the schedule loop.
READ_BLOCK_MS = 1000
_ERROR_PAUSE_SECONDS = 0.5
# Consumers idle this long and holding nothing (crashed hosts) leave their group.
FORGET_AFTER_MS = 60_000
# Longest wait for the lease renewer to end once the host stops.
STOP_TIMEOUT_SECONDS = 2.0
# Least time without progress before liveness fails; twice the lease when longer.
STALL_FLOOR_SECONDS = 10.0
# How soon a message whose idempotency key another handler holds is looked at again.
BUSY_KEY_RECHECK_MS = 1000


class Consumer:
    """Run one worker's handlers for the messages of its consumer group.

    Two loops fill the free handler slots: the read loop takes new entries from the
    stream, the schedule loop takes due retries and entries whose lease ran out.
    Taken entries wait in a local queue, still leased, for a runner (`Runners`).

    Args:
        worker: The worker to run.
        client: A connected client; handlers get contexts made from it.
        consumer: This consumer's name in the group, unique per host process.
        clock: Seconds since the epoch; schedule times come from it. By default the
            event loop's clock, set to the epoch when the consumer starts, so that a
            test loop with fake time moves retries and leases along with its timers.
    """

    def __init__(
        self,
        worker: Worker[Any],
        client: Client,
        *,
        consumer: str,
        clock: Clock | None = None,
    ) -> None:
        self._worker = worker
        self._client = client
        self._consumer = consumer
        self._clock: Clock = clock or time.time
        self._own_clock = clock is None
        self._store = WorkerStore(
            client.redis, client.names, worker=worker.name, message=worker.spec.name
        )
        self._lease_ms = int(worker.lease * 1000)
        self._runners = Runners(
            self._handle,
            concurrency=worker.concurrency,
            worker=worker.name,
            progress=self._note_progress,
        )
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._acks = Acks(self._store, worker.name)
        self._loops: list[asyncio.Task[None]] = []
        self._renewer: asyncio.Task[None] | None = None
        self._reclaim_cursor = "0-0"
        self._next_reclaim_ms = 0
        # When a loop last heard from Redis or a handler last finished (monotonic).
        self.last_progress = time.monotonic()
        self._metrics = WorkerMetrics(worker.name, worker.spec.name)
        # What handling needs beyond the handler call, looked at per batch (`_take`).
        self._traced = False
        self._log_bodies = False
        self._log_handled = False
        # Bound once: every handled message uses them.
        self._fn = worker.fn
        self._ok = self._metrics.ok
        self._handler_seconds = self._metrics.handler_seconds
        self._receive_lag = self._metrics.receive_lag
        self._refusals = Refusals(worker)

    @property
    def name(self) -> str:
        """The worker's name."""
        return self._worker.name

    @property
    def stall_limit(self) -> float:
        """Seconds without progress after which the consumer counts as stuck."""
        return max(STALL_FLOOR_SECONDS, 2 * self._worker.lease)

    def liveness(self, now: float) -> dict[str, Any]:
        """Tell whether the consumer still consumes, with the facts behind it.

        Args:
            now: `time.monotonic()` now.
        """
        loops_running = bool(self._loops) and not any(t.done() for t in self._loops)
        quiet = now - self.last_progress
        return {
            "alive": loops_running and quiet < self.stall_limit,
            "loops_running": loops_running,
            "seconds_since_progress": round(quiet, 3),
            "in_flight": self._runners.in_flight,
            "waiting": self._runners.waiting,
        }

    async def levels(self) -> dict[str, int]:
        """Return the worker's pending, lag, scheduled and dead-letter counts now."""
        return await self._store.levels()

    async def start(self) -> None:
        """Create the consumer group if needed and start consuming."""
        if self._own_clock:
            self._clock = _loop_clock(asyncio.get_running_loop())
        await self._store.ensure_group()
        self._loops = [
            asyncio.create_task(self._guarded(self._read_loop)),
            asyncio.create_task(self._guarded(self._schedule_loop)),
        ]
        self._renewer = asyncio.create_task(
            self._guarded(self._lease_loop, until=self._done)
        )

    async def stop(self, grace: float) -> None:
        """Stop taking entries, let handlers finish within `grace` seconds, hand back.

        Handlers still running after the grace period are cancelled; their entries, and
        those taken but not started, are handed back at once for another consumer. The
        cancellation does not count as a failed attempt.
        """
        self._stopping.set()
        self._wakeup.set()
        self._runners.stop()
        await asyncio.gather(*self._loops, return_exceptions=True)
        # Taken after the loops ended: a read under way when the stop came counts.
        unstarted = self._runners.unstarted()
        leftover = await self._runners.finish(grace)
        self._done.set()
        if self._renewer is not None:
            # Cancelled and awaited with a bound: a cancellation that a client
            # library swallows must not keep the host from stopping.
            self._renewer.cancel()
            await asyncio.wait([self._renewer], timeout=STOP_TIMEOUT_SECONDS)
        await self._hand_back([*unstarted, *leftover])
        await self._acks.flushed()
        try:
            await self._store.leave(self._consumer)
        except (RedisError, OSError) as error:
            logger.warning(
                "worker %s: leaving the consumer group failed: %s",
                self.name,
                error,
                extra={"worker": self.name},
            )

    # Taking entries ----------------------------------------------------------------

    async def _guarded(
        self, loop: Callable[[], Any], until: asyncio.Event | None = None
    ) -> None:
        """Run a loop until `until` (a stop) is set; an error pauses it, not ends it."""
        end = self._stopping if until is None else until
        while not end.is_set():
            try:
                await loop()
            except Exception as error:
                # redis-py may turn a cancellation into its own error; honour it.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from None
                await self._recover(error)

    async def _recover(self, error: Exception) -> None:
        """Report a failed loop step and pause before the next."""
        if isinstance(error, RedisError | OSError):
            logger.warning(
                "worker %s: Redis call failed, retrying: %s",
                self.name,
                error,
                extra={"worker": self.name},
            )
        else:
            # A bug must not silently stop consumption: report it and go on.
            logger.error(
                "worker %s: consumer loop failed, restarting it",
                self.name,
                exc_info=error,
                extra={"worker": self.name},
            )
        await self._pause(_ERROR_PAUSE_SECONDS)

    async def _read_loop(self) -> None:
        """Take new entries from the stream while handler slots are free."""
        while free := await self._free_slots():
            count = min(free, self._worker.batch)
            taken = await self._store.read_new(self._consumer, count, READ_BLOCK_MS)
            self.last_progress = time.monotonic()
            self._take(taken)
            if 0 < len(taken) < count:
                # No backlog, so latency counts: let the runners start before the
                # next read is sent. With a backlog, the read overlaps the handlers.
                await asyncio.sleep(0)

    async def _schedule_loop(self) -> None:
        """Take due retries, and now and then entries idle past their lease.

        Runs beside the blocking read, so a retry starts when it is due, not when the
        read returns; a retry this consumer schedules wakes it up on time.
        """
        while free := await self._free_slots():
            self._wakeup.clear()
            now_ms = self._now_ms()
            next_due_ms, due = await self._store.claim_due(
                self._consumer, now_ms, self._lease_ms, free
            )
            self.last_progress = time.monotonic()
            self._take(due)
            taken = len(due)
            if free > taken and now_ms >= self._next_reclaim_ms:
                taken += await self._take_idle(free - taken)
            if taken:
                continue
            wait_ms = min(READ_BLOCK_MS, self._next_reclaim_ms - now_ms)
            if next_due_ms is not None:
                wait_ms = min(wait_ms, next_due_ms - now_ms)
            await self._pause(max(wait_ms, 1) / 1000, until=self._wakeup)

    def _take(self, entries: list[Taken]) -> None:
        """Queue taken entries for the runners; see what handling them needs.

        Whether spans are recorded and which log lines are on is asked once per batch,
        not once per message: the three questions cost a tenth of handling a message.
        A tracer provider or a log level set now applies from the next batch.
        """
        if entries:
            self._traced = tracing_active()
            self._log_bodies = logger.isEnabledFor(logging.DEBUG)
            self._log_handled = handled_logger.isEnabledFor(logging.INFO)
            self._runners.take(entries)

    async def _take_idle(self, free: int) -> int:
        """Take over entries whose consumer stopped renewing their lease."""
        cursor, taken, vanished = await self._store.take_idle(
            self._consumer, self._reclaim_cursor, self._lease_ms, free
        )
        self._reclaim_cursor = cursor
        if cursor == "0-0":
            self._next_reclaim_ms = self._now_ms() + self._lease_ms // 2
            await self._store.forget_idle(max(FORGET_AFTER_MS, 10 * self._lease_ms))
        self._take(taken)
        if taken or vanished:
            logger.info(
                "worker %s: took over %d entries idle past the %ss lease "
                "(%d more had been deleted from the stream)",
                self.name,
                len(taken),
                self._worker.lease,
                vanished,
                extra={"worker": self.name},
            )
        return len(taken)

    async def _lease_loop(self) -> None:
        # Runs on through a stop's grace period: handlers still running need it.
        while not self._done.is_set():
            await self._pause(self._worker.lease / 3, until=self._done)
            held = self._runners.held()
            if held:
                await self._store.renew(
                    self._consumer,
                    held,
                    lease_end_ms=self._now_ms() + self._lease_ms,
                    lease_ms=self._lease_ms,
                )

    # Handling one entry ------------------------------------------------------------

    def _note_progress(self) -> None:
        self.last_progress = time.monotonic()

    async def _handle(self, entry: Taken) -> None:
        """Decode an entry and run it (dead-letter it if it does not decode)."""
        try:
            received = self._decode(entry)
        except DecodeError as error:
            await self._dead_letter(entry, str(error))
            return
        if self._traced:
            await self._run_traced(entry, received)
        else:
            await self._run(entry, received)

    async def _run_traced(self, entry: Taken, received: Received[Any]) -> None:
        span = handle_span(self.name, received.name, received.ray_id, entry.otel or {})
        with span:
            await self._run(entry, received)

    async def _run(self, entry: Taken, received: Received[Any]) -> None:
        """Run a decoded message: refuse it, skip a duplicate, or call the handler."""
        now = self._clock()
        ctx = Context.for_message(
            self._client, self._worker.name, received, entry, int(now * 1000)
        )
        if self._refusals.possible:
            refusal = self._refusals.check(entry.data, received, now)
            if refusal is not None:
                await self._refuse(entry, ctx, received, *refusal)
                return
        if entry.idempotency_key and not await self._claim_key(entry, received):
            return
        lag = now - received.ts / 1000
        self._receive_lag.observe(lag if lag > 0.0 else 0.0)
        if self._log_bodies:
            self._log_body(received)
        started = time.perf_counter()
        try:
            await self._fn(ctx, received.body)
        except (Exception, asyncio.CancelledError) as error:
            task = asyncio.current_task()
            if isinstance(error, asyncio.CancelledError) and (
                task is None or task.cancelling()
            ):
                raise  # the host stops, not the handler
            # A handler that let a cancellation of its own escape failed like any.
            self._handler_seconds.observe(time.perf_counter() - started)
            await self._failed(entry, received, error)
            return
        took = time.perf_counter() - started
        self._handler_seconds.observe(took)
        self._ok.inc()
        if self._log_handled:
            self._log_done(entry, received, took)
        if entry.idempotency_key or entry.scheduled:
            await self._succeeded(entry)
        else:
            self._acks.add(entry.raw_id)

    async def _refuse(
        self, entry: Taken, ctx: Context, received: Received[Any], code: str, why: str
    ) -> None:
        """Answer a refused message with the worker's failure, or dead-letter it."""
        failure = self._worker.failure
        if failure is None:
            await self._dead_letter(entry, f"{code}: {why}")
            return
        logger.warning(
            "worker %s refused %s: %s",
            self.name,
            entry.entry_id,
            why,
            extra={"worker": self.name, "ray_id": received.ray_id, "code": code},
        )
        await ctx.msg(failure_for(failure.cls, received.body, code=code, text=why))
        await self._store.count(code)
        self._metrics.refused.inc()
        await self._succeeded(entry)

    def _decode(self, entry: Taken) -> Received[Any]:
        where = "the stream entry"
        if entry.data is None:
            raise DecodeError(f"{where} has no {ENVELOPE_FIELD.decode()!r} field")
        envelope = decode_envelope(entry.data, where=where)
        entry.idempotency_key = envelope.idempotency_key
        if envelope.otel:
            entry.otel = dict(envelope.otel)
        return received_from(self._worker.spec, envelope, where=where)

    async def _claim_key(self, entry: Taken, received: Received[Any]) -> bool:
        """Claim the entry's idempotency key; False if it must not run now."""
        key = entry.idempotency_key
        state = await self._store.claim_key(entry, self._consumer, self._lease_ms)
        if state == "claimed":
            return True
        entry.idempotency_key = ""  # not ours: neither renew nor release it
        if state == "done":
            self._metrics.duplicate.inc()
            logger.info(
                "worker %s: skipped %s %s: key %r was completed already",
                self.name,
                received.name,
                entry.entry_id,
                key,
                extra={"worker": self.name, "ray_id": received.ray_id},
            )
            await self._store.count("duplicates")
            await self._succeeded(entry)
            return False
        # Another handler runs the same key right now: look again soon, and until it
        # has finished or its lease has run out.
        due_ms = self._now_ms() + min(self._lease_ms // 4, BUSY_KEY_RECHECK_MS)
        await self._store.schedule(
            entry, due_ms=due_ms, failed=entry.attempt - 1, counts_as_retry=False
        )
        asyncio.get_running_loop().call_later(
            (due_ms - self._now_ms()) / 1000, self._wakeup.set
        )
        return False

    def _log_body(self, received: Received[Any]) -> None:
        body = "<sensitive>"
        if not self._worker.spec.sensitive:
            body = MessageToJson(received.body, indent=None)
        logger.debug(
            "worker %s received %s: %s",
            self.name,
            received.name,
            body,
            extra={"worker": self.name, "ray_id": received.ray_id},
        )

    def _log_done(self, entry: Taken, received: Received[Any], took: float) -> None:
        handled_logger.info(
            "worker %s handled %s %s (attempt %d) in %.1fms",
            self.name,
            received.name,
            entry.entry_id,
            entry.attempt,
            took * 1000,
            extra={
                "worker": self.name,
                "context": self.name,
                "ray_id": received.ray_id,
                "request_id": received.request_id,
                "attempt": entry.attempt,
                "outcome": "ok",
            },
        )

    async def _succeeded(self, entry: Taken) -> None:
        if entry.idempotency_key:
            window_ms = int(self._worker.idempotency_window * 1000)
            await self._store.key_done(entry.idempotency_key, window_ms)
        if entry.scheduled:
            await self._store.complete_retry(entry.entry_id)
        else:
            self._acks.add(entry.raw_id)

    async def _failed(
        self, entry: Taken, received: Received[Any], error: BaseException
    ) -> None:
        if entry.idempotency_key:
            await self._store.release_key(entry, self._consumer)
        if self._worker.backoff.gives_up_after(entry.attempt):
            reason = f"gave up after attempt {entry.attempt}: {_describe(error)}"
            await self._dead_letter(entry, reason)
            return
        delay = self._worker.backoff.delay(entry.attempt)
        logger.warning(
            "worker %s: %s %s failed on attempt %d, retrying in %.2fs: %s",
            self.name,
            received.name,
            entry.entry_id,
            entry.attempt,
            delay,
            _describe(error),
            extra={
                "worker": self.name,
                "ray_id": received.ray_id,
                "request_id": received.request_id,
                "attempt": entry.attempt,
            },
            # The first failure shows where it came from; later ones only say it again.
            exc_info=entry.attempt == 1 and not isinstance(error, ChirpError),
        )
        due_ms = self._now_ms() + int(delay * 1000)
        await self._store.schedule(entry, due_ms=due_ms, failed=entry.attempt)
        self._metrics.retry.inc()
        asyncio.get_running_loop().call_later(delay, self._wakeup.set)

    async def _dead_letter(self, entry: Taken, reason: str) -> None:
        self._metrics.dead.inc()
        logger.error(
            "worker %s: dead-lettered entry %s: %s",
            self.name,
            entry.entry_id,
            reason,
            extra={"worker": self.name, "attempt": entry.attempt},
        )
        await self._store.dead_letter(entry, reason=reason, now_ms=self._now_ms())

    # Hand-back ---------------------------------------------------------------------

    async def _hand_back(self, entries: list[Taken]) -> None:
        """Make unfinished entries available to other consumers at once."""
        if not entries:
            return
        try:
            await self._store.hand_back(self._consumer, entries, now_ms=self._now_ms())
        except (RedisError, OSError) as error:
            logger.warning(
                "worker %s: handing back %d entries failed; they return after "
                "the lease: %s",
                self.name,
                len(entries),
                error,
                extra={"worker": self.name},
            )
            return
        logger.info(
            "worker %s: handed back %d unfinished entries",
            self.name,
            len(entries),
            extra={"worker": self.name},
        )

    # Helpers -----------------------------------------------------------------------

    async def _free_slots(self) -> int:
        """Wait for a free handler slot; return how many are free, 0 once stopping."""
        if self._stopping.is_set():
            return 0
        return await self._runners.free_slots()

    async def _pause(self, seconds: float, until: asyncio.Event | None = None) -> None:
        """Sleep up to `seconds`, or until `until` is set (by default: a stop)."""
        event = self._stopping if until is None else until
        try:
            await asyncio.wait_for(event.wait(), timeout=seconds)
        except TimeoutError:
            pass

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _loop_clock(loop: asyncio.AbstractEventLoop) -> Clock:
    """Return epoch seconds that advance with `loop.time()`."""
    offset = time.time() - loop.time()
    return lambda: loop.time() + offset


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
