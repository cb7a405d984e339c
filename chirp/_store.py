"""A worker's state in Redis, and every atomic step that changes it.

Where an entry can be, for one worker (its consumer group):

- *new*: in the stream, not yet delivered to the group;
- *running from the stream*: in the group's pending list, owned by one consumer that
  renews its lease (the entry's idle time) while the handler runs;
- *scheduled*: acked in the group, its id in the retry sorted set scored with the time
  it is due, its envelope copied to the retry data hash (so trimming the stream cannot
  lose it); while a consumer runs it, the score is the end of that consumer's lease;
- *done*: acked and in no retry set; or *dead*: copied to the dead-letter stream.

Every move between these states is one atomic Redis step, so a host killed at any
point leaves each entry in exactly one of them, and the others pick it up from there.
The consumer (`chirp._consumer`) decides the moves; operators' tools (dead letters)
use the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from chirp._scripts import (
    CLAIM_DUE,
    CLAIM_KEY,
    FORGET_CONSUMERS,
    RENEW_KEYS,
    RENEW_PENDING,
    RENEW_SCHEDULED,
    TRIM,
)
from chirp._wire import ENVELOPE_FIELD, Names

# An idle time far beyond any lease, but below "now" so Redis keeps it as given.
HANDBACK_IDLE_MS = 10 * 365 * 24 * 3600 * 1000
# Handed-back entries wait under this name, so the consumer that stopped holds
# nothing and can leave its group.
HANDBACK_CONSUMER = "chirp-handed-back"


@dataclass(slots=True)
class Taken:
    """One entry taken for handling, and where it came from.

    Attributes:
        raw_id: The stream entry id as Redis returned it; `entry_id` is the text.
        data: The envelope bytes, or None when the entry carries none.
        scheduled: True for a retry taken from the schedule, False for a stream entry.
        attempt: Which attempt this is, from 1.
        redelivered: True unless this is the first delivery of the entry.
        idempotency_key: Set once decoded, when the message carries one.
        otel: Set once decoded: the publisher's trace context, if any.
    """

    raw_id: bytes
    data: bytes | None
    scheduled: bool
    attempt: int
    redelivered: bool
    idempotency_key: str = ""
    otel: dict[str, str] | None = None

    @property
    def entry_id(self) -> str:
        """The stream entry id."""
        # Kept as bytes: acking a message, the one step every entry takes, then
        # passes Redis the bytes it sent, with nothing to decode or encode.
        return self.raw_id.decode()


class WorkerStore:
    """The Redis keys of one worker and the atomic steps on them.

    Args:
        redis: The client to use.
        names: The namespace's names.
        worker: The worker's name (its consumer group).
        message: The name of the message it consumes.
    """

    def __init__(
        self, redis: Redis, names: Names, *, worker: str, message: str
    ) -> None:
        self._redis = redis
        self.worker = worker
        self.stream = names.stream_key(message)
        self._names = names
        self._retry = names.retry_key(worker)
        self._attempts = names.attempts_key(worker)
        self._owners = names.owners_key(worker)
        self._data = names.retry_data_key(worker)
        self.dead = names.dead_letter_key(worker)
        self.stats = names.stats_key(worker)
        self._claim_due = redis.register_script(CLAIM_DUE)
        self._renew_pending = redis.register_script(RENEW_PENDING)
        self._renew_scheduled = redis.register_script(RENEW_SCHEDULED)
        self._claim_key = redis.register_script(CLAIM_KEY)
        self._renew_keys = redis.register_script(RENEW_KEYS)
        self._forget_consumers = redis.register_script(FORGET_CONSUMERS)

    # Taking ------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Create the consumer group at the start of the stream, if it is missing."""
        try:
            await self._redis.xgroup_create(
                self.stream, self.worker, id="0", mkstream=True
            )
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def read_new(self, consumer: str, count: int, block_ms: int) -> list[Taken]:
        """Read entries never delivered to the group; recreate a vanished group."""
        try:
            reply: Any = await self._redis.xreadgroup(
                self.worker, consumer, {self.stream: ">"}, count=count, block=block_ms
            )
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self.ensure_group()
            return []
        entries = reply[0][1] if reply else []
        return [Taken(i, f.get(ENVELOPE_FIELD), False, 1, False) for i, f in entries]

    async def claim_due(
        self, consumer: str, now_ms: int, lease_ms: int, limit: int
    ) -> tuple[int | None, list[Taken]]:
        """Claim due retries; return when the next one is due (or None) and them."""
        reply: Any = await self._claim_due(
            keys=[self._retry, self._attempts, self._owners, self._data],
            args=[now_ms, lease_ms, limit, consumer],
        )
        next_due = None if int(reply[0]) < 0 else int(reply[0])
        claimed = reply[1:]
        taken = [
            Taken(
                claimed[i],
                claimed[i + 2] or None,
                True,
                int(claimed[i + 1]) + 1,
                True,
            )
            for i in range(0, len(claimed), 3)
        ]
        return next_due, taken

    async def take_idle(
        self, consumer: str, cursor: str, idle_ms: int, count: int
    ) -> tuple[str, list[Taken], int]:
        """Take over entries idle past `idle_ms`; also return how many had vanished."""
        reply: Any = await self._redis.xautoclaim(
            self.stream,
            self.worker,
            consumer,
            min_idle_time=idle_ms,
            start_id=cursor,
            count=count,
        )
        taken = [
            Taken(i, f.get(ENVELOPE_FIELD), False, 1, True)
            for i, f in reply[1]
            if f is not None
        ]
        vanished = len(reply[2]) if len(reply) > 2 else 0
        if vanished:
            await self._redis.hincrby(self.stats, "vanished", vanished)
        return reply[0].decode(), taken, vanished

    # Outcomes ----------------------------------------------------------------------

    async def ack(self, entry_ids: list[bytes]) -> None:
        """Acknowledge stream entries handled successfully."""
        await self._redis.xack(self.stream, self.worker, *entry_ids)

    async def complete_retry(self, entry_id: str) -> None:
        """Forget a scheduled retry that has now succeeded."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self._retry, entry_id)
        pipe.hdel(self._attempts, entry_id)
        pipe.hdel(self._owners, entry_id)
        pipe.hdel(self._data, entry_id)
        await pipe.execute()

    async def schedule(
        self, taken: Taken, *, due_ms: int, failed: int, counts_as_retry: bool = True
    ) -> None:
        """Schedule an entry to run at `due_ms`, with `failed` attempts behind it."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.zadd(self._retry, {taken.entry_id: due_ms})
        pipe.hset(self._attempts, taken.entry_id, failed)
        pipe.hdel(self._owners, taken.entry_id)
        if taken.data is not None:
            pipe.hset(self._data, taken.entry_id, taken.data)
        if counts_as_retry:
            pipe.hincrby(self.stats, "retries", 1)
        if not taken.scheduled:
            pipe.xack(self.stream, self.worker, taken.entry_id)
        await pipe.execute()

    async def dead_letter(self, taken: Taken, *, reason: str, now_ms: int) -> None:
        """Move an entry to the dead-letter stream with its reason, and forget it."""
        fields: dict[Any, Any] = {
            "entry_id": taken.entry_id,
            "stream": self.stream,
            "worker": self.worker,
            "reason": reason,
            "attempts": taken.attempt,
            "ts": now_ms,
        }
        if taken.data is not None:
            fields["envelope"] = taken.data
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(self.dead, fields)
        pipe.xack(self.stream, self.worker, taken.entry_id)
        self._forget(pipe, taken.entry_id)
        pipe.hincrby(self.stats, "dead_letters", 1)
        await pipe.execute()

    def _forget(self, pipe: Any, entry_id: str) -> None:
        pipe.zrem(self._retry, entry_id)
        pipe.hdel(self._attempts, entry_id)
        pipe.hdel(self._owners, entry_id)
        pipe.hdel(self._data, entry_id)

    async def levels(self) -> dict[str, int]:
        """Return pending, lag, scheduled and dead-letter counts of the worker now."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.xinfo_groups(self.stream)
        pipe.zcard(self._retry)
        pipe.xlen(self.dead)
        groups, scheduled, dead = await pipe.execute(raise_on_error=False)
        mine = [] if isinstance(groups, Exception) else groups
        group: dict[str, Any] = next(
            (g for g in mine if _text(g.get("name")) == self.worker), {}
        )
        return {
            "pending": int(group.get("pending") or 0),
            "lag": int(group.get("lag") or 0),
            "scheduled": int(scheduled) if isinstance(scheduled, int) else 0,
            "dead_letters": int(dead) if isinstance(dead, int) else 0,
        }

    async def count(self, field: str, amount: int = 1) -> None:
        """Add to one of the worker's counters."""
        await self._redis.hincrby(self.stats, field, amount)

    # Leases ------------------------------------------------------------------------

    async def renew(
        self, consumer: str, held: list[Taken], *, lease_end_ms: int, lease_ms: int
    ) -> None:
        """Renew the leases of entries and idempotency keys this consumer holds."""
        from_stream = [t.entry_id for t in held if not t.scheduled]
        scheduled = [t.entry_id for t in held if t.scheduled]
        markers = self._markers(held)
        if from_stream:
            await self._renew_pending(
                keys=[self.stream], args=[self.worker, consumer, *from_stream]
            )
        if scheduled:
            await self._renew_scheduled(
                keys=[self._retry, self._owners],
                args=[lease_end_ms, consumer, 0, *scheduled],
            )
        if markers:
            tokens = _tokens(consumer, held)
            await self._renew_keys(keys=markers, args=[lease_ms, 0, *tokens])

    async def hand_back(self, consumer: str, held: list[Taken], *, now_ms: int) -> None:
        """Make entries this consumer will not finish available to others at once."""
        from_stream: list[Any] = [t.entry_id for t in held if not t.scheduled]
        scheduled = [t.entry_id for t in held if t.scheduled]
        markers = self._markers(held)
        if from_stream:
            await self._redis.xclaim(
                self.stream,
                self.worker,
                HANDBACK_CONSUMER,
                0,
                from_stream,
                idle=HANDBACK_IDLE_MS,
                justid=True,
            )
        if scheduled:
            await self._renew_scheduled(
                keys=[self._retry, self._owners], args=[now_ms, consumer, 1, *scheduled]
            )
        if markers:
            tokens = _tokens(consumer, held)
            await self._renew_keys(keys=markers, args=[0, 1, *tokens])

    async def leave(self, consumer: str) -> None:
        """Remove a stopping consumer from the group, if it holds no entry."""
        await self._forget_consumers(
            keys=[self.stream], args=[self.worker, 0, consumer]
        )

    async def forget_idle(self, idle_ms: int) -> int:
        """Remove consumers idle past `idle_ms` that hold no entry; return how many."""
        reply = await self._forget_consumers(
            keys=[self.stream], args=[self.worker, idle_ms]
        )
        return int(reply)

    # Idempotency keys ----------------------------------------------------------------

    async def claim_key(self, taken: Taken, consumer: str, lease_ms: int) -> str:
        """Claim an entry's idempotency key: 'claimed', 'done' or 'busy' (elsewhere)."""
        reply: Any = await self._claim_key(
            keys=[self._names.done_key(self.worker, taken.idempotency_key)],
            args=[_token(consumer, taken), lease_ms],
        )
        return str(reply.decode() if isinstance(reply, bytes) else reply)

    async def key_done(self, key: str, window_ms: int) -> None:
        """Mark an idempotency key completed for `window_ms`."""
        await self._redis.set(
            self._names.done_key(self.worker, key), "done", px=window_ms
        )

    async def release_key(self, taken: Taken, consumer: str) -> None:
        """Give up a run's claim on its idempotency key after a failure."""
        marker = self._names.done_key(self.worker, taken.idempotency_key)
        await self._renew_keys(keys=[marker], args=[0, 1, _token(consumer, taken)])

    def _markers(self, held: list[Taken]) -> list[str]:
        return [
            self._names.done_key(self.worker, t.idempotency_key)
            for t in held
            if t.idempotency_key
        ]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _token(consumer: str, taken: Taken) -> str:
    """Name one run of a handler: two runs in one consumer must not share a key."""
    return f"{consumer}/{taken.entry_id}"


def _tokens(consumer: str, held: list[Taken]) -> list[str]:
    return [_token(consumer, t) for t in held if t.idempotency_key]


def trim_script(redis: Redis) -> Any:
    """Return the registered script that trims a stream safely (see `_scripts.TRIM`)."""
    return redis.register_script(TRIM)
