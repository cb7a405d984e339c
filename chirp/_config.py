"""Connection settings, from arguments or ``CHIRP_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass

from chirp._errors import UsageError

NATS_URL_VARIABLE = "CHIRP_NATS_URL"
REDIS_URL_VARIABLE = "CHIRP_REDIS_URL"
NAMESPACE_VARIABLE = "CHIRP_NAMESPACE"
RETENTION_VARIABLE = "CHIRP_STREAM_RETENTION"


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the servers are and how hard to try them.

    Attributes:
        nats_url: ``nats://host:port``.
        redis_url: ``redis://host:port/db``.
        publish_attempts: Tries of a durable write before `PublishError`.
        publish_retry_delay: Seconds before the second try; doubles each time.
        namespace: Prefix of every subject and key; empty by default.
        stream_retention: Entries a stream keeps at least; older ones are trimmed
            once every consumer group has acknowledged them.
        test: Mark every trace entry as made inside a test.
    """

    nats_url: str
    redis_url: str
    publish_attempts: int = 5
    publish_retry_delay: float = 0.05
    namespace: str = ""
    stream_retention: int = 10_000
    test: bool = False

    @classmethod
    def resolve(
        cls,
        *,
        nats_url: str | None = None,
        redis_url: str | None = None,
        namespace: str | None = None,
        stream_retention: int | None = None,
        test: bool = False,
    ) -> Settings:
        """Return settings from the arguments, falling back to the environment.

        Raises:
            UsageError: A URL is neither given nor set in the environment.
        """
        nats = nats_url or os.environ.get(NATS_URL_VARIABLE)
        redis = redis_url or os.environ.get(REDIS_URL_VARIABLE)
        missing = [
            variable
            for variable, value in (
                (NATS_URL_VARIABLE, nats),
                (REDIS_URL_VARIABLE, redis),
            )
            if not value
        ]
        if missing:
            raise UsageError(
                f"no server URL for {' and '.join(missing)}: set the variable, pass "
                "--nats-url/--redis-url (or the Client argument), or use `chirp dev` "
                "to start embedded servers"
            )
        assert nats is not None and redis is not None
        if namespace is None:
            namespace = os.environ.get(NAMESPACE_VARIABLE, "")
        if stream_retention is None:
            stream_retention = _int_variable(RETENTION_VARIABLE, 10_000)
        return cls(
            nats_url=nats,
            redis_url=redis,
            namespace=namespace,
            stream_retention=stream_retention,
            test=test,
        )


def _int_variable(variable: str, default: int) -> int:
    text = os.environ.get(variable)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{variable} must be a whole number, got {text!r}") from None
    if value < 0:
        raise UsageError(f"{variable} must not be negative, got {value}")
    return value
