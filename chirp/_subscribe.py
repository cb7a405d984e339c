"""Realtime delivery over NATS: subscriptions, tails, and waiting for a reply.

Everything here is realtime: a subscriber sees what is published while it is subscribed.
Tails add the latest message per parameter set for those who arrive later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Generic, NamedTuple, Self, TypeVar

from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from chirp._errors import ChirpTimeoutError, DecodeError, TransportError
from chirp._schema import MessageSpec
from chirp._wire import decode_envelope
from chirp.envelope_pb2 import Envelope, ReplyTo

M = TypeVar("M", bound=Message)

logger = logging.getLogger(__name__)


class TraceEntry(NamedTuple):
    """One hop of a ray: the context that published a message or called an operation."""

    context_name: str
    request_id: str
    ts: int
    test: bool = False


class Received(Generic[M]):
    """A message as a worker, a subscriber, a tail reader or a waiter receives it.

    Read-only by convention. The trace and the parameters are built from the envelope
    the first time they are read: a worker handler that reads neither never pays them.

    Attributes:
        body: The decoded body.
        name: The message name.
        ray_id: The ray it belongs to.
        request_id: Its own request id.
        ts: When it was published, in ms since the Unix epoch.
    """

    __slots__ = (
        "_envelope",
        "_parameters",
        "_trace",
        "body",
        "name",
        "ray_id",
        "request_id",
        "ts",
    )

    def __init__(
        self,
        *,
        body: M,
        name: str,
        parameters: tuple[str, ...] = (),
        ray_id: str,
        request_id: str,
        ts: int,
        trace: tuple[TraceEntry, ...] = (),
    ) -> None:
        self.body = body
        self.name = name
        self.ray_id = ray_id
        self.request_id = request_id
        self.ts = ts
        self._parameters: tuple[str, ...] | None = parameters
        self._trace: tuple[TraceEntry, ...] | None = trace
        # Set by `received_from`: the source of the trace and the parameters.
        self._envelope: Envelope | None = None

    @property
    def parameters(self) -> tuple[str, ...]:
        """Its routing parameter values, in schema order."""
        if self._parameters is None:
            source = self._envelope
            self._parameters = () if source is None else tuple(source.parameters)
        return self._parameters

    @property
    def trace(self) -> tuple[TraceEntry, ...]:
        """The hops that led to it, oldest first."""
        if self._trace is None:
            source = self._envelope
            self._trace = (
                ()
                if source is None
                else tuple(
                    TraceEntry(t.context_name, t.request_id, t.ts, t.test)
                    for t in source.trace
                )
            )
        return self._trace

    def reply_address(self) -> ReplyTo | None:
        """Return where a publish-and-wait call waits for what this message causes."""
        source = self._envelope
        if source is None or not source.HasField("reply_to"):
            return None
        return source.reply_to

    def passed_through(self, request_id: str) -> bool:
        """Tell whether the request `request_id` is a hop of this message's trace."""
        return any(entry.request_id == request_id for entry in self.trace)

    def visited(self, context_name: str) -> bool:
        """Tell whether a context named `context_name` is a hop of the trace."""
        hops = self.trace if self._envelope is None else self._envelope.trace
        for hop in hops:
            if hop.context_name == context_name:
                return True
        return False

    def __repr__(self) -> str:
        return (
            f"Received(name={self.name!r}, ray_id={self.ray_id!r}, "
            f"request_id={self.request_id!r}, ts={self.ts}, "
            f"parameters={self.parameters!r}, body={self.body!r})"
        )


def received_from(
    spec: MessageSpec[M], envelope: Envelope, *, where: str
) -> Received[M]:
    """Decode the body of an envelope into a `Received`.

    Raises:
        DecodeError: The envelope is of another message, or its body does not parse.
    """
    name = envelope.name
    if name != spec.name:
        raise DecodeError(f"{where}: expected a {spec.name!r} message, got {name!r}")
    body = spec.cls()
    data = envelope.body
    try:
        body.ParseFromString(data)
    except ProtobufDecodeError as error:
        raise DecodeError(
            f"{where}: body of {spec.name!r} ({len(data)} bytes) does not "
            f"parse as {spec.cls.DESCRIPTOR.full_name} ({error})"
        ) from error
    # Every handled message comes through here: fill the slots directly, without
    # binding keyword arguments.
    received: Received[M] = object.__new__(Received)
    received.body = body
    received.name = name
    received.ray_id = envelope.ray_id
    received.request_id = envelope.request_id
    received.ts = envelope.ts
    received._parameters = None
    received._trace = None
    received._envelope = envelope
    return received


class Subscription(Generic[M]):
    """Messages of one or more subjects, as an async iterator.

    Get one from `Context.subscribe`; the subscription is registered on the NATS server
    by then. Close it (or use it as an async context manager) when done.
    """

    def __init__(self, nats: NatsClient, specs: Sequence[MessageSpec[Any]]) -> None:
        self._nats = nats
        self._specs = {spec.name: spec for spec in specs}
        self._queue: asyncio.Queue[Received[Any]] = asyncio.Queue()
        self._subs: list[NatsSubscription] = []

    async def start(self, subjects: Sequence[str]) -> None:
        """Subscribe to `subjects` and wait until the server has registered them."""
        try:
            for subject in subjects:
                self._subs.append(await self._nats.subscribe(subject, cb=self._on_msg))
            # nats-py queues the SUB for its flusher task but writes a flush's PING
            # straight to the socket, so a PONG alone does not prove the server has
            # the subscription. Yielding once lets the flusher, already woken by the
            # SUB, write it first; the PONG then follows it.
            await asyncio.sleep(0)
            await self._nats.flush()
        except Exception as error:
            await self.close()
            raise TransportError(
                f"subscribing to {list(subjects)} failed: {error}"
            ) from error

    async def _on_msg(self, msg: Msg) -> None:
        try:
            envelope = decode_envelope(msg.data, where=f"NATS subject {msg.subject}")
            spec = self._specs.get(envelope.name)
            if spec is None:
                raise DecodeError(
                    f"NATS subject {msg.subject}: unexpected message {envelope.name!r}"
                )
            where = f"NATS subject {msg.subject}"
            received = received_from(spec, envelope, where=where)
        except DecodeError as error:
            logger.warning("skipped an undecodable realtime message: %s", error)
            return
        self._queue.put_nowait(received)

    async def next(self, timeout: float | None = None) -> Received[M]:
        """Return the next message.

        Raises:
            ChirpTimeoutError: Nothing arrived within `timeout` seconds.
        """
        if timeout is None:
            return await self._queue.get()
        try:
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        except TimeoutError:
            raise ChirpTimeoutError(
                f"no message on {self.subjects} within {timeout}s"
            ) from None

    @property
    def subjects(self) -> list[str]:
        """The NATS subjects this subscription listens on."""
        return [sub.subject for sub in self._subs]

    async def close(self) -> None:
        """Unsubscribe; messages already received stay readable with `next`."""
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as error:  # the connection may be closing already
                logger.debug("unsubscribe failed: %s", error)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Received[M]:
        return await self.next()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
