"""Contexts: who is asking, on behalf of which ray, and the calls they can make."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from google.protobuf.message import Message

from chirp._errors import ChirpTimeoutError, MessageFailed, UsageError
from chirp._ids import new_id
from chirp._metrics import PUBLISH_SECONDS, LocalHistogram, histogram
from chirp._publish import DurableWrite
from chirp._schema import MessageSpec, message_spec
from chirp._subscribe import Received, Subscription, TraceEntry, received_from
from chirp._tracing import active as tracing_active
from chirp._tracing import inject, publish_span, wait_span
from chirp._wire import Names, decode_envelope
from chirp.envelope_pb2 import Envelope, ReplyTo
from chirp.envelope_pb2 import TraceEntry as TraceEntryProto

if TYPE_CHECKING:
    from chirp._client import Client
    from chirp._operation import Operation
    from chirp._store import Taken

M = TypeVar("M", bound=Message)
C = TypeVar("C", bound=Message)
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

Params = Mapping[str, str | int | bool | None]

logger = logging.getLogger(__name__)
_context_logger = logging.getLogger("chirp.context")


class Published(NamedTuple):
    """What a publish returns: the message's request id and its stream entry id."""

    request_id: str
    entry_id: str


class Context:
    """The identity of one request and the calls it can make.

    Every operation call and every handled message runs with its own context. Root
    contexts come from `Client.context`; child contexts are made by Chirp.

    Attributes:
        name: The context's name: the worker, operation or client it belongs to.
        ray_id: Shared by everything one outside request caused.
        request_id: This request's own id.
        trace: The hops that led here, oldest first.
        ts: When this context started, in ms since the Unix epoch.
        req_ts: When the triggering request started (a message's publish time).
        attempt: For a worker, which attempt at the message this is (from 1).
        redelivered: For a worker, True unless this is the message's first delivery
            (a retry, or a takeover after a host stopped).
        deadline: `loop.time()` by which the work must finish, or None.
    """

    __slots__ = (
        "_client",
        "_log",
        "_own_entry",
        "_parent",
        "_received",
        "_reply",
        "_reply_wire",
        "_trace",
        "_trace_wire",
        "attempt",
        "deadline",
        "name",
        "ray_id",
        "redelivered",
        "req_ts",
        "request_id",
        "ts",
    )

    def __init__(
        self,
        client: Client,
        *,
        name: str,
        ray_id: str,
        request_id: str,
        trace: tuple[TraceEntry, ...] | None = None,
        parent: Context | None = None,
        ts: int,
        req_ts: int | None = None,
        attempt: int = 1,
        redelivered: bool = False,
        deadline: float | None = None,
    ) -> None:
        self._client = client
        self._log: logging.LoggerAdapter[logging.Logger] | None = None
        # A child's trace is its parent's plus the parent's own entry (a worker's, in
        # `for_message`, is its message's); both are built only when something reads
        # them: most operation calls and many handlers never do.
        self._trace = trace if parent is None else None
        self._parent = parent
        self._received: Received[Any] | None = None
        self._reply: ReplyTo | object | None = _UNKNOWN
        self._reply_wire = b""
        self._own_entry: TraceEntry | None = None
        self._trace_wire: bytes | None = None
        self.name = name
        self.ray_id = ray_id
        self.request_id = request_id
        self.ts = ts
        self.req_ts = ts if req_ts is None else req_ts
        self.attempt = attempt
        self.redelivered = redelivered
        self.deadline = deadline

    @property
    def trace(self) -> tuple[TraceEntry, ...]:
        """The hops that led here, oldest first."""
        if self._trace is None:
            parent, received = self._parent, self._received
            if parent is not None:
                self._trace = (*parent.trace, parent.own_trace_entry())
            else:
                self._trace = () if received is None else received.trace
        return self._trace

    @classmethod
    def for_message(
        cls, client: Client, name: str, received: Received[Any], entry: Taken, ts: int
    ) -> Context:
        """Return the context of a worker handling `received` (one per message)."""
        # The same as the constructor, minus the cost of binding keyword arguments.
        ctx = object.__new__(cls)
        ctx._client = client
        ctx._log = None
        ctx._trace = None
        ctx._parent = None
        ctx._received = received
        ctx._reply = _UNKNOWN
        ctx._reply_wire = b""
        ctx._own_entry = None
        ctx._trace_wire = None
        ctx.name = name
        ctx.ray_id = received.ray_id
        ctx.request_id = received.request_id
        ctx.ts = ts
        ctx.req_ts = received.ts
        ctx.attempt = entry.attempt
        ctx.redelivered = entry.redelivered
        ctx.deadline = None
        return ctx

    def _reply_address(self) -> ReplyTo | None:
        """Return the reply address this context passes on (its message's, caller's)."""
        if self._reply is _UNKNOWN:
            parent, received = self._parent, self._received
            if parent is not None:
                reply = parent._reply_address()
            else:
                reply = None if received is None else received.reply_address()
            self._reply = reply
            if reply is not None:
                self._reply_wire = Envelope(reply_to=reply).SerializeToString()
        return cast(ReplyTo | None, self._reply)

    @property
    def client(self) -> Client:
        """The connected client this context uses."""
        return self._client

    @property
    def req_dt(self) -> float:
        """Seconds since the triggering request started."""
        return time.time() - self.req_ts / 1000

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry ray id, request id, context name and attempt."""
        if self._log is None:
            self._log = logging.LoggerAdapter(
                _context_logger,
                {
                    "ray_id": self.ray_id,
                    "request_id": self.request_id,
                    "context": self.name,
                    "attempt": self.attempt,
                },
            )
        return self._log

    def child(self, name: str, *, timeout: float | None = None) -> Context:
        """Return a context for work done on behalf of this one.

        Same ray, a new request id, this context appended to the trace, and a deadline
        no later than this context's.
        """
        deadline = self.deadline
        if timeout is not None:
            own = asyncio.get_running_loop().time() + timeout
            deadline = own if deadline is None else min(deadline, own)
        return Context(
            self._client,
            name=name,
            ray_id=self.ray_id,
            request_id=new_id(),
            parent=self,
            ts=int(time.time() * 1000),
            req_ts=self.req_ts,
            deadline=deadline,
        )

    def own_trace_entry(self) -> TraceEntry:
        """Return the hop this context adds to the trace of what it causes."""
        if self._own_entry is None:
            test = self._client.settings.test
            self._own_entry = TraceEntry(self.name, self.request_id, self.ts, test)
        return self._own_entry

    async def call(self, operation: Operation[Req, Resp], request: Req) -> Resp:
        """Call an operation on behalf of this context: ``operation(ctx, request)``."""
        return await operation(self, request)

    async def msg(
        self, body: Message, *, idempotency_key: str | None = None
    ) -> Published:
        """Publish a message: write it durably to its stream, then announce it on NATS.

        Returns once the stream write succeeded.

        Args:
            body: The message.
            idempotency_key: Workers complete each key at most once; defaults to the
                value of the field the schema names as ``idempotency_key``, if any.

        Raises:
            PublishError: The durable write failed after its retries.
            SchemaError: The body's class has no valid ``(chirp.message)`` option.
        """
        spec = message_spec(type(body))
        return await self._publish(body, spec, new_id(), idempotency_key)

    async def _publish(
        self,
        body: Message,
        spec: MessageSpec[Any],
        request_id: str,
        idempotency_key: str | None = None,
        reply_to: ReplyTo | None = None,
    ) -> Published:
        # Publishing is on every hot path: no span unless one is recorded, and the
        # write is awaited as a bare future, not through another coroutine.
        if tracing_active():
            with publish_span(spec.name, self.ray_id):
                write = self._durable_write(
                    body, spec, request_id, idempotency_key, reply_to
                )
                entry_id = await self._client.writer.write(write)
        else:
            write = self._durable_write(
                body, spec, request_id, idempotency_key, reply_to
            )
            entry_id = await self._client.writer.write(write)
        return Published(request_id, entry_id.decode())

    def _durable_write(
        self,
        body: Message,
        spec: MessageSpec[Any],
        request_id: str,
        idempotency_key: str | None,
        reply_to: ReplyTo | None,
    ) -> DurableWrite:
        parameters = spec.parameter_values(body)
        if idempotency_key is None:
            idempotency_key = spec.idempotency_key_of(body)
        data = self._envelope(spec.name, parameters, body, request_id, idempotency_key)
        # A reply address set for this publish replaces the one passed on to it.
        if reply_to is None:
            reply_to = self._reply_address()
            data += self._reply_wire
        else:
            data += Envelope(reply_to=reply_to).SerializeToString()
        names = self._client.names
        stream, latency = _per_message(names, spec.name)
        write = DurableWrite(
            stream, data, names.subject(spec.name, parameters), latency=latency
        )
        if spec.tail_ttl_ms:
            write.tail_key = names.tail_key(spec.name, parameters)
            write.tail_ttl_ms = spec.tail_ttl_ms
        if reply_to is not None and spec.name in reply_to.names:
            write.copy_to = reply_to.subject
        return write

    def _envelope(
        self,
        name: str,
        parameters: tuple[str, ...],
        body: Message,
        request_id: str,
        idempotency_key: str,
    ) -> bytes:
        envelope = Envelope(
            name=name,
            parameters=parameters,
            ray_id=self.ray_id,
            request_id=request_id,
            ts=int(time.time() * 1000),
            body=body.SerializeToString(),
            idempotency_key=idempotency_key,
        )
        if tracing_active():
            inject(envelope.otel)
        # Serialised Protobuf messages concatenate into their merge, so the trace,
        # the same for everything this context publishes, is serialised only once.
        return envelope.SerializeToString() + self._trace_bytes()

    def _trace_bytes(self) -> bytes:
        if self._trace_wire is None:
            hops = [
                TraceEntryProto(
                    context_name=t.context_name,
                    request_id=t.request_id,
                    ts=t.ts,
                    test=t.test,
                )
                for t in (*self.trace, self.own_trace_entry())
            ]
            self._trace_wire = Envelope(trace=hops).SerializeToString()
        return self._trace_wire

    async def subscribe(
        self, message: type[M], params: Params | None = None
    ) -> Subscription[M]:
        """Subscribe to a message in realtime; a parameter left out matches any value.

        The subscription is registered on the server when this returns. Close it when
        done, or use it as an async context manager.
        """
        spec = message_spec(message)
        values = spec.parameters_from(_as_dict(params))
        subscription: Subscription[M] = Subscription(self._client.nats, [spec])
        await subscription.start([self._client.names.subject(spec.name, values)])
        return subscription

    async def tail_read(
        self, message: type[M], params: Params | None = None
    ) -> Received[M] | None:
        """Return the latest message of one parameter set, or None if none is kept.

        Raises:
            UsageError: The message keeps no tail, or a parameter is missing.
        """
        spec = message_spec(message)
        key = _tail_key_of(self._client.names, spec, params)
        data = cast(bytes | None, await self._client.redis.get(key))
        if data is None:
            return None
        envelope = decode_envelope(data, where=f"tail {key}")
        return received_from(spec, envelope, where=f"tail {key}")

    async def tail_anchor(
        self,
        message: type[M],
        params: Params | None = None,
        *,
        since: int,
        timeout: float,
    ) -> Received[M]:
        """Return the first message of a parameter set published after `since`.

        Reads the tail first; if it is not newer than `since` (ms since the epoch),
        waits for the next one on NATS.

        Raises:
            ChirpTimeoutError: No newer message came within `timeout` seconds.
        """
        _check_timeout(timeout)
        spec = message_spec(message)
        _tail_key_of(self._client.names, spec, params)
        async with await self.subscribe(message, params) as subscription:
            try:
                async with asyncio.timeout(timeout):
                    tail = await self.tail_read(message, params)
                    if tail is not None and tail.ts > since:
                        return tail
                    while True:
                        received = await subscription.next()
                        if received.ts > since:
                            return received
            except TimeoutError:
                raise ChirpTimeoutError(
                    f"no {spec.name!r} message newer than {since} within {timeout}s"
                ) from None

    async def publish_wait(
        self,
        body: Message,
        complete: type[C],
        *,
        fail: type[Message] | None = None,
        timeout: float = 60.0,
    ) -> Received[C]:
        """Publish a message and wait for its completion message.

        The message carries a reply address, kept by everything it causes: the first
        `complete` (or `fail`) message published on its behalf, by the worker that
        handles it or further down the ray, comes back to this call through the
        client's reply inbox, after its own durable write. A reply that shares a
        parameter with the message must have the same value for it.

        Raises:
            MessageFailed: The failure message came first; it is on `.received`.
            ChirpTimeoutError: Neither came within `timeout` seconds.
            PublishError: The durable write failed.
            TransportError: The client was closed while the call waited.
        """
        _check_timeout(timeout)
        spec = message_spec(type(body))
        replies: list[MessageSpec[Any]] = [message_spec(complete)]
        if fail is not None:
            replies.append(message_spec(fail))
        known = dict(zip(spec.parameters, spec.parameter_values(body), strict=True))
        inbox = await self._client.inbox()
        request_id = new_id()
        reply, address = inbox.expect(request_id, replies, known)
        try:
            async with asyncio.timeout(timeout):
                with wait_span(spec.name, self.ray_id):
                    await self._publish(body, spec, request_id, reply_to=address)
                    received = await reply
        except TimeoutError:
            raise ChirpTimeoutError(
                f"no {replies[0].name!r} reply to {spec.name!r} request {request_id} "
                f"within {timeout}s"
            ) from None
        finally:
            inbox.forget(request_id)
        if received.name != replies[0].name:
            raise _failure(received, spec.name)
        return received


# Not yet looked up: a context's reply address is found at its first publish.
_UNKNOWN = object()
_per_message_cache: dict[tuple[str, str], tuple[str, LocalHistogram]] = {}


def _per_message(names: Names, message: str) -> tuple[str, LocalHistogram]:
    """Return a message's stream key and latency histogram, computed once."""
    key = (names.namespace, message)
    found = _per_message_cache.get(key)
    if found is None:
        found = (names.stream_key(message), histogram(PUBLISH_SECONDS, message))
        _per_message_cache[key] = found
    return found


def _as_dict(params: Params | None) -> dict[str, object]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise UsageError(
            f"parameters are a mapping of name to value, not {type(params).__name__}"
        )
    return dict(params)


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise UsageError(f"a timeout must be above 0 seconds, got {timeout}")


def _tail_key_of(names: Names, spec: MessageSpec[Any], params: Params | None) -> str:
    if not spec.tail_ttl_ms:
        raise UsageError(
            f"message {spec.name!r} keeps no tail: it declares no tail_ttl_ms"
        )
    values = spec.parameters_from(_as_dict(params))
    missing = [p for p, v in zip(spec.parameters, values, strict=True) if v is None]
    if missing:
        raise UsageError(f"the tail of {spec.name!r} needs parameter(s) {missing}")
    return names.tail_key(spec.name, [v for v in values if v is not None])


def _failure(received: Received[Any], request_name: str) -> MessageFailed:
    body = received.body
    code = getattr(body, "code", "") if _has_field(body, "code") else ""
    text = getattr(body, "message", "") if _has_field(body, "message") else ""
    return MessageFailed(
        received,
        code=str(code) or received.name.upper().replace("-", "_"),
        message=str(text) or f"{request_name!r} failed with {received.name!r}",
    )


def _has_field(body: Message, name: str) -> bool:
    return name in body.DESCRIPTOR.fields_by_name
