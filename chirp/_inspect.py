"""Looking into a live system: messages as JSON, worker status, the messages of a ray.

What the inspection commands of the `chirp` command line do, as plain async functions
that return data: loading the user's modules so message names resolve to classes,
JSON in and out of Protobuf bodies, publishing and calling on an operator's behalf,
the state of every worker's keys in Redis, and every message of one ray still kept.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import sys
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from chirp import options_pb2
from chirp._context import Context
from chirp._dead_letters import DeadLetter
from chirp._errors import (
    ChirpError,
    ChirpTimeoutError,
    DecodeError,
    InternalError,
    MessageFailed,
    OperationError,
    UsageError,
)
from chirp._host import load_workers
from chirp._operation import Operation
from chirp._schema import MessageSpec, message_spec, spec_by_name
from chirp._subscribe import Received
from chirp._wire import ENVELOPE_FIELD, Names, decode_envelope
from chirp._worker import Worker, workers_in

# Stream entries read per XRANGE while scanning for a ray.
TRACE_CHUNK = 500

_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)

# Loading the user's modules -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loaded:
    """What the user's modules declare.

    Attributes:
        messages: Message names found in the modules, sorted.
        workers: The workers defined at the top level of the modules.
        operations: The operations defined at the top level, by name.
    """

    messages: tuple[str, ...] = ()
    workers: tuple[Worker[Any], ...] = ()
    operations: Mapping[str, Operation[Any, Any]] = field(default_factory=dict)

    def spec(self, name: str) -> MessageSpec[Message]:
        """Return the spec of a message name.

        Raises:
            UsageError: No imported class declares that name.
        """
        spec = spec_by_name(name)
        if spec is None:
            known = ", ".join(self.messages) or "none"
            raise UsageError(
                f"unknown message {name!r}: pass --module with the generated module "
                f"that declares it (known messages: {known})"
            )
        return spec

    def operation(self, name: str) -> Operation[Any, Any]:
        """Return the operation of a name.

        Raises:
            UsageError: No imported module defines it.
        """
        found = self.operations.get(name)
        if found is None:
            known = ", ".join(sorted(self.operations)) or "none"
            raise UsageError(
                f"unknown operation {name!r}: pass --module with the module that "
                f"defines it (known operations: {known})"
            )
        return found


def load(modules: Sequence[str], paths: Sequence[Path] = ()) -> Loaded:
    """Import modules and register the messages, workers and operations they define.

    Args:
        modules: Dotted module names: generated ``_pb2`` modules, worker modules.
        paths: Directories to import from, searched before the current one.

    Raises:
        UsageError: A module cannot be imported, or declares a message wrongly.
    """
    _add_import_paths(paths)
    imported = [_import(name) for name in modules]
    messages: set[str] = set()
    operations: dict[str, Operation[Any, Any]] = {}
    for module in imported:
        messages.update(message_spec(cls).name for cls in _message_classes(module))
        operations.update(
            (value.name, value)
            for value in vars(module).values()
            if isinstance(value, Operation)
        )
    worker_modules = [m.__name__ for m in imported if workers_in(m)]
    workers = load_workers(worker_modules)
    messages.update(w.spec.name for w in workers)
    return Loaded(tuple(sorted(messages)), tuple(workers), operations)


def _add_import_paths(paths: Sequence[Path]) -> None:
    for directory in reversed([Path.cwd(), *paths]):
        text = str(directory.resolve())
        if text not in sys.path:
            sys.path.insert(0, text)


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise UsageError(f"cannot import module {name!r}: {error}") from error


def _message_classes(module: ModuleType) -> list[type[Message]]:
    """Return the classes of a module, nested ones too, that declare a Chirp message."""
    found: list[type[Message]] = []
    pending = [v for v in vars(module).values() if _is_message_class(v)]
    while pending:
        cls = pending.pop()
        descriptor = cls.DESCRIPTOR
        if descriptor.GetOptions().HasExtension(options_pb2.message):
            found.append(cls)
        pending.extend(getattr(cls, nested.name) for nested in descriptor.nested_types)
    return found


def _is_message_class(value: object) -> bool:
    return (
        isinstance(value, type) and issubclass(value, Message) and value is not Message
    )


# JSON in and out -------------------------------------------------------------------


def assignments(pairs: Iterable[str]) -> dict[str, str]:
    """Parse ``name=value`` arguments into a dict.

    Raises:
        UsageError: An argument has no ``=``.
    """
    parsed: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"{pair!r} is not name=value")
        parsed[name] = value
    return parsed


def body_from_json(
    cls: type[Message], text: str, parameters: Mapping[str, str] | None = None
) -> Message:
    """Build a message body from JSON text, then set routing parameters on it.

    Raises:
        UsageError: The text is not a JSON object, names a field the message does not
            have, or gives a field a value of the wrong type.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--json is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--json must be a JSON object, got {type(data).__name__}")
    body = cls()
    try:
        json_format.ParseDict(data, body)
    except json_format.ParseError as error:
        raise UsageError(f"{_full_name(cls)}: {error}") from None
    for name, value in (parameters or {}).items():
        _set_field(body, name, value)
    return body


def _set_field(body: Message, name: str, value: str) -> None:
    fields = body.DESCRIPTOR.fields_by_name
    if name not in fields:
        raise UsageError(f"{_full_name(type(body))} has no field named {name!r}")
    kind = fields[name].type
    try:
        if kind == FieldDescriptor.TYPE_BOOL:
            setattr(body, name, {"true": True, "false": False}[value])
        elif kind in _INTEGER_TYPES:
            setattr(body, name, int(value))
        else:
            setattr(body, name, value)
    except (KeyError, ValueError, TypeError):
        raise UsageError(
            f"field {name!r} of {_full_name(type(body))} cannot take {value!r}"
        ) from None


def _full_name(cls: type[Message]) -> str:
    return str(cls.DESCRIPTOR.full_name)


def body_to_dict(body: Message) -> dict[str, Any]:
    """Return a body as JSON-ready data, with the field names of the schema."""
    return json_format.MessageToDict(body, preserving_proto_field_name=True)


def received_record(spec: MessageSpec[Any], received: Received[Any]) -> dict[str, Any]:
    """Return a received message as JSON-ready data: metadata, hops and body."""
    return {
        "name": received.name,
        "parameters": dict(zip(spec.parameters, received.parameters, strict=False)),
        "ray_id": received.ray_id,
        "request_id": received.request_id,
        "ts": received.ts,
        "trace": [hop.context_name for hop in received.trace],
        "body": body_to_dict(received.body),
    }


def error_record(error: ChirpError) -> dict[str, Any]:
    """Return an error as ``{code, message}``, with the ray id when it has one."""
    record: dict[str, Any]
    if isinstance(error, OperationError):
        record = {"code": error.code, "message": error.message}
    elif isinstance(error, InternalError):
        record = {"code": "INTERNAL", "message": str(error), "ray_id": error.ray_id}
    elif isinstance(error, ChirpTimeoutError):
        record = {"code": "TIMEOUT", "message": str(error)}
    else:
        record = {"code": type(error).__name__, "message": str(error)}
    if isinstance(error, MessageFailed):
        spec = message_spec(type(error.received.body))
        record["received"] = received_record(spec, error.received)
    return record


# Publishing, listening, calling ----------------------------------------------------


async def publish(
    ctx: Context,
    body: Message,
    *,
    wait: MessageSpec[Any] | None = None,
    fail: MessageSpec[Any] | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Publish a body; with `wait`, wait for its completion message.

    Returns:
        What was published (name, ray id, request id, entry id), or the reply.

    Raises:
        MessageFailed: The `fail` message came first.
        ChirpTimeoutError: No reply came within `timeout` seconds.
    """
    if wait is None:
        published = await ctx.msg(body)
        return {
            "name": message_spec(type(body)).name,
            "ray_id": ctx.ray_id,
            "request_id": published.request_id,
            "entry_id": published.entry_id,
        }
    reply = await ctx.publish_wait(
        body, wait.cls, fail=None if fail is None else fail.cls, timeout=timeout
    )
    return received_record(wait, reply)


async def listen(
    ctx: Context,
    spec: MessageSpec[Any],
    parameters: Mapping[str, str],
    *,
    count: int | None = None,
    timeout: float | None = None,
    ready: Callable[[list[str]], None] | None = None,
) -> AsyncGenerator[Received[Any], None]:
    """Yield messages as they are published, until `count` came or `timeout` passed.

    A parameter left out matches any value. `ready` is called with the subjects once
    the server has the subscription.
    """
    loop_time = asyncio.get_running_loop().time
    deadline = None if timeout is None else loop_time() + timeout
    async with await ctx.subscribe(spec.cls, dict(parameters)) as subscription:
        if ready is not None:
            ready(subscription.subjects)
        seen = 0
        while count is None or seen < count:
            left = None if deadline is None else deadline - loop_time()
            if left is not None and left <= 0:
                return
            try:
                received = await subscription.next(left)
            except ChirpTimeoutError:
                return
            seen += 1
            yield received


async def call(ctx: Context, operation: Operation[Any, Any], text: str) -> Message:
    """Call an operation with a request built from JSON text; return the response.

    Raises:
        UsageError: The JSON does not fit the request type.
        OperationError: The operation raised it.
        InternalError: The operation failed unexpectedly.
    """
    request = body_from_json(operation.request_type, text)
    return cast(Message, await operation(ctx, request))


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
