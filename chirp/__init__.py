"""Chirp: operations, messages and workers for services that talk over NATS and Redis.

Users import from here and from `chirp.testing`; every other module is private.
"""

from chirp._backoff import Backoff
from chirp._client import Client
from chirp._context import Context, Published
from chirp._errors import (
    ChirpError,
    ChirpTimeoutError,
    DecodeError,
    InternalError,
    MessageFailed,
    OperationError,
    PublishError,
    SchemaError,
    TransportError,
    UsageError,
)
from chirp._operation import Operation, operation
from chirp._schema import MessageSpec, message_spec
from chirp._subscribe import Received, Subscription, TraceEntry
from chirp._worker import Worker, worker

__all__ = [
    "Backoff",
    "ChirpError",
    "ChirpTimeoutError",
    "Client",
    "Context",
    "DecodeError",
    "InternalError",
    "MessageFailed",
    "MessageSpec",
    "Operation",
    "OperationError",
    "PublishError",
    "Published",
    "Received",
    "SchemaError",
    "Subscription",
    "TraceEntry",
    "TransportError",
    "UsageError",
    "Worker",
    "message_spec",
    "operation",
    "worker",
]
