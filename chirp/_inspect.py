"""Looking into a live system: the user's messages, as JSON in and out.

What the inspection commands of the `chirp` command line do, as plain async functions
that return data: loading the user's modules so message names resolve to classes,
JSON in and out of Protobuf bodies, and publishing, listening and calling on an
operator's behalf. What Redis keeps (worker status, the messages of a ray) is read by
`chirp._state`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import (
    AsyncGenerator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from chirp import options_pb2
from chirp._context import Context
from chirp._errors import (
    ChirpError,
    ChirpTimeoutError,
    InternalError,
    MessageFailed,
    OperationError,
    UsageError,
)
from chirp._host import load_workers
from chirp._operation import Operation
from chirp._schema import MessageSpec, message_spec, spec_by_name
from chirp._subscribe import Received
from chirp._worker import Worker, workers_in

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
