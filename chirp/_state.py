"""What Chirp keeps in Redis, read for an operator: worker status, a ray's messages.

What `chirp status` and `chirp trace` show, as plain async functions that return data:
the state of every worker's keys, and every message of one ray still kept in a stream
or a dead-letter stream.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from chirp._dead_letters import DeadLetter
from chirp._errors import DecodeError
from chirp._inspect import body_to_dict
from chirp._schema import MessageSpec, spec_by_name
from chirp._wire import ENVELOPE_FIELD, Names, decode_envelope

# Stream entries read per XRANGE while scanning for a ray.
TRACE_CHUNK = 500
# What a message or worker name looks like: keys that share a prefix but not this
# shape are not Chirp's.
_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


# Worker status ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    """One consumer of a worker's group: a running (or gone) host.

    Attributes:
        name: The consumer's name.
        pending: Entries it holds unacknowledged.
        idle_ms: Milliseconds since it last read or claimed.
    """

    name: str
    pending: int
    idle_ms: int


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """The state of one worker's keys in Redis.

    Attributes:
        worker: The worker's name (its consumer group).
        message: The message it consumes.
        group: Whether its consumer group exists yet.
        stream_length: Entries kept in the message's stream.
        lag: Entries of the stream not yet delivered to the group (None: unknown).
        pending: Entries delivered and not yet acknowledged.
        scheduled: Retries waiting for their time.
        dead_letters: Entries given up, in the dead-letter stream.
        retries: Failed attempts counted since the worker first ran.
        consumers: The group's consumers.
    """

    worker: str
    message: str
    group: bool
    stream_length: int
    lag: int | None
    pending: int
    scheduled: int
    dead_letters: int
    retries: int
    consumers: tuple[ConsumerStatus, ...]

    def describe(self) -> dict[str, Any]:
        """Return the status as JSON-ready data."""
        return asdict(self)


async def status(
    redis: Redis,
    names: Names,
    workers: Iterable[tuple[str, str]] = (),
    *,
    discover: bool = True,
) -> list[WorkerStatus]:
    """Return the status of workers, sorted by message then worker.

    Args:
        redis: The client to use.
        names: The namespace's names.
        workers: Known (worker, message) pairs, e.g. from the user's modules.
        discover: Also take every consumer group of every stream as a worker.
    """
    wanted = dict(workers)
    if discover:
        for worker, message in await discover_workers(redis, names):
            wanted.setdefault(worker, message)
    found = [await worker_status(redis, names, w, m) for w, m in wanted.items()]
    return sorted(found, key=lambda s: (s.message, s.worker))


async def discover_workers(redis: Redis, names: Names) -> list[tuple[str, str]]:
    """Return (worker, message) for every consumer group of every message stream."""
    pairs: list[tuple[str, str]] = []
    for message in await stream_messages(redis, names):
        try:
            groups: Any = await redis.xinfo_groups(names.stream_key(message))
        except ResponseError:  # deleted since the scan
            continue
        pairs.extend((_text(g["name"]), message) for g in groups)
    return pairs


async def stream_messages(redis: Redis, names: Names) -> list[str]:
    """Return the names of the messages that have a stream, sorted."""
    prefix = names.stream_key("")
    keys = [
        _text(key)
        async for key in redis.scan_iter(match=names.stream_key("*"), _type="stream")
    ]
    # A kebab-case name never holds ":", so another namespace's keys cannot pass.
    return sorted(k[len(prefix) :] for k in keys if _NAME.fullmatch(k[len(prefix) :]))


async def worker_status(
    redis: Redis, names: Names, worker: str, message: str
) -> WorkerStatus:
    """Return the state of one worker's keys."""
    stream = names.stream_key(message)
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(stream)
    pipe.zcard(names.retry_key(worker))
    pipe.xlen(names.dead_letter_key(worker))
    pipe.hget(names.stats_key(worker), "retries")
    length, scheduled, dead, retries = await pipe.execute()
    group = await _group_info(redis, stream, worker)
    return WorkerStatus(
        worker=worker,
        message=message,
        group=group is not None,
        stream_length=int(length),
        lag=None if group is None or group["lag"] is None else int(group["lag"]),
        pending=await _pending(redis, stream, worker) if group else 0,
        scheduled=int(scheduled),
        dead_letters=int(dead),
        retries=int(retries or 0),
        consumers=await _consumers(redis, stream, worker) if group else (),
    )


async def _group_info(redis: Redis, stream: str, worker: str) -> dict[str, Any] | None:
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream
        return None
    return next((g for g in groups if _text(g["name"]) == worker), None)


async def _pending(redis: Redis, stream: str, worker: str) -> int:
    summary: Any = await redis.xpending(stream, worker)
    return int(summary["pending"])


async def _consumers(
    redis: Redis, stream: str, worker: str
) -> tuple[ConsumerStatus, ...]:
    rows: Any = await redis.xinfo_consumers(stream, worker)
    return tuple(
        ConsumerStatus(_text(row["name"]), int(row["pending"]), int(row["idle"]))
        for row in rows
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Tracing a ray ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RayMessage:
    """One message of a ray, as kept in its stream.

    Attributes:
        name: The message name.
        parameters: Its parameter values by name (by position when the message's
            class is not loaded).
        request_id: Its own request id.
        ts: When it was published, in ms since the Unix epoch.
        hops: The context names of its trace, oldest first.
        entry_id: Its stream entry id.
        body: The body as JSON-ready data, or None when its class is not loaded.
    """

    name: str
    parameters: dict[str, str]
    request_id: str
    ts: int
    hops: tuple[str, ...]
    entry_id: str
    body: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class RayTrace:
    """Every message of one ray still in the streams, and its dead letters.

    Attributes:
        ray_id: The ray.
        messages: Its messages, oldest first.
        dead_letters: Its dead letters, oldest first, each with its worker's name.
    """

    ray_id: str
    messages: list[RayMessage]
    dead_letters: list[dict[str, Any]]

    def describe(self) -> dict[str, Any]:
        """Return the trace as JSON-ready data."""
        return asdict(self)


async def trace(
    redis: Redis, names: Names, ray_id: str, *, chunk: int = TRACE_CHUNK
) -> RayTrace:
    """Return every message of a ray still kept, and its dead letters, in time order.

    Reads every stream of the namespace in chunks of `chunk` entries.
    """
    needle = ray_id.encode()
    messages: list[RayMessage] = []
    for message in await stream_messages(redis, names):
        key = names.stream_key(message)
        async for entry_id, fields in _entries(redis, key, chunk):
            data = fields.get(ENVELOPE_FIELD)
            # A ray id inside the bytes is cheap to look for; decode only those.
            if data and needle in data:
                found = _ray_message(entry_id, data, ray_id, where=key)
                messages.extend([found] if found else [])
    letters = await _dead_letters_of(redis, names, ray_id, chunk)
    messages.sort(key=lambda m: (m.ts, m.entry_id))
    letters.sort(key=lambda d: (d["ts"], d["dead_id"]))
    return RayTrace(ray_id, messages, letters)


async def _entries(
    redis: Redis, key: str, chunk: int
) -> AsyncIterator[tuple[str, dict[bytes, bytes]]]:
    start = "-"
    while True:
        rows: Any = await redis.xrange(key, start, "+", count=chunk)
        for entry_id, fields in rows:
            yield _text(entry_id), fields
        if len(rows) < chunk:
            return
        start = f"({_text(rows[-1][0])}"


def _ray_message(
    entry_id: str, data: bytes, ray_id: str, *, where: str
) -> RayMessage | None:
    try:
        envelope = decode_envelope(data, where=f"{where} {entry_id}")
    except DecodeError:
        return None
    if envelope.ray_id != ray_id:
        return None
    spec = spec_by_name(envelope.name)
    values = list(envelope.parameters)
    keys = list(spec.parameters) if spec else [str(i) for i in range(len(values))]
    return RayMessage(
        name=envelope.name,
        parameters=dict(zip(keys, values, strict=False)),
        request_id=envelope.request_id,
        ts=envelope.ts,
        hops=tuple(hop.context_name for hop in envelope.trace),
        entry_id=entry_id,
        body=_body_of(spec, envelope.body),
    )


def _body_of(spec: MessageSpec[Any] | None, data: bytes) -> dict[str, Any] | None:
    if spec is None:
        return None
    body = spec.cls()
    try:
        body.ParseFromString(data)
    except Exception:  # a body that does not parse is shown as unknown
        return None
    return body_to_dict(body)


async def _dead_letters_of(
    redis: Redis, names: Names, ray_id: str, chunk: int
) -> list[dict[str, Any]]:
    prefix = names.dead_letter_key("")
    found: list[dict[str, Any]] = []
    async for raw in redis.scan_iter(match=names.dead_letter_key("*"), _type="stream"):
        key = _text(raw)
        worker = key[len(prefix) :]
        if not _NAME.fullmatch(worker):
            continue
        async for dead_id, fields in _entries(redis, key, chunk):
            described = DeadLetter.from_fields(dead_id, fields).describe()
            if described.get("ray_id") == ray_id:
                found.append({"worker": worker, **described})
    return found
