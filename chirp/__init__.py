"""Chirp: operations, messages and workers for services that talk over NATS and Redis.

Users import from here and from `chirp.testing`; every other module is private.
"""

from chirp._backoff import Backoff
from chirp._client import Client
from chirp._context import Context, Published
from chirp._edge import ApiResponse, api_error
from chirp._errors import (
    ChirpError,
    ChirpTimeoutError,
    DecodeError,
    ErrorContextMismatch,
    InternalError,
    InvalidErrorDefinition,
    InvariantViolated,
    MessageFailed,
    OperationError,
    PublishError,
    SchemaError,
    TransportError,
    UnknownErrorCode,
    UsageError,
)
from chirp._operation import Operation, operation
from chirp._registry import (
    ErrorCode,
    Registry,
    bail,
    default_registry,
    ensure,
    error,
    internal_assert,
    unwrap,
    use_registry,
)
from chirp._schema import MessageSpec, message_spec
from chirp._subscribe import Received, Subscription, TraceEntry
from chirp._worker import Worker, worker

__all__ = [
    "ApiResponse",
    "Backoff",
    "ChirpError",
    "ChirpTimeoutError",
    "Client",
    "Context",
    "DecodeError",
    "ErrorCode",
    "ErrorContextMismatch",
    "InternalError",
    "InvalidErrorDefinition",
    "InvariantViolated",
    "MessageFailed",
    "MessageSpec",
    "Operation",
    "OperationError",
    "PublishError",
    "Published",
    "Received",
    "Registry",
    "SchemaError",
    "Subscription",
    "TraceEntry",
    "TransportError",
    "UnknownErrorCode",
    "UsageError",
    "Worker",
    "api_error",
    "bail",
    "default_registry",
    "ensure",
    "error",
    "internal_assert",
    "message_spec",
    "operation",
    "unwrap",
    "use_registry",
    "worker",
]
