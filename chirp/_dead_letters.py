"""Operators' view of a worker's dead letters: list, show, replay, drop."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError
from redis.asyncio import Redis

from chirp._errors import UsageError
from chirp._ids import new_id
from chirp._wire import Names
from chirp.envelope_pb2 import Envelope, TraceEntry

REPLAY_CONTEXT = "chirp-dead-letters-replay"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter of a worker.

    Attributes:
        dead_id: Its id in the dead-letter stream.
        entry_id: The id of the original entry in the message's stream.
        reason: Why it was given up.
        attempts: How many attempts it had.
        ts: When it was dead-lettered, in ms since the epoch.
        envelope: The original envelope bytes, when there were any.
    """

    dead_id: str
    entry_id: str
    reason: str
    attempts: int
    ts: int
    envelope: bytes | None

    @classmethod
    def from_fields(cls, dead_id: str, fields: Mapping[bytes, bytes]) -> DeadLetter:
        """Read a dead letter from the fields of its dead-letter stream entry."""
        return cls(
            dead_id=dead_id,
            entry_id=fields.get(b"entry_id", b"").decode(),
            reason=fields.get(b"reason", b"").decode(errors="replace"),
            attempts=int(fields.get(b"attempts", b"0")),
            ts=int(fields.get(b"ts", b"0")),
            envelope=fields.get(b"envelope"),
        )

    def describe(self) -> dict[str, Any]:
        """Return a JSON-ready summary, with the envelope decoded when it can be."""
        summary: dict[str, Any] = {
            "dead_id": self.dead_id,
            "entry_id": self.entry_id,
            "reason": self.reason,
            "attempts": self.attempts,
            "ts": self.ts,
        }
        envelope = _decoded(self.envelope)
        if envelope is not None:
            summary.update(
                name=envelope.name,
                parameters=list(envelope.parameters),
                ray_id=envelope.ray_id,
                request_id=envelope.request_id,
                body_bytes=len(envelope.body),
            )
        return summary


class DeadLetters:
    """The dead-letter stream of one worker: what `chirp dead-letters` works on.

    Args:
        redis: The client to use.
        names: The namespace's names.
        worker: The worker's name.
    """

    def __init__(self, redis: Redis, names: Names, worker: str) -> None:
        self._redis = redis
        self._worker = worker
        self._stream = names.dead_letter_key(worker)
        self._retry = names.retry_key(worker)
        self._attempts = names.attempts_key(worker)
        self._data = names.retry_data_key(worker)

    async def oldest(self, count: int = 100) -> list[DeadLetter]:
        """Return the oldest `count` dead letters."""
        rows: Any = await self._redis.xrange(self._stream, count=count)
        return [_dead_letter(row) for row in rows]

    async def get(self, dead_id: str) -> DeadLetter:
        """Return one dead letter.

        Raises:
            UsageError: There is no dead letter with that id.
        """
        rows: Any = await self._redis.xrange(self._stream, dead_id, dead_id)
        if not rows:
            raise UsageError(f"worker {self._worker!r} has no dead letter {dead_id!r}")
        return _dead_letter(rows[0])

    async def replay(
        self, dead_ids: Sequence[str], *, now_ms: int | None = None
    ) -> int:
        """Hand dead letters back to this worker (only), as first attempts again.

        Each keeps its ray and request ids; a trace entry records the replay.

        Returns:
            How many were replayed.
        """
        now = int(time.time() * 1000) if now_ms is None else now_ms
        replayed = 0
        for dead_id in dead_ids:
            letter = await self.get(dead_id)
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(self._data, letter.entry_id, _replayable(letter, now))
            pipe.hset(self._attempts, letter.entry_id, 0)
            pipe.zadd(self._retry, {letter.entry_id: now})
            pipe.xdel(self._stream, dead_id)
            await pipe.execute()
            replayed += 1
        return replayed

    async def drop(self, dead_ids: Sequence[str]) -> int:
        """Delete dead letters for good; return how many existed."""
        if not dead_ids:
            return 0
        return int(await self._redis.xdel(self._stream, *dead_ids))

    async def all_ids(self) -> list[str]:
        """Return the ids of every dead letter."""
        rows: Any = await self._redis.xrange(self._stream)
        return [row[0].decode() for row in rows]


def _dead_letter(row: Any) -> DeadLetter:
    dead_id, fields = row
    return DeadLetter.from_fields(dead_id.decode(), fields)


def _decoded(data: bytes | None) -> Envelope | None:
    if not data:
        return None
    envelope = Envelope()
    try:
        envelope.ParseFromString(data)
    except ProtobufDecodeError:
        return None
    return envelope if envelope.name else None


def _replayable(letter: DeadLetter, now_ms: int) -> bytes:
    """Return the envelope to run again: the original plus a replay hop in its trace.

    Bytes that are not an envelope go back unchanged (the worker may be fixed now).
    """
    envelope = _decoded(letter.envelope)
    if envelope is None:
        return letter.envelope or b""
    hop = TraceEntry(context_name=REPLAY_CONTEXT, request_id=new_id(), ts=now_ms)
    envelope.trace.append(hop)
    return envelope.SerializeToString()
