"""Chirp metadata of Protobuf message classes.

A message class carries its Chirp metadata in the ``(chirp.message)`` option of its
schema (see ``chirp/options.proto``). `message_spec` reads and checks it once a class.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from chirp import options_pb2
from chirp._errors import SchemaError

M = TypeVar("M", bound=Message)

_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_ROUTABLE_TYPES = {
    FieldDescriptor.TYPE_STRING,
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
    FieldDescriptor.TYPE_BOOL,
}


@dataclass(frozen=True, slots=True)
class MessageSpec(Generic[M]):
    """What Chirp knows of one message class.

    Attributes:
        cls: The generated Protobuf class.
        name: Kebab-case message name, e.g. ``user-create``.
        parameters: Ordered names of the body fields that route the message.
        tail_ttl_ms: How long the latest envelope per parameter set is kept; 0: not.
        idempotency_field: The body field whose value is the idempotency key, or "".
        sensitive: Bodies must never be logged.
    """

    cls: type[M]
    name: str
    parameters: tuple[str, ...]
    tail_ttl_ms: int
    idempotency_field: str = ""
    sensitive: bool = False

    def idempotency_key_of(self, body: M) -> str:
        """Return the idempotency key the schema takes from `body`, or ""."""
        if not self.idempotency_field:
            return ""
        return parameter_text(getattr(body, self.idempotency_field))

    def parameter_values(self, body: M) -> tuple[str, ...]:
        """Return the routing parameter values of `body`, as strings."""
        return tuple([parameter_text(getattr(body, p)) for p in self.parameters])

    def parameters_from(self, given: dict[str, object]) -> tuple[str | None, ...]:
        """Order named parameter values as the schema does; a missing one is None.

        Raises:
            SchemaError: A name is not a parameter of this message.
        """
        unknown = set(given) - set(self.parameters)
        if unknown:
            raise SchemaError(
                f"message {self.name!r} has no parameter(s) {sorted(unknown)}; "
                f"its parameters are {list(self.parameters)}"
            )
        return tuple(
            None if given.get(p) is None else parameter_text(given[p])
            for p in self.parameters
        )


def parameter_text(value: object) -> str:
    """Return the text form of a parameter value: booleans as ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_specs: dict[type[Message], MessageSpec[Message]] = {}
_by_name: dict[str, MessageSpec[Message]] = {}
_lock = threading.Lock()


def message_spec(cls: type[M]) -> MessageSpec[M]:
    """Return the Chirp metadata of a generated message class.

    Raises:
        SchemaError: The class has no ``(chirp.message)`` option, or it is invalid, or
            another class already uses the same message name.
    """
    spec = _specs.get(cls)
    if spec is None:
        spec = _register(cls)
    return spec  # type: ignore[return-value]


def spec_by_name(name: str) -> MessageSpec[Message] | None:
    """Return the spec of a message name whose class has been seen, or None."""
    return _by_name.get(name)


def _register(cls: type[Message]) -> MessageSpec[Message]:
    spec = _read_spec(cls)
    with _lock:
        other = _by_name.get(spec.name)
        if other is not None and other.cls.DESCRIPTOR.full_name != _full_name(cls):
            raise SchemaError(
                f"message name {spec.name!r} is declared by both "
                f"{other.cls.DESCRIPTOR.full_name} and {_full_name(cls)}"
            )
        _by_name[spec.name] = spec
        _specs[cls] = spec
    return spec


def _full_name(cls: type[Message]) -> str:
    return str(cls.DESCRIPTOR.full_name)


def _read_spec(cls: type[Message]) -> MessageSpec[Message]:
    if not (isinstance(cls, type) and issubclass(cls, Message)):
        raise SchemaError(f"{cls!r} is not a generated Protobuf message class")
    descriptor = cls.DESCRIPTOR
    options = descriptor.GetOptions()
    if not options.HasExtension(options_pb2.message):
        raise SchemaError(
            f"{descriptor.full_name} has no (chirp.message) option; add "
            '`option (chirp.message) = {name: "..."};` to its schema'
        )
    declared = options.Extensions[options_pb2.message]
    fields = {f.name: (f.is_repeated, f.type) for f in descriptor.fields}
    check_declaration(descriptor.full_name, declared, fields)
    return MessageSpec(
        cls,
        declared.name,
        tuple(declared.parameters),
        int(declared.tail_ttl_ms),
        declared.idempotency_key,
        declared.sensitive,
    )


def check_declaration(
    full_name: str,
    declared: options_pb2.MessageOptions,
    fields: Mapping[str, tuple[bool, int]],
) -> None:
    """Check a ``(chirp.message)`` option against the message it is declared on.

    Args:
        full_name: The Protobuf message's full name, for the error.
        declared: The option's value.
        fields: Each field's name, with whether it is repeated and its type number.

    Raises:
        SchemaError: The name is not kebab-case, or a parameter is not a single
            string, integer or bool field, or is listed twice.
    """
    if not _NAME.fullmatch(declared.name):
        raise SchemaError(
            f"{full_name} declares message name {declared.name!r}; names are "
            "kebab-case: lowercase letters, digits and single dashes"
        )
    key = declared.idempotency_key
    if key and (
        key not in fields or fields[key][0] or fields[key][1] not in _ROUTABLE_TYPES
    ):
        raise SchemaError(
            f"idempotency_key {key!r} of {full_name} must name a single string, "
            "integer or bool field"
        )
    parameters = list(declared.parameters)
    if len(set(parameters)) != len(parameters):
        raise SchemaError(f"{full_name} lists a parameter twice: {parameters}")
    for parameter in parameters:
        if parameter not in fields:
            raise SchemaError(
                f"{full_name} lists parameter {parameter!r}, which is not "
                "one of its fields"
            )
        if not _routable(fields[parameter]):
            raise SchemaError(
                f"parameter {parameter!r} of {full_name} must be a single "
                "string, integer or bool field"
            )


def _routable(field: tuple[bool, int] | None) -> bool:
    """Tell whether a field (repeated, type) can give a parameter or key value."""
    return field is not None and not field[0] and field[1] in _ROUTABLE_TYPES


def failure_for(
    cls: type[Message], source: Message, *, code: str, text: str
) -> Message:
    """Build a failure message: fields shared with `source`, then `code` and `message`.

    A field is copied when both messages have a singular scalar field of that name and
    type; `code` and `message` are set when the failure message has such string fields.
    """
    failure = cls()
    fields = source.DESCRIPTOR.fields_by_name
    for field in cls.DESCRIPTOR.fields:
        twin = fields.get(field.name)
        if _same_scalar(field, twin):
            setattr(failure, field.name, getattr(source, field.name))
    own = cls.DESCRIPTOR.fields_by_name
    for name, value in (("code", code), ("message", text)):
        if name in own and own[name].type == FieldDescriptor.TYPE_STRING:
            setattr(failure, name, value)
    return failure


def _same_scalar(field: Any, twin: Any) -> bool:
    return (
        twin is not None
        and twin.type == field.type
        and not field.is_repeated
        and not twin.is_repeated
        and field.type != FieldDescriptor.TYPE_MESSAGE
    )
