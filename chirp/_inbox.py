"""Replies to publish-and-wait calls, delivered through one subscription per client.

`Context.publish_wait` publishes its message with a reply address (`ReplyTo`): a
subject in its client's inbox, and the names of the messages it waits for. The address
travels on with everything that message causes: a worker's context keeps the address
of the message it handles, and an operation's context that of its caller. A context
that publishes one of the awaited names sends a copy of it to the inbox subject too,
after the durable write, as it announces it.

One wildcard subscription per client, registered once, receives those copies, and the
last token of each subject (a request id) says which call it answers. A call so costs
no subscription of its own: no round trip to register one, none to remove it, and no
race between a reply and a subscription still on its way to the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from chirp._errors import DecodeError, TransportError
from chirp._ids import new_id
from chirp._schema import MessageSpec
from chirp._subscribe import Received, received_from
from chirp._wire import Names, decode_envelope
from chirp.envelope_pb2 import ReplyTo

logger = logging.getLogger(__name__)


class _Call:
    """One call waiting in the inbox: the replies it takes and where its answer goes.

    Attributes:
        specs: The awaited messages by name, each with the parameter values it must
            have: (position, value) for every parameter it shares with the request.
    """

    __slots__ = ("future", "specs")

    def __init__(
        self,
        future: asyncio.Future[Received[Any]],
        specs: dict[str, tuple[MessageSpec[Any], tuple[tuple[int, str], ...]]],
    ) -> None:
        self.future = future
        self.specs = specs


class Inbox:
    """A client's subscription for the replies of its publish-and-wait calls.

    Args:
        nats: The client's NATS connection.
        names: The namespace's names; the inbox has a subject prefix of its own.
    """

    def __init__(self, nats: NatsClient, names: Names) -> None:
        self._nats = nats
        self._prefix = names.inbox(new_id())
        self._calls: dict[str, _Call] = {}
        self._sub: NatsSubscription | None = None

    async def start(self) -> None:
        """Subscribe to the inbox and wait until the server has registered it."""
        try:
            self._sub = await self._nats.subscribe(f"{self._prefix}.*", cb=self._on_msg)
            # As for any subscription: let nats-py's flusher write the SUB before the
            # flush's PING, so the PONG proves the server has it.
            await asyncio.sleep(0)
            await self._nats.flush()
        except Exception as error:
            raise TransportError(
                f"subscribing to the reply inbox {self._prefix} failed: {error}"
            ) from error

    def expect(
        self,
        request_id: str,
        replies: Sequence[MessageSpec[Any]],
        known: Mapping[str, str],
    ) -> tuple[asyncio.Future[Received[Any]], ReplyTo]:
        """Register a call; return the future of its reply and its reply address.

        Args:
            request_id: The request id of the message the call publishes.
            replies: The messages that answer it.
            known: The request's parameter values: a reply sharing a parameter must
                have the same value, so a message of the awaited name published on
                the side (for another key) does not answer the call.
        """
        future: asyncio.Future[Received[Any]] = (
            asyncio.get_running_loop().create_future()
        )
        specs = {
            reply.name: (
                reply,
                tuple(
                    (i, known[p]) for i, p in enumerate(reply.parameters) if p in known
                ),
            )
            for reply in replies
        }
        self._calls[request_id] = _Call(future, specs)
        address = ReplyTo(
            subject=f"{self._prefix}.{request_id}", names=[r.name for r in replies]
        )
        return future, address

    def forget(self, request_id: str) -> None:
        """Stop waiting for a call's reply: it came, failed or timed out."""
        self._calls.pop(request_id, None)

    async def close(self) -> None:
        """Unsubscribe; calls still waiting fail with `TransportError` at once."""
        calls, self._calls = self._calls, {}
        for request_id, call in calls.items():
            if not call.future.done():
                call.future.set_exception(
                    TransportError(
                        f"the client closed while request {request_id} waited for "
                        f"{' or '.join(repr(name) for name in call.specs)}"
                    )
                )
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as error:  # the connection may be closing already
                logger.debug("unsubscribing the reply inbox failed: %s", error)

    async def _on_msg(self, msg: Msg) -> None:
        request_id = msg.subject.rpartition(".")[2]
        call = self._calls.get(request_id)
        if call is None or call.future.done():
            return  # a late or second reply: its call is over
        where = f"reply inbox {msg.subject}"
        try:
            envelope = decode_envelope(msg.data, where=where)
            expected = call.specs.get(envelope.name)
            if expected is None:
                raise DecodeError(f"{where}: unexpected message {envelope.name!r}")
            spec, shared = expected
            values = envelope.parameters
            if any(i >= len(values) or values[i] != v for i, v in shared):
                return  # the awaited name, but for other parameters: not the reply
            received = received_from(spec, envelope, where=where)
        except DecodeError as error:
            logger.warning("skipped an undecodable reply: %s", error)
            return
        call.future.set_result(received)
