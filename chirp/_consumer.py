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

# How long one XREADGROUP blocks: also how long a stop waits for the read to return.
READ_BLOCK_MS = 1000
# Longest sleep of the retry poller when nothing is due sooner.
RETRY_POLL_SECONDS = 1.0
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
        self._reserved = 0
        self._slot_freed = asyncio.Event()
        self._retry_wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._acks: list[str] = []
        self._ack_flusher: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
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
        """Create the consumer group if needed and start reading."""
        await self._ensure_group()
        self._loops = [
            asyncio.create_task(self._guarded(self._read_loop), name="read"),
            asyncio.create_task(self._guarded(self._retry_loop), name="retry"),
            asyncio.create_task(self._guarded(self._reclaim_loop), name="reclaim"),
            asyncio.create_task(self._guarded(self._lease_loop), name="lease"),
        ]

    async def stop(self, grace: float) -> None:
        """Stop reading, let handlers finish within `grace` seconds, hand back the rest.

        Handlers still running after the grace period are cancelled; their entries are
        handed back at once for another consumer, and the cancellation does not count as
        a failed attempt.
        """
        self._stopping.set()
        self._retry_wakeup.set()
        self._slot_freed.set()
        await asyncio.gather(*self._loops[:3], return_exceptions=True)
        if self._running:
            await asyncio.wait(list(self._running), timeout=grace)
        leftover = dict(self._running)
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        self._loops[3].cancel()
        await asyncio.gather(self._loops[3], return_exceptions=True)
        await self._hand_back(list(leftover.values()))
        await self._flush_acks_now()

    # Loops -------------------------------------------------------------------------

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

    async def _read_loop(self) -> None:
        while not self._stopping.is_set():
            reserved = await self._reserve(self._worker.batch)
            if reserved == 0:
                continue
            try:
                reply = await self._read(reserved)
            finally:
                self._release(reserved)
            for entry_id, fields in reply:
                self._start(_Entry(entry_id, fields.get(ENVELOPE_FIELD), False, 1))

    async def _read(self, count: int) -> list[tuple[str, dict[bytes, bytes]]]:
        try:
            reply: Any = await self._redis.xreadgroup(
                self._group,
                self._consumer,
                {self._stream: ">"},
                count=count,
                block=READ_BLOCK_MS,
            )
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self._ensure_group()
            return []
        if not reply:
            return []
        return [(i.decode(), f) for i, f in reply[0][1]]

    async def _retry_loop(self) -> None:
        while not self._stopping.is_set():
            reserved = await self._reserve(self._worker.batch)
            if reserved == 0:
                continue
            now_ms = self._now_ms()
            try:
                claimed = await self._claim_due(
                    keys=[self._retry, self._attempts, self._owners],
                    args=[now_ms, self._lease_ms, reserved, self._consumer],
                )
                entries = await self._fetch_scheduled(claimed)
            finally:
                self._release(reserved)
            for entry in entries:
                self._start(entry)
            if not claimed:
                await self._sleep_until_next_due(now_ms)

    async def _fetch_scheduled(self, claimed: list[bytes]) -> list[_Entry]:
        """Read the stream entries of claimed retries; dead-letter the vanished ones."""
        if not claimed:
            return []
        ids = [claimed[i].decode() for i in range(0, len(claimed), 2)]
        failures = [int(claimed[i]) for i in range(1, len(claimed), 2)]
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(self._stream, entry_id, entry_id, count=1)
        replies = await pipe.execute()
        entries = []
        for entry_id, failed, reply in zip(ids, failures, replies, strict=True):
            data = reply[0][1].get(ENVELOPE_FIELD) if reply else None
            entry = _Entry(entry_id, data, True, failed + 1)
            if reply:
                entries.append(entry)
            else:
                await self._dead_letter(entry, "the stream entry no longer exists")
        return entries

    async def _sleep_until_next_due(self, now_ms: int) -> None:
        first: Any = await self._redis.zrange(self._retry, 0, 0, withscores=True)
        wait = RETRY_POLL_SECONDS
        if first:
            wait = min(wait, max(0.0, (first[0][1] - now_ms) / 1000))
        self._retry_wakeup.clear()
        await self._pause(wait, wake=self._retry_wakeup)

    async def _reclaim_loop(self) -> None:
        cursor = "0-0"
        while not self._stopping.is_set():
            reserved = await self._reserve(self._worker.batch)
            if reserved == 0:
                continue
            try:
                cursor, entries, deleted = await self._autoclaim(cursor, reserved)
            finally:
                self._release(reserved)
            for entry_id, fields in entries:
                self._start(_Entry(entry_id, fields.get(ENVELOPE_FIELD), False, 1))
            if deleted:
                await self._count_lost(deleted)
            if cursor == "0-0":
                await self._pause(self._worker.lease / 2)

    async def _autoclaim(
        self, cursor: str, count: int
    ) -> tuple[str, list[tuple[str, dict[bytes, bytes]]], list[str]]:
        reply: Any = await self._redis.xautoclaim(
            self._stream,
            self._group,
            self._consumer,
            min_idle_time=self._lease_ms,
            start_id=cursor,
            count=count,
        )
        next_cursor = reply[0].decode()
        entries = [(i.decode(), f) for i, f in reply[1] if f is not None]
        deleted = [i.decode() for i in reply[2]] if len(reply) > 2 else []
        if entries:
            logger.info(
                "worker %s: took over %d entries idle longer than the %ss lease",
                self.name,
                len(entries),
                self._worker.lease,
                extra={"worker": self.name},
            )
        return next_cursor, entries, deleted

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self._worker.lease / 3)
            await self._renew_leases()

    async def _renew_leases(self) -> None:
        from_stream = [e.entry_id for e in self._running.values() if not e.scheduled]
        scheduled = [e.entry_id for e in self._running.values() if e.scheduled]
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

    def _start(self, entry: _Entry) -> None:
        task = asyncio.create_task(self._handle(entry))
        self._running[task] = entry
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
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
        where = f"{self._stream} entry {entry.entry_id}"
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
            exc_info=not isinstance(error, ChirpError),
        )
        await self._schedule(entry, self._now_ms() + int(delay * 1000))

    async def _schedule(self, entry: _Entry, due_ms: int) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.zadd(self._retry, {entry.entry_id: due_ms})
        pipe.hset(self._attempts, entry.entry_id, entry.attempt)
        pipe.hdel(self._owners, entry.entry_id)
        pipe.hincrby(self._stats, "retries", 1)
        if not entry.scheduled:
            pipe.xack(self._stream, self._group, entry.entry_id)
        await pipe.execute()
        self._retry_wakeup.set()

    async def _dead_letter(self, entry: _Entry, reason: str) -> None:
        self.stats.dead += 1
        logger.error(
            "worker %s: dead-lettered %s %s: %s",
            self.name,
            self._stream,
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

    async def _count_lost(self, deleted: list[str]) -> None:
        logger.warning(
            "worker %s: %d pending entries were deleted from %s before handling",
            self.name,
            len(deleted),
            self._stream,
            extra={"worker": self.name},
        )
        await self._redis.hincrby(self._stats, "lost", len(deleted))

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
        from_stream = [e.entry_id for e in entries if not e.scheduled]
        scheduled = [e.entry_id for e in entries if e.scheduled]
        try:
            if from_stream:
                await self._redis.xclaim(
                    self._stream,
                    self._group,
                    self._consumer,
                    0,
                    list[Any](from_stream),
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

    async def _reserve(self, most: int) -> int:
        """Wait for free handler slots and reserve up to `most`; 0 once stopping.

        Each loop reserves before its Redis call and releases right before starting the
        entries it got, so loops running side by side never exceed the concurrency.
        """
        while not self._stopping.is_set():
            free = self._worker.concurrency - len(self._running) - self._reserved
            if free > 0:
                taken = min(free, most)
                self._reserved += taken
                return taken
            self._slot_freed.clear()
            await self._slot_freed.wait()
        return 0

    def _release(self, reserved: int) -> None:
        self._reserved -= reserved

    async def _pause(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep up to `seconds`, returning early on stop or when `wake` is set."""
        waiters = [asyncio.create_task(self._stopping.wait())]
        if wake is not None:
            waiters.append(asyncio.create_task(wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when="FIRST_COMPLETED")
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
