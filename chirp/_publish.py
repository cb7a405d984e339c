"""Durable writes of messages, shared across concurrent publishers, then announced.

A publish is durable once its ``XADD`` returned. A publisher that finds the writer
idle writes at once, from its own task. Concurrent publishers share round trips:
writes queue up while one is in flight and go out together in the next batch, appended
by one script call. A hundred concurrent publishers so cost a handful of round trips,
not a hundred, and each of them still returns only after its own entry was written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import redis.asyncio as redis_asyncio
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chirp._errors import PublishError
from chirp._metrics import LocalHistogram
from chirp._scripts import APPEND
from chirp._store import trim_script
from chirp._wire import ENVELOPE_FIELD

logger = logging.getLogger(__name__)

_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)
# Enough for a burst of publishers, small enough that one batch, a script that holds
# Redis while it runs, stays quick.
_MAX_BATCH = 256


@dataclass(slots=True)
class DurableWrite:
    """One envelope to append to a stream, announce on NATS, maybe keep as a tail.

    Attributes:
        copy_to: A reply inbox to send a copy to on NATS, as it is announced.
        latency: Where to record the seconds from queueing to written, if anywhere.
    """

    stream: str
    data: bytes
    subject: str
    tail_key: str | None = None
    tail_ttl_ms: int = 0
    copy_to: str | None = None
    latency: LocalHistogram | None = None
    queued: float = 0.0


class StreamWriter:
    """Append envelopes to Redis Streams, batching concurrent callers.

    Every `retention` writes to a stream, the writer trims it: to its newest
    `retention` entries, but never past an entry a consumer group still needs.

    Args:
        redis: The client to write with.
        attempts: Tries of one batch before its writers get `PublishError`.
        retry_delay: Seconds before the second try; doubles after each.
        retention: Entries a stream keeps at least, once every group has them.
    """

    def __init__(
        self,
        redis: redis_asyncio.Redis,
        nats: NatsClient,
        *,
        attempts: int,
        retry_delay: float,
        retention: int,
    ) -> None:
        self._redis = redis
        self._nats = nats
        self._attempts = attempts
        self._retry_delay = retry_delay
        self._retention = retention
        # A trim reads the newest `retention` entries: once per as many writes, it
        # costs about one entry read per publish.
        self._trim_every = max(retention, 100)
        self._trim = trim_script(redis)
        self._append = redis.register_script(APPEND)
        self._written: dict[str, int] = {}
        self._queue: list[tuple[DurableWrite, asyncio.Future[bytes]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # Set whenever no lone publisher is writing (see `_lead`).
        self._no_lone_writer = asyncio.Event()
        self._no_lone_writer.set()
        self._trimming: asyncio.Task[None] | None = None

    async def write(self, write: DurableWrite) -> bytes:
        """Append one envelope and return its stream entry id once it is written.

        A publisher that finds the writer idle writes its envelope itself, without
        waiting for another task to run. Publishers that come while a write is in
        flight queue up, and one task sends all of them together next.

        Raises:
            PublishError: The write failed on every try, or Redis refused it.
        """
        write.queued = time.perf_counter()
        if self._flusher is None and self._no_lone_writer.is_set():
            return await self._lead(write)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.append((write, future))
        if self._flusher is None and self._no_lone_writer.is_set():
            self._start_flusher()
        return await future

    async def close(self) -> None:
        """Wait until every write under way and queued has been sent, then a trim."""
        while True:
            if not self._no_lone_writer.is_set():
                await self._no_lone_writer.wait()
            elif self._flusher is not None:
                await asyncio.shield(self._flusher)
            elif self._trimming is not None:
                await asyncio.shield(self._trimming)
            else:
                return

    async def _lead(self, write: DurableWrite) -> bytes:
        """Write one envelope from the publisher's own task, then announce it."""
        self._no_lone_writer.clear()
        try:
            [result] = await self._send_with_retries([write])
            if isinstance(result, BaseException):
                raise _refused(write, result) from result
            if write.latency is not None:
                write.latency.observe(time.perf_counter() - write.queued)
            await self._announce(write)
            self._count_written([write.stream])
            return result
        finally:
            # Whatever happened to this write, those who queued behind it go next.
            if self._queue and self._flusher is None:
                self._start_flusher()
            self._no_lone_writer.set()

    def _start_flusher(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_all())

    async def _flush_all(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:_MAX_BATCH]
                del self._queue[:_MAX_BATCH]
                await self._flush(batch)
                if not self._queue:
                    # The publishers just released may publish again at once: one
                    # turn of the loop lets them queue for the next batch.
                    await asyncio.sleep(0)
        finally:
            self._flusher = None

    async def _flush(
        self, batch: list[tuple[DurableWrite, asyncio.Future[bytes]]]
    ) -> None:
        try:
            results = await self._send_with_retries([w for w, _ in batch])
        except PublishError as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        written = []
        done = time.perf_counter()
        for (write, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                if not future.done():
                    future.set_exception(_refused(write, result))
                continue
            written.append(write)
            if write.latency is not None:
                write.latency.observe(done - write.queued)
            if not future.done():
                future.set_result(result)
        # The publishers may go on: their messages are durable. The announces still
        # leave in write order, before the next batch is written.
        for write in written:
            await self._announce(write)
        self._count_written([write.stream for write, _ in batch])

    async def _announce(self, write: DurableWrite) -> None:
        # The message is durable already: a NATS failure only costs realtime
        # subscribers this one message, and raising would invite a duplicate publish.
        try:
            await self._nats.publish(write.subject, write.data)
            if write.copy_to is not None:
                await self._nats.publish(write.copy_to, write.data)
        except NatsError as error:
            logger.warning(
                "message written durably but not announced on %s: %s",
                write.subject,
                error,
            )

    def _count_written(self, streams: list[str]) -> None:
        """Count writes per stream; trim those due, in a task of its own."""
        for stream in streams:
            self._written[stream] = self._written.get(stream, 0) + 1
        if self._trimming is None and any(
            n >= self._trim_every for n in self._written.values()
        ):
            task = asyncio.get_running_loop().create_task(self._trim_due())
            self._trimming = task

    async def _trim_due(self) -> None:
        try:
            due = [s for s, n in self._written.items() if n >= self._trim_every]
            for stream in due:
                self._written[stream] = 0
                try:
                    await self._trim(keys=[stream], args=[self._retention])
                except (RedisError, OSError) as error:
                    logger.warning("trimming %s failed; next time: %s", stream, error)
        finally:
            self._trimming = None

    async def _send_with_retries(
        self, writes: list[DurableWrite]
    ) -> list[bytes | BaseException]:
        delay = self._retry_delay
        for attempt in range(1, self._attempts + 1):
            try:
                return await self._send(writes)
            except _TRANSIENT as error:
                if attempt == self._attempts:
                    raise PublishError(
                        f"writing {len(writes)} message(s) to Redis failed on all "
                        f"{self._attempts} tries, last with: {error}"
                    ) from error
                logger.warning(
                    "durable write failed (try %d of %d), retrying in %.2fs: %s",
                    attempt,
                    self._attempts,
                    delay,
                    error,
                    extra={"attempt": attempt},
                )
                await asyncio.sleep(delay)
                delay *= 2
            except RedisError as error:
                raise PublishError(f"Redis refused the write: {error}") from error
        raise AssertionError("unreachable")

    async def _send(self, writes: list[DurableWrite]) -> list[bytes | BaseException]:
        if len(writes) == 1 and writes[0].tail_key is None:
            # A lone publisher: a plain XADD costs the least.
            entry_id = await self._redis.xadd(
                writes[0].stream, {ENVELOPE_FIELD: writes[0].data}
            )
            return [_entry_id(entry_id)]
        # One script call appends the whole batch: redis-py's pipeline would pack,
        # send and parse a command per write, and cost more than the write itself.
        keys = [write.stream for write in writes]
        args: list[bytes | int] = [ENVELOPE_FIELD, len(writes)]
        args += [write.data for write in writes]
        for position, write in enumerate(writes, start=1):
            if write.tail_key is not None:
                keys.append(write.tail_key)
                args += (position, write.tail_ttl_ms)
        replies = await self._append(keys=keys, args=args)
        if len(replies) != len(writes):
            raise RedisError(
                f"appending {len(writes)} messages returned {len(replies)} replies"
            )
        return [_entry_id(reply) for reply in replies]


def _refused(write: DurableWrite, reply: BaseException) -> PublishError:
    return PublishError(f"Redis refused the write to {write.stream}: {reply}")


def _entry_id(reply: object) -> bytes | BaseException:
    """Return an append's entry id, or the error Redis refused it with."""
    if isinstance(reply, BaseException | bytes):
        return reply
    return RedisError(f"unexpected reply to an append: {reply!r}")
