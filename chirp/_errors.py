"""Exceptions raised by Chirp.

Every exception Chirp raises derives from `ChirpError`. The families are grouped by what
the caller can do about them::

    ChirpError
    ├── TransportError          NATS or Redis failed; retrying later may help
    │   └── PublishError        a message's durable write failed after its retries
    ├── ChirpTimeoutError       a deadline passed (also a builtin TimeoutError)
    ├── DecodeError             an envelope or body could not be decoded
    ├── OperationError          a business error with a code, raised on purpose
    │   └── MessageFailed       publish-and-wait received the failure message
    ├── InternalError           an operation failed unexpectedly; wraps the cause
    ├── EmbeddedServerError     an embedded nats-server or valkey-server did not start
    └── UsageError              Chirp was used wrongly (bad schema, wrong type, ...)
        ├── SchemaError         a Protobuf class lacks or misdeclares its Chirp option
        ├── CodegenError        protoc rejected a .proto, or generated code is stale
        ├── InvalidErrorDefinition  an errors.toml file breaks a rule of the format
        ├── UnknownErrorCode        no loaded errors.toml defines the code
        └── ErrorContextMismatch    the context does not match a code's placeholders

Control signals are not errors and live elsewhere.

One exception stands outside the tree on purpose: `InvariantViolated`, raised by
`chirp.internal_assert`, is an `AssertionError`. It means a bug in the code that called
it, so an operation wraps it in `InternalError` like any other unexpected exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chirp._subscribe import Received


class ChirpError(Exception):
    """Root of every exception Chirp raises."""


class TransportError(ChirpError):
    """NATS or Redis could not be reached or answered with an error."""


class PublishError(TransportError):
    """A message could not be written durably; it was not published."""


class ChirpTimeoutError(ChirpError, TimeoutError):
    """A deadline passed before the awaited thing happened."""


class DecodeError(ChirpError):
    """An envelope or a message body could not be decoded."""


class UsageError(ChirpError):
    """Chirp was called in a way it does not support."""


class SchemaError(UsageError):
    """A Protobuf class lacks its Chirp option or declares it wrongly."""


class OperationError(ChirpError):
    """A business error with a stable code, raised on purpose and meant for the caller.

    Args:
        code: Stable upper-snake-case name, e.g. ``USER_NOT_FOUND``.
        message: One sentence for humans.
        status: HTTP status the error maps to at the API edge.
        metadata: Extra JSON-serialisable facts for the caller.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.metadata: dict[str, Any] = dict(metadata or {})


class MessageFailed(OperationError):
    """Publish-and-wait received the failure message instead of the completion.

    The failure message itself is on `received`; its body usually carries the reason.
    """

    def __init__(self, received: Received[Any], *, code: str, message: str) -> None:
        super().__init__(code, message, status=400)
        self.received = received


class InternalError(ChirpError):
    """An operation raised something other than a Chirp error.

    The original exception is the `__cause__`; `ray_id` names the ray to look up.
    """

    def __init__(self, message: str, *, ray_id: str) -> None:
        super().__init__(message)
        self.ray_id = ray_id


class InvalidErrorDefinition(UsageError):
    """An ``errors.toml`` file cannot be read or breaks a rule of the format.

    Attributes:
        source: The file (or package resource) at fault.
        code: The error code whose entry is wrong, if the fault is in one entry.
    """

    def __init__(self, problem: str, *, source: str, code: str | None = None) -> None:
        where = source if code is None else f"{source}: {code}"
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.code = code


class UnknownErrorCode(UsageError):
    """An error code was raised or looked up that no loaded ``errors.toml`` defines."""

    def __init__(self, code: str) -> None:
        super().__init__(f"error code {code!r} is not defined in the registry")
        self.code = code


class ErrorContextMismatch(UsageError):
    """The context given for an error code lacks or adds placeholders.

    Attributes:
        code: The error code.
        missing: Placeholders the description needs and the context lacks.
        unexpected: Context keys the description has no placeholder for.
    """

    def __init__(self, code: str, *, missing: list[str], unexpected: list[str]) -> None:
        problems = []
        if missing:
            problems.append(f"lacks {', '.join(missing)}")
        if unexpected:
            problems.append(f"has no placeholder for {', '.join(unexpected)}")
        super().__init__(f"the context of error {code} {' and '.join(problems)}")
        self.code = code
        self.missing = missing
        self.unexpected = unexpected


class InvariantViolated(AssertionError):
    """A condition the code relies on was false: a bug, not a business error.

    Raised by `chirp.internal_assert`; not a `ChirpError`, so that an operation wraps
    it in `InternalError` with the ray id.

    Attributes:
        description: What should have held.
        location: ``file:line`` of the failed assertion.
    """

    def __init__(self, description: str, *, location: str) -> None:
        super().__init__(f"invariant violated at {location}: {description}")
        self.description = description
        self.location = location
