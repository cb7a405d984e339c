"""Durable writes of messages, shared across concurrent publishers, then announced.

A publish is durable once its ``XADD`` returned. Concurrent publishers share round
trips: writes queue up while one pipeline is in flight and go out together in the next
one, so a hundred concurrent publishers cost a handful of round trips, not a hundred,
and each of them still returns only after its own entry was written.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import redis.asyncio as redis_asyncio
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chirp._errors import PublishError
from chirp._store import trim_script
from chirp._wire import ENVELOPE_FIELD

logger = logging.getLogger(__name__)

_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)
# Enough for a burst of publishers, small enough that one pipeline stays quick.
_MAX_BATCH = 512


@dataclass(slots=True)
class DurableWrite:
    """One envelope to append to a stream, announce on NATS, maybe keep as a tail."""

    stream: str
    data: bytes
    subject: str
    tail_key: str | None = None
    tail_ttl_ms: int = 0


class StreamWriter:
    """Append envelopes to Redis Streams, batching concurrent callers into pipelines.

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
        self._written: dict[str, int] = {}
        self._queue: list[tuple[DurableWrite, asyncio.Future[bytes]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, write: DurableWrite) -> bytes:
        """Append one envelope and return its stream entry id once it is written.

        Raises:
            PublishError: The write failed on every try, or Redis refused it.
        """
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.append((write, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_all())
        return await future

    async def close(self) -> None:
        """Wait until every queued write has been sent."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush_all(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:_MAX_BATCH]
                del self._queue[:_MAX_BATCH]
                await self._flush(batch)
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
        for (write, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                if not future.done():
                    future.set_exception(
                        PublishError(
                            f"Redis refused the write to {write.stream}: {result}"
                        )
                    )
                continue
            written.append(write)
            if not future.done():
                future.set_result(result)
        # The publishers may go on: their messages are durable. The announces still
        # leave in write order, before the next batch is written.
        for write in written:
            await self._announce(write)
        await self._trim_streams([write.stream for write, _ in batch])

    async def _announce(self, write: DurableWrite) -> None:
        # The message is durable already: a NATS failure only costs realtime
        # subscribers this one message, and raising would invite a duplicate publish.
        try:
            await self._nats.publish(write.subject, write.data)
        except NatsError as error:
            logger.warning(
                "message written durably but not announced on %s: %s",
                write.subject,
                error,
            )

    async def _trim_streams(self, streams: list[str]) -> None:
        """Trim the streams of a batch that are due; the publishers have returned."""
        for stream in streams:
            self._written[stream] = self._written.get(stream, 0) + 1
        due = [s for s, n in self._written.items() if n >= self._trim_every]
        for stream in due:
            self._written[stream] = 0
            try:
                await self._trim(keys=[stream], args=[self._retention])
            except (RedisError, OSError) as error:
                logger.warning("trimming %s failed; next time: %s", stream, error)

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
            # A lone publisher: one command costs less than a pipeline of one.
            entry_id = await self._redis.xadd(
                writes[0].stream, {ENVELOPE_FIELD: writes[0].data}
            )
            return _entry_ids(writes, [entry_id])
        pipe = self._redis.pipeline(transaction=False)
        for write in writes:
            pipe.xadd(write.stream, {ENVELOPE_FIELD: write.data})
            if write.tail_key is not None:
                pipe.set(write.tail_key, write.data, px=write.tail_ttl_ms)
        replies = await pipe.execute(raise_on_error=False)
        return _entry_ids(writes, replies)


def _entry_ids(
    writes: list[DurableWrite], replies: list[object]
) -> list[bytes | BaseException]:
    """Pick each write's XADD reply from the pipeline replies; a failed SET fails it."""
    results: list[bytes | BaseException] = []
    position = 0
    for write in writes:
        reply = replies[position]
        position += 1
        if write.tail_key is not None:
            tail_reply = replies[position]
            position += 1
            if isinstance(tail_reply, BaseException) and not isinstance(
                reply, BaseException
            ):
                reply = tail_reply
        if isinstance(reply, BaseException):
            results.append(reply)
        else:
            assert isinstance(reply, bytes), reply
            results.append(reply)
    return results
