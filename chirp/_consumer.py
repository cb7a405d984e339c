"""The runtime of one worker inside a host: read, run, ack, retry, reclaim, dead-letter.

Where an entry can be, for one worker (its consumer group):

- *new*: in the stream, not yet delivered to the group;
- *running from the stream*: in the group's pending list, owned by one consumer whose
  lease (the entry's idle time) it renews while the handler runs;
- *scheduled*: acked in the group, its id in the retry sorted set, scored with the time
  it is due; while a consumer runs it, the score is the end of that consumer's lease;
- *done*: acked and in no retry set; or *dead*: copied to the dead-letter stream.

Every move between these states is one atomic Redis step, so a host killed at any point
leaves each entry in exactly one of them, and the others pick it up from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from chirp._context import Context
from chirp._errors import ChirpError, DecodeError
from chirp._scripts import CLAIM_DUE, RENEW_PENDING, RENEW_SCHEDULED
from chirp._subscribe import Received, received_from
from chirp._wire import ENVELOPE_FIELD, decode_envelope
from chirp._worker import Worker

if TYPE_CHECKING:
    from chirp._client import Client

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

# Longest XREADGROUP block, and so how long a stop waits for the read to return; also
# the longest sleep of the retry poller.
READ_BLOCK_MS = 1000
# An idle time far beyond any lease, but below "now" so Redis keeps it as given.
HANDBACK_IDLE_MS = 10 * 365 * 24 * 3600 * 1000
_ERROR_PAUSE_SECONDS = 0.5


@dataclass(slots=True)
class _Entry:
    """One stream entry taken for handling, and where it came from."""

    entry_id: str
    data: bytes | None
    scheduled: bool
    attempt: int


@dataclass(slots=True)
class ConsumerStats:
    """What one consumer did since it started."""

    handled: int = 0
    failed: int = 0
    dead: int = 0


class Consumer:
    """Run one worker's handlers for the messages of its consumer group.

    Args:
        worker: The worker to run.
        client: A connected client; handlers get contexts made from it.
        consumer: This consumer's name in the group, unique per host process.
        clock: Seconds since the epoch; schedule times come from it.
    """

    def __init__(
        self,
        worker: Worker[Any],
        client: Client,
        *,
        consumer: str,
        clock: Clock = time.time,
    ) -> None:
        self._worker = worker
        self._client = client
        self._redis = client.redis
        self._consumer = consumer
        self._clock = clock
        names = client.names
        self._stream = names.stream_key(worker.spec.name)
        self._group = worker.name
        self._retry = names.retry_key(worker.name)
        self._attempts = names.attempts_key(worker.name)
        self._owners = names.owners_key(worker.name)
        self._dead = names.dead_letter_key(worker.name)
        self._stats = names.stats_key(worker.name)
        self._lease_ms = int(worker.lease * 1000)
        self._claim_due = self._redis.register_script(CLAIM_DUE)
        self._renew_pending = self._redis.register_script(RENEW_PENDING)
        self._renew_scheduled = self._redis.register_script(RENEW_SCHEDULED)
        self._running: dict[asyncio.Task[None], _Entry] = {}
        self._waiting: deque[_Entry] = deque()
        self._slot_freed = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._acks: list[str] = []
        self._ack_flusher: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._renewer: asyncio.Task[None] | None = None
        self._reclaim_cursor = "0-0"
        self._next_reclaim_ms = 0
        self.stats = ConsumerStats()

    @property
    def name(self) -> str:
        """The worker's name."""
        return self._worker.name

    @property
    def in_flight(self) -> int:
        """Handlers running now."""
        return len(self._running)

    async def start(self) -> None:
        """Create the consumer group if needed and start consuming."""
        await self._ensure_group()
        self._loops = [
            asyncio.create_task(self._guarded(self._read_loop)),
            asyncio.create_task(self._guarded(self._schedule_loop)),
        ]
        self._renewer = asyncio.create_task(self._guarded(self._lease_loop))

    async def stop(self, grace: float) -> None:
        """Stop taking entries, let handlers finish within `grace` seconds, hand back.

        Handlers still running after the grace period are cancelled; their entries, and
        those taken but not started, are handed back at once for another consumer. The
        cancellation does not count as a failed attempt.
        """
        self._stopping.set()
        self._wakeup.set()
        self._slot_freed.set()
        await asyncio.gather(*self._loops, return_exceptions=True)
        unstarted = list(self._waiting)
        self._waiting.clear()
        if self._running:
            await asyncio.wait(list(self._running), timeout=grace)
        leftover = dict(self._running)
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        await self._hand_back([*unstarted, *leftover.values()])
        await self._flush_acks_now()

    # Taking entries ----------------------------------------------------------------

    async def _guarded(self, loop: Callable[[], Any]) -> None:
        """Run a loop until stop; a Redis error pauses it instead of ending it."""
        while not self._stopping.is_set():
            try:
                await loop()
            except (RedisError, OSError) as error:
                logger.warning(
                    "worker %s: Redis call failed, retrying: %s",
                    self.name,
                    error,
                    extra={"worker": self.name},
                )
                await self._pause(_ERROR_PAUSE_SECONDS)
            except Exception:
                # A bug must not silently stop consumption: report it and go on.
                logger.exception(
                    "worker %s: consumer loop failed, restarting it",
                    self.name,
                    extra={"worker": self.name},
                )
                await self._pause(_ERROR_PAUSE_SECONDS)

    async def _read_loop(self) -> None:
        """Take new entries from the stream while handler slots are free."""
        while free := await self._free_slots():
            await self._take_new(min(free, self._worker.batch), READ_BLOCK_MS)

    async def _schedule_loop(self) -> None:
        """Take due retries, and now and then entries idle past their lease.

        Runs beside the blocking read, so a retry starts when it is due, not when the
        read returns; a retry this consumer schedules wakes it up on time.
        """
        while free := await self._free_slots():
            self._wakeup.clear()
            now_ms = self._now_ms()
            next_due_ms, taken = await self._take_due(now_ms, free)
            if free > taken and now_ms >= self._next_reclaim_ms:
                taken += await self._take_idle(free - taken)
            if taken:
                continue
            wait_ms = min(READ_BLOCK_MS, self._next_reclaim_ms - now_ms)
            if next_due_ms is not None:
                wait_ms = min(wait_ms, next_due_ms - now_ms)
            await self._pause(max(wait_ms, 1) / 1000, until=self._wakeup)

    async def _take_new(self, count: int, block_ms: int) -> None:
        try:
            reply: Any = await self._redis.xreadgroup(
                self._group,
                self._consumer,
                {self._stream: ">"},
                count=count,
                block=block_ms,
            )
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self._ensure_group()
            return
        for entry_id, fields in reply[0][1] if reply else []:
            self._take(_Entry(entry_id.decode(), fields.get(ENVELOPE_FIELD), False, 1))

    async def _take_due(self, now_ms: int, free: int) -> tuple[int | None, int]:
        """Start due retries; return when the next is due (or None) and how many ran."""
        reply: Any = await self._claim_due(
            keys=[self._retry, self._attempts, self._owners],
            args=[now_ms, self._lease_ms, free, self._consumer],
        )
        next_due = None if int(reply[0]) < 0 else int(reply[0])
        claimed = reply[1:]
        if not claimed:
            return next_due, 0
        ids = [claimed[i].decode() for i in range(0, len(claimed), 2)]
        failures = [int(claimed[i]) for i in range(1, len(claimed), 2)]
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(self._stream, entry_id, entry_id, count=1)
        replies = await pipe.execute()
        for entry_id, failed, found in zip(ids, failures, replies, strict=True):
            data = found[0][1].get(ENVELOPE_FIELD) if found else None
            entry = _Entry(entry_id, data, True, failed + 1)
            if found:
                self._take(entry)
            else:
                await self._dead_letter(entry, "the stream entry no longer exists")
        return next_due, len(ids)

    async def _take_idle(self, free: int) -> int:
        """Take over entries whose consumer stopped renewing their lease."""
        reply: Any = await self._redis.xautoclaim(
            self._stream,
            self._group,
            self._consumer,
            min_idle_time=self._lease_ms,
            start_id=self._reclaim_cursor,
            count=free,
        )
        self._reclaim_cursor = reply[0].decode()
        if self._reclaim_cursor == "0-0":
            self._next_reclaim_ms = self._now_ms() + self._lease_ms // 2
        entries = [(i.decode(), f) for i, f in reply[1] if f is not None]
        for entry_id, fields in entries:
            self._take(_Entry(entry_id, fields.get(ENVELOPE_FIELD), False, 1))
        if entries:
            logger.info(
                "worker %s: took over %d entries idle longer than the %ss lease",
                self.name,
                len(entries),
                self._worker.lease,
                extra={"worker": self.name},
            )
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:
            await self._count_lost(len(deleted))
        return len(entries)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self._worker.lease / 3)
            await self._renew_leases()

    async def _renew_leases(self) -> None:
        held = [*self._running.values(), *self._waiting]
        from_stream = [e.entry_id for e in held if not e.scheduled]
        scheduled = [e.entry_id for e in held if e.scheduled]
        if from_stream:
            await self._renew_pending(
                keys=[self._stream], args=[self._group, self._consumer, *from_stream]
            )
        if scheduled:
            lease_end = self._now_ms() + self._lease_ms
            await self._renew_scheduled(
                keys=[self._retry, self._owners],
                args=[lease_end, self._consumer, 0, *scheduled],
            )

    # Handling one entry ------------------------------------------------------------

    def _take(self, entry: _Entry) -> None:
        """Queue a taken entry and start it as soon as a handler slot is free."""
        self._waiting.append(entry)
        self._dispatch()

    def _dispatch(self) -> None:
        while (
            self._waiting
            and len(self._running) < self._worker.concurrency
            and not self._stopping.is_set()
        ):
            entry = self._waiting.popleft()
            task = asyncio.create_task(self._handle(entry))
            self._running[task] = entry
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._dispatch()
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "worker %s: bookkeeping of a message failed: %s",
                self.name,
                task.exception(),
                extra={"worker": self.name},
            )

    async def _handle(self, entry: _Entry) -> None:
        try:
            received = self._decode(entry)
        except DecodeError as error:
            await self._dead_letter(entry, str(error))
            return
        ctx = self._context(received, entry)
        started = time.perf_counter()
        try:
            await self._worker.fn(ctx, received.body)
        except Exception as error:
            await self._failed(entry, received, error)
            return
        self._log_done(entry, received, time.perf_counter() - started)
        await self._succeeded(entry)

    def _decode(self, entry: _Entry) -> Received[Any]:
        where = "the stream entry"
        if entry.data is None:
            raise DecodeError(f"{where} has no {ENVELOPE_FIELD.decode()!r} field")
        envelope = decode_envelope(entry.data, where=where)
        return received_from(self._worker.spec, envelope, where=where)

    def _context(self, received: Received[Any], entry: _Entry) -> Context:
        return Context(
            self._client,
            name=self._worker.name,
            ray_id=received.ray_id,
            request_id=received.request_id,
            trace=received.trace,
            ts=self._now_ms(),
            req_ts=received.ts,
            attempt=entry.attempt,
        )

    def _log_done(self, entry: _Entry, received: Received[Any], took: float) -> None:
        self.stats.handled += 1
        logger.debug(
            "worker %s handled %s %s (attempt %d) in %.1fms",
            self.name,
            received.name,
            entry.entry_id,
            entry.attempt,
            took * 1000,
            extra={
                "worker": self.name,
                "ray_id": received.ray_id,
                "request_id": received.request_id,
                "attempt": entry.attempt,
            },
        )

    async def _succeeded(self, entry: _Entry) -> None:
        if not entry.scheduled:
            self._ack(entry.entry_id)
            return
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self._retry, entry.entry_id)
        pipe.hdel(self._attempts, entry.entry_id)
        pipe.hdel(self._owners, entry.entry_id)
        await pipe.execute()

    async def _failed(
        self, entry: _Entry, received: Received[Any], error: Exception
    ) -> None:
        self.stats.failed += 1
        extra = {
            "worker": self.name,
            "ray_id": received.ray_id,
            "request_id": received.request_id,
            "attempt": entry.attempt,
        }
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
            extra=extra,
            # The first failure shows where it came from; later ones only say it again.
            exc_info=entry.attempt == 1 and not isinstance(error, ChirpError),
        )
        await self._schedule(entry, self._now_ms() + int(delay * 1000))
        asyncio.get_running_loop().call_later(delay, self._wakeup.set)

    async def _schedule(self, entry: _Entry, due_ms: int) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.zadd(self._retry, {entry.entry_id: due_ms})
        pipe.hset(self._attempts, entry.entry_id, entry.attempt)
        pipe.hdel(self._owners, entry.entry_id)
        pipe.hincrby(self._stats, "retries", 1)
        if not entry.scheduled:
            pipe.xack(self._stream, self._group, entry.entry_id)
        await pipe.execute()

    async def _dead_letter(self, entry: _Entry, reason: str) -> None:
        self.stats.dead += 1
        logger.error(
            "worker %s: dead-lettered entry %s: %s",
            self.name,
            entry.entry_id,
            reason,
            extra={"worker": self.name, "attempt": entry.attempt},
        )
        fields: dict[str, str | bytes | int] = {
            "entry_id": entry.entry_id,
            "stream": self._stream,
            "worker": self.name,
            "reason": reason,
            "attempts": entry.attempt,
            "ts": self._now_ms(),
        }
        if entry.data is not None:
            fields["envelope"] = entry.data
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(self._dead, fields)  # type: ignore[arg-type]
        pipe.xack(self._stream, self._group, entry.entry_id)
        pipe.zrem(self._retry, entry.entry_id)
        pipe.hdel(self._attempts, entry.entry_id)
        pipe.hdel(self._owners, entry.entry_id)
        pipe.hincrby(self._stats, "dead_letters", 1)
        await pipe.execute()

    async def _count_lost(self, count: int) -> None:
        logger.warning(
            "worker %s: %d pending entries were deleted from %s before handling",
            self.name,
            count,
            self._stream,
            extra={"worker": self.name},
        )
        await self._redis.hincrby(self._stats, "lost", count)

    # Acks and hand-back ------------------------------------------------------------

    def _ack(self, entry_id: str) -> None:
        """Queue an ack; acks of handlers finishing together share one XACK."""
        self._acks.append(entry_id)
        if self._ack_flusher is None:
            self._ack_flusher = asyncio.create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        try:
            while self._acks:
                ids, self._acks = self._acks, []
                try:
                    await self._redis.xack(self._stream, self._group, *ids)
                except (RedisError, OSError) as error:
                    # Unacked entries are redelivered after the lease: at least once.
                    logger.warning(
                        "worker %s: acking %d entries failed; they will be "
                        "redelivered: %s",
                        self.name,
                        len(ids),
                        error,
                        extra={"worker": self.name},
                    )
        finally:
            self._ack_flusher = None

    async def _flush_acks_now(self) -> None:
        if self._ack_flusher is not None:
            await self._ack_flusher

    async def _hand_back(self, entries: list[_Entry]) -> None:
        """Make cancelled entries available to other consumers at once."""
        from_stream: list[str | bytes | int | memoryview] = [
            e.entry_id for e in entries if not e.scheduled
        ]
        scheduled = [e.entry_id for e in entries if e.scheduled]
        try:
            if from_stream:
                await self._redis.xclaim(
                    self._stream,
                    self._group,
                    self._consumer,
                    0,
                    from_stream,
                    idle=HANDBACK_IDLE_MS,
                    justid=True,
                )
            if scheduled:
                await self._renew_scheduled(
                    keys=[self._retry, self._owners],
                    args=[self._now_ms(), self._consumer, 1, *scheduled],
                )
        except (RedisError, OSError) as error:
            logger.warning(
                "worker %s: handing back %d entries failed; they return after "
                "the lease: %s",
                self.name,
                len(entries),
                error,
                extra={"worker": self.name},
            )
        if entries:
            logger.info(
                "worker %s: handed back %d unfinished entries",
                self.name,
                len(entries),
                extra={"worker": self.name},
            )

    # Helpers -----------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(
                self._stream, self._group, id="0", mkstream=True
            )
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _free_slots(self) -> int:
        """Wait for a free handler slot; return how many are free, 0 once stopping.

        Entries taken but not yet started count as taken: two loops may each fill the
        slots they saw free, and the surplus waits its turn instead of overshooting.
        """
        while not self._stopping.is_set():
            free = self._worker.concurrency - len(self._running) - len(self._waiting)
            if free > 0:
                return free
            self._slot_freed.clear()
            await self._slot_freed.wait()
        return 0

    async def _pause(self, seconds: float, until: asyncio.Event | None = None) -> None:
        """Sleep up to `seconds`, or until `until` is set (by default: a stop)."""
        event = self._stopping if until is None else until
        try:
            await asyncio.wait_for(event.wait(), timeout=seconds)
        except TimeoutError:
            pass

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
