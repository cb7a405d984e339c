"""Names on the wire: NATS subjects, Redis keys, parameter escaping, envelope bytes.

`docs/wire.md` specifies everything here for implementers in other languages; keep
the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from google.protobuf.message import DecodeError as ProtobufDecodeError

from chirp._errors import DecodeError, UsageError
from chirp.envelope_pb2 import Envelope

ENVELOPE_FIELD = b"e"
EMPTY_TOKEN = "_"
WILDCARD = "*"

# Bytes that stand for themselves in a token. Everything else, "_" included, is written
# as "_" and two uppercase hex digits, so a lone "_" can only mean the empty string.
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9-]+")
_TOKEN = re.compile(r"(?:[A-Za-z0-9-]|_[0-9A-F]{2})+")


def escape(value: str) -> str:
    """Return the subject token and key segment for one parameter value.

    The result contains only ``A-Z a-z 0-9 - _``, never a NATS separator or wildcard nor
    a Redis key separator, and distinct values always give distinct tokens.
    """
    if not value:
        return EMPTY_TOKEN
    if _PLAIN_TEXT.fullmatch(value):
        return value
    return "".join(
        chr(byte) if byte in _PLAIN else f"_{byte:02X}" for byte in value.encode()
    )


def unescape(token: str) -> str:
    """Return the parameter value a token stands for.

    Raises:
        DecodeError: The token is not one `escape` can produce.
    """
    if token == EMPTY_TOKEN:
        return ""
    if not _TOKEN.fullmatch(token):
        raise DecodeError(f"{token!r} is not an escaped parameter token")
    raw = bytearray()
    index = 0
    while index < len(token):
        if token[index] == "_":
            raw.append(int(token[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.append(ord(token[index]))
            index += 1
    try:
        value = raw.decode()
    except UnicodeDecodeError as error:
        raise DecodeError(f"token {token!r} does not decode to UTF-8") from error
    if escape(value) != token:
        # Each value has one token; "_41" for "A" is a forgery, not an escape.
        raise DecodeError(f"{token!r} is not the escaped form of {value!r}")
    return value


_NAMESPACE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


class Names:
    """Subjects and keys of one namespace.

    A namespace lets several systems (or test runs) share one NATS and one Redis without
    seeing each other's messages. The default namespace is empty.

    Raises:
        UsageError: The namespace is not kebab-case.
    """

    __slots__ = ("_inboxes", "_keys", "_subjects", "namespace")

    def __init__(self, namespace: str = "") -> None:
        if namespace and not _NAMESPACE.fullmatch(namespace):
            raise UsageError(f"namespace {namespace!r} must be kebab-case")
        self.namespace = namespace
        self._subjects = f"chirp.{namespace}.msg" if namespace else "chirp.msg"
        self._keys = f"chirp:{namespace}" if namespace else "chirp"
        self._inboxes = f"chirp.{namespace}.inbox" if namespace else "chirp.inbox"

    def subject(self, name: str, parameters: Iterable[str | None]) -> str:
        """Return the NATS subject of a message; a None parameter is a wildcard."""
        tokens = [WILDCARD if p is None else escape(p) for p in parameters]
        return ".".join([self._subjects, name, *tokens])

    def inbox(self, token: str) -> str:
        """Return the subject prefix of one client's reply inbox."""
        return f"{self._inboxes}.{token}"

    def stream_key(self, name: str) -> str:
        """Return the Redis Stream that holds every message of one name."""
        return f"{self._keys}:stream:{name}"

    def tail_key(self, name: str, parameters: Sequence[str]) -> str:
        """Return the Redis key that holds the tail of one parameter set."""
        return ":".join([self._keys, "tail", name, *(escape(p) for p in parameters)])

    def dead_letter_key(self, worker: str) -> str:
        """Return the Redis Stream that holds a worker's dead letters."""
        return f"{self._keys}:dead:{worker}"

    def retry_key(self, worker: str) -> str:
        """Return the sorted set of a worker's scheduled retries (score: due ms)."""
        return f"{self._keys}:retry:{worker}"

    def attempts_key(self, worker: str) -> str:
        """Return the hash of failed attempts per stream entry id of a worker."""
        return f"{self._keys}:attempts:{worker}"

    def retry_data_key(self, worker: str) -> str:
        """Return the hash holding a copy of each scheduled retry's envelope."""
        return f"{self._keys}:retry-data:{worker}"

    def done_key(self, worker: str, idempotency_key: str) -> str:
        """Return the marker of one idempotency key of a worker."""
        return f"{self._keys}:done:{worker}:{escape(idempotency_key)}"

    def owners_key(self, worker: str) -> str:
        """Return the hash naming the consumer running each scheduled retry."""
        return f"{self._keys}:owner:{worker}"

    def stats_key(self, worker: str) -> str:
        """Return the hash of a worker's counters (retries, dead letters, ...)."""
        return f"{self._keys}:stats:{worker}"


def decode_envelope(data: bytes, *, where: str) -> Envelope:
    """Decode envelope bytes.

    Args:
        data: The bytes as read from Redis or NATS.
        where: Names the source in the error, e.g. a stream key and entry id.

    Raises:
        DecodeError: The bytes are not an envelope, or it lacks a name.
    """
    envelope = Envelope()
    try:
        envelope.ParseFromString(data)
    except ProtobufDecodeError as error:
        raise DecodeError(
            f"{where}: {len(data)} bytes are not a Chirp envelope ({error})"
        ) from error
    if not envelope.name:
        raise DecodeError(f"{where}: envelope has no message name")
    return envelope
