"""The API edge: one HTTP answer, in JSON, for whatever an endpoint raised.

Business errors answer with their code's status and description; Chirp's own
conditions (a missed deadline, an undecodable message, an unexpected failure) answer
with the built-in ``CHIRP_*`` codes. Unexpected failures never show their details to
the client unless asked to: the answer names the ray to look up instead.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from chirp._errors import (
    ChirpTimeoutError,
    DecodeError,
    InternalError,
    MessageFailed,
    OperationError,
)
from chirp._registry import ErrorCode, Registry, builtin_codes, default_registry

logger = logging.getLogger(__name__)

TIMEOUT = "CHIRP_TIMEOUT"
DECODE_FAILED = "CHIRP_DECODE_FAILED"
INTERNAL = "CHIRP_INTERNAL"

RETRY_AFTER_KEY = "retry_after"


@dataclass(frozen=True, slots=True)
class ApiResponse:
    """An HTTP answer to an error: status, headers and a JSON body.

    The body is ``{"code", "message", "documentation", "metadata"}``; documentation is
    a link to the code's entry, or ``None`` without a documentation URL or for a code
    no registry defines.
    """

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        """Return the body encoded as JSON; values JSON cannot hold become strings."""
        return json.dumps(self.body, default=str).encode()


@dataclass(frozen=True, slots=True)
class _Edge:
    registry: Registry
    docs_url: str | None
    verbose: bool

    def entry(self, code: str) -> ErrorCode:
        if code in self.registry:
            return self.registry.get(code)
        # A registry loaded without the built-in codes still answers with them.
        return next(entry for entry in builtin_codes() if entry.code == code)

    def answer(
        self, status: int, code: str, message: str, metadata: dict[str, Any]
    ) -> ApiResponse:
        link = None
        if self.docs_url is not None and code in self.registry:
            link = f"{self.docs_url}#{code.lower()}"
        body = {
            "code": code,
            "message": message,
            "documentation": link,
            "metadata": metadata,
        }
        return ApiResponse(status, body, _retry_after(metadata))


def api_error(
    error: BaseException,
    *,
    registry: Registry | None = None,
    verbose: bool = False,
    docs_url: str | None = None,
    ray_id: str | None = None,
) -> ApiResponse:
    """Return the HTTP answer to an exception an endpoint raised.

    - `OperationError`: its own status, code, message and metadata. A ``retry_after``
      number in the metadata (as ``CHIRP_RATE_LIMITED`` has) sets ``Retry-After``.
    - `MessageFailed`: the failure message carries a code but no status, so the
      status is the one the registry gives the code (400 for an unknown code).
    - `ChirpTimeoutError`: 504 ``CHIRP_TIMEOUT``.
    - `DecodeError`: 502 ``CHIRP_DECODE_FAILED``.
    - Anything else, `InternalError` included: 500 ``CHIRP_INTERNAL``, with a generic
      message naming the ray id and the details only if `verbose`.

    Args:
        error: What the endpoint raised.
        registry: Where codes are looked up; the default registry if not given.
        verbose: Put the exception's text and cause in the metadata of 5xx answers.
            For development: the text may reveal internals.
        docs_url: Base URL of the error reference (``chirp errors`` writes one);
            a code's link is the URL and ``#`` and the code in lower case.
        ray_id: The ray of the request, for errors that do not carry one.
    """
    edge = _Edge(registry or default_registry(), docs_url, verbose)
    if isinstance(error, MessageFailed):
        return _message_failed(edge, error)
    if isinstance(error, OperationError):
        return edge.answer(error.status, error.code, error.message, error.metadata)
    if isinstance(error, InternalError):
        ray_id = error.ray_id
    if isinstance(error, ChirpTimeoutError | DecodeError):
        return _chirp_condition(edge, error, ray_id)
    return _internal(edge, error, ray_id)


def _message_failed(edge: _Edge, error: MessageFailed) -> ApiResponse:
    status = error.status
    if error.code in edge.registry:
        status = edge.registry.get(error.code).status
    return edge.answer(status, error.code, error.message, error.metadata)


def _chirp_condition(
    edge: _Edge, error: ChirpTimeoutError | DecodeError, ray_id: str | None
) -> ApiResponse:
    timed_out = isinstance(error, ChirpTimeoutError)
    entry = edge.entry(TIMEOUT if timed_out else DECODE_FAILED)
    extra = {"ray_id": ray_id}
    if timed_out:
        logger.warning("request timed out: %s", error, extra=extra)
    else:
        logger.error("reply could not be decoded: %s", error, extra=extra)

    metadata = _details(edge, error, ray_id)
    return edge.answer(entry.status, entry.code, entry.describe({}), metadata)


def _internal(edge: _Edge, error: BaseException, ray_id: str | None) -> ApiResponse:
    entry = edge.entry(INTERNAL)
    logger.error("request failed: %s", error, extra={"ray_id": ray_id}, exc_info=error)

    context = {} if ray_id is None else {"ray_id": ray_id}
    message = entry.describe(context)
    return edge.answer(entry.status, entry.code, message, _details(edge, error, ray_id))


def _details(edge: _Edge, error: BaseException, ray_id: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {} if ray_id is None else {"ray_id": ray_id}
    if not edge.verbose:
        return metadata
    metadata["detail"] = f"{type(error).__name__}: {error}"
    cause = error.__cause__
    if cause is not None:
        metadata["cause"] = f"{type(cause).__name__}: {cause}"
    return metadata


def _retry_after(metadata: dict[str, Any]) -> dict[str, str]:
    seconds = metadata.get(RETRY_AFTER_KEY)
    # bool is an int to Python, but never a number of seconds.
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return {}
    # The header takes whole seconds: round up, so a client never comes back early.
    return {"Retry-After": str(max(0, math.ceil(seconds)))}
