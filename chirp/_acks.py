"""Acks of one worker's handled entries, sent together.

Handlers that finish while an `XACK` is on its way queue their ids, and the next `XACK`
carries all of them: one round trip for a batch of handled messages instead of one
each. An ack that fails is not retried: the entries stay pending and are delivered
again once their lease runs out, so a lost ack costs a second run, never a message.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from chirp._store import WorkerStore

logger = logging.getLogger(__name__)


class Acks:
    """The acks a worker's consumer has queued and the task that sends them."""

    def __init__(self, store: WorkerStore, worker_name: str) -> None:
        self._store = store
        self._worker_name = worker_name
        self._queued: list[bytes] = []
        self._sender: asyncio.Task[None] | None = None

    def add(self, entry_id: bytes) -> None:
        """Queue the ack of a stream entry (its id as Redis sent it)."""
        self._queued.append(entry_id)
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())

    async def flushed(self) -> None:
        """Return once every ack queued so far was sent, or failed."""
        if self._sender is not None:
            await self._sender

    async def _send(self) -> None:
        try:
            while self._queued:
                ids, self._queued = self._queued, []
                try:
                    await self._store.ack(ids)
                except (RedisError, OSError) as error:
                    logger.warning(
                        "worker %s: acking %d entries failed; they will be "
                        "redelivered: %s",
                        self._worker_name,
                        len(ids),
                        error,
                        extra={"worker": self._worker_name},
                    )
        finally:
            self._sender = None
