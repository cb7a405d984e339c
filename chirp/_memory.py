"""An in-process transport for unit tests: fakeredis for Redis, a small NATS stand-in.

A worker's state machine lives in Redis: streams, consumer groups and the scripts of
`chirp._scripts`. Rather than imitate it, the in-memory transport runs those very
commands on `fakeredis` (with Lua through `lupa`), so the pending list, redelivery,
retries and dead letters behave as they do on a server. The realtime side is a stand-in
for the part of nats-py that Chirp uses: `publish`, `subscribe` with a callback,
`flush`, `drain`, `is_connected` and `connected_url`. It routes subjects as a NATS
server does (`*` is one token, `>` the rest) and calls each subscription's callback
from a task of its own, one message at a time and in publish order, as nats-py does.

Clients built on one `MemoryTransport` share its data and its subjects, so a caller and
a worker host in one process can talk; `shared_transport` is the one of the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from urllib.parse import ParseResult, urlparse

from nats.errors import BadSubjectError, ConnectionClosedError
from redis.asyncio import Redis

from chirp._errors import UsageError

logger = logging.getLogger(__name__)

# What a client on the in-memory transport reports as its server URLs.
MEMORY_URL = "memory://"


@dataclass(frozen=True, slots=True)
class MemoryMsg:
    """A message as a subscription callback receives it (nats-py's `Msg`, in part).

    Attributes:
        subject: The subject it was published on.
        data: Its payload.
    """

    subject: str
    data: bytes
    reply: str = ""
    headers: dict[str, str] | None = None


Callback = Callable[[MemoryMsg], Awaitable[None]]


def subject_matches(pattern: str, subject: str) -> bool:
    """Tell whether a subscription `pattern` covers `subject`, as NATS routes them.

    A `*` token matches exactly one token; a final `>` matches one or more.
    """
    wanted = pattern.split(".")
    given = subject.split(".")
    for position, token in enumerate(wanted):
        if token == ">":
            return len(given) > position
        if position >= len(given) or token not in ("*", given[position]):
            return False
    return len(given) == len(wanted)


def _check_subject(subject: str, *, wildcards: bool) -> None:
    """Refuse what a NATS server would refuse: empty tokens, misplaced wildcards."""
    tokens = subject.split(".")
    if not subject or any(not token or " " in token for token in tokens):
        raise BadSubjectError(f"invalid subject {subject!r}")
    for position, token in enumerate(tokens):
        wild = token in ("*", ">")
        if wild and not wildcards:
            raise BadSubjectError(f"cannot publish to wildcard subject {subject!r}")
        if token == ">" and position != len(tokens) - 1:
            raise BadSubjectError(f"'>' must be the last token of {subject!r}")


class MemorySubscription:
    """Interest in a subject; its callback runs in a task of its own, in order.

    Attributes:
        subject: The subject pattern it listens on.
    """

    def __init__(self, hub: MemoryNatsServer, subject: str, cb: Callback) -> None:
        self.subject = subject
        self._hub = hub
        self._cb = cb
        self._queue: asyncio.Queue[MemoryMsg] = asyncio.Queue()
        self._task = asyncio.create_task(self._deliver_all())

    def offer(self, msg: MemoryMsg) -> None:
        """Queue a routed message for the callback."""
        self._queue.put_nowait(msg)

    async def _deliver_all(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self._cb(msg)
            except Exception as error:
                # nats-py reports a failing callback and goes on with the next message.
                logger.warning("callback on %s failed: %s", self.subject, error)
            finally:
                self._queue.task_done()

    async def unsubscribe(self) -> None:
        """Stop receiving; messages not yet handed to the callback are dropped."""
        self._hub.remove(self)
        await self._stop()

    async def drain(self) -> None:
        """Stop receiving, but let the callback handle what is already queued."""
        self._hub.remove(self)
        await self._queue.join()
        await self._stop()

    async def _stop(self) -> None:
        self._task.cancel()
        if asyncio.current_task() is not self._task:
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass(slots=True)
class MemoryNatsServer:
    """The routing table that in-memory NATS connections of one transport share."""

    _subscriptions: list[MemorySubscription] = field(default_factory=list)

    def add(self, subscription: MemorySubscription) -> None:
        """Register a subscription."""
        self._subscriptions.append(subscription)

    def remove(self, subscription: MemorySubscription) -> None:
        """Forget a subscription; forgetting it twice is harmless."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def route(self, subject: str, data: bytes) -> None:
        """Hand a published message to every subscription whose subject covers it."""
        msg = MemoryMsg(subject, data)
        for subscription in list(self._subscriptions):
            if subject_matches(subscription.subject, subject):
                subscription.offer(msg)


class MemoryNats:
    """One in-memory NATS connection: the subset of nats-py's client Chirp uses.

    Args:
        hub: The routing table of the transport.
        name: The connection's name, as nats-py's `name=`.
    """

    def __init__(self, hub: MemoryNatsServer, name: str) -> None:
        self.name = name
        self._hub = hub
        self._subscriptions: list[MemorySubscription] = []
        self._closed = False

    @property
    def is_connected(self) -> bool:
        """True until the connection is drained or closed."""
        return not self._closed

    @property
    def is_closed(self) -> bool:
        """True once the connection is drained or closed."""
        return self._closed

    @property
    def connected_url(self) -> ParseResult | None:
        """The transport's URL while connected, else None."""
        return None if self._closed else urlparse(MEMORY_URL)

    async def publish(self, subject: str, payload: bytes = b"") -> None:
        """Route a message to the subscriptions of every connection of the transport.

        Raises:
            ConnectionClosedError: The connection was closed.
            BadSubjectError: The subject is empty, malformed or has a wildcard.
        """
        self._check_open()
        _check_subject(subject, wildcards=False)
        self._hub.route(subject, bytes(payload))

    async def subscribe(self, subject: str, *, cb: Callback) -> MemorySubscription:
        """Listen on `subject` (wildcards allowed); `cb` gets each message in order.

        Raises:
            ConnectionClosedError: The connection was closed.
            BadSubjectError: The subject is empty or malformed.
        """
        self._check_open()
        _check_subject(subject, wildcards=True)
        subscription = MemorySubscription(self._hub, subject, cb)
        self._hub.add(subscription)
        self._subscriptions.append(subscription)
        return subscription

    async def flush(self, timeout: float = 10.0) -> None:
        """Return once the server has what was sent: at once, since routing is direct.

        Raises:
            ConnectionClosedError: The connection was closed.
        """
        self._check_open()
        await asyncio.sleep(0)

    async def drain(self) -> None:
        """Let every subscription handle what it has queued, then close.

        Raises:
            ConnectionClosedError: The connection was closed already.
        """
        self._check_open()
        subscriptions, self._subscriptions = self._subscriptions, []
        await asyncio.gather(*(s.drain() for s in subscriptions))
        self._closed = True

    async def close(self) -> None:
        """Close at once, dropping whatever subscriptions have not handled yet."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.unsubscribe()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosedError()


class MemoryTransport:
    """One fake Redis server and one NATS routing table that clients can share.

    Build clients on it with ``Client.in_memory(transport=...)``; clients on the same
    transport see the same keys and subjects, clients on different ones nothing of
    each other.

    Raises:
        UsageError: `fakeredis` is not installed (the ``memory`` extra).
    """

    def __init__(self) -> None:
        self._fakeredis = _import_fakeredis()
        self._redis_server = self._fakeredis.FakeServer()
        self._nats_server = MemoryNatsServer()

    def redis(self) -> Redis:
        """Return a new Redis client on this transport's fake server."""
        client: Redis = self._fakeredis.FakeAsyncRedis(server=self._redis_server)
        return client

    def nats(self, name: str) -> MemoryNats:
        """Return a new NATS connection on this transport's routing table."""
        return MemoryNats(self._nats_server, name)


def _import_fakeredis() -> ModuleType:
    # Imported on first use: only in-memory clients need it, and it is an extra.
    try:
        import fakeredis
    except ImportError as error:
        raise UsageError(
            "the in-memory transport needs fakeredis: install chirp[memory]"
        ) from error
    return fakeredis


_shared: MemoryTransport | None = None


def shared_transport() -> MemoryTransport:
    """Return the process's transport, used by clients that name no other."""
    global _shared
    if _shared is None:
        _shared = MemoryTransport()
    return _shared
