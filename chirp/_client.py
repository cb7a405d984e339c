"""The connected client: one NATS and one Redis connection, shared by all contexts."""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Self, cast

import nats
import redis.asyncio as redis_asyncio
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from chirp._config import Settings
from chirp._context import Context
from chirp._errors import TransportError, UsageError
from chirp._ids import new_id
from chirp._inbox import Inbox
from chirp._publish import StreamWriter
from chirp._wire import Names

if TYPE_CHECKING:
    from chirp._memory import MemoryTransport

logger = logging.getLogger(__name__)

# Seconds a server may take to accept the first connection.
CONNECT_TIMEOUT = 10.0


class Client:
    """Connect to NATS and Redis and hand out root contexts.

    Use it as an async context manager, or call `connect` and `close`::

        async with chirp.Client(name="gateway") as client:
            ctx = client.context()
            await ctx.msg(UserCreate(user_id="u1", handle="ada"))

    Args:
        name: The name of this service, written into the trace of what it publishes.
        nats_url: Defaults to ``CHIRP_NATS_URL``.
        redis_url: Defaults to ``CHIRP_REDIS_URL``.
        namespace: Prefix of all subjects and keys; defaults to ``CHIRP_NAMESPACE``.
        stream_retention: Entries each stream keeps at least (older ones go once
            every worker has them); defaults to ``CHIRP_STREAM_RETENTION`` or 10000.
        test: Mark traces as made inside a test.
    """

    def __init__(
        self,
        name: str = "client",
        *,
        nats_url: str | None = None,
        redis_url: str | None = None,
        namespace: str | None = None,
        stream_retention: int | None = None,
        test: bool = False,
    ) -> None:
        self.name = name
        self.settings = Settings.resolve(
            nats_url=nats_url,
            redis_url=redis_url,
            namespace=namespace,
            stream_retention=stream_retention,
            test=test,
        )
        self.names = Names(self.settings.namespace)
        self._nats: NatsClient | None = None
        self._redis: redis_asyncio.Redis | None = None
        self._writer: StreamWriter | None = None
        self._closing = False
        self._inbox: Inbox | None = None
        self._inbox_lock = asyncio.Lock()
        self._memory: MemoryTransport | None = None

    @classmethod
    def in_memory(
        cls,
        name: str = "client",
        *,
        namespace: str | None = None,
        transport: MemoryTransport | None = None,
        stream_retention: int | None = None,
        test: bool = False,
    ) -> Client:
        """Return a client on an in-process transport instead of real servers.

        Redis is `fakeredis` (the ``memory`` extra), running Chirp's own commands and
        scripts; NATS is an in-process stand-in. Clients on one transport talk to each
        other like clients of the same servers.

        Args:
            name: As for `Client`.
            namespace: As for `Client`.
            transport: The `chirp.testing.MemoryTransport` to share; defaults to the
                process's own.
            stream_retention: As for `Client`.
            test: As for `Client`.
        """
        from chirp._memory import MEMORY_URL, shared_transport

        client = cls(
            name,
            nats_url=MEMORY_URL,
            redis_url=MEMORY_URL,
            namespace=namespace,
            stream_retention=stream_retention,
            test=test,
        )
        client._memory = transport or shared_transport()
        return client

    async def connect(self) -> Self:
        """Open both connections.

        Raises:
            TransportError: A server could not be reached within the connect timeout.
        """
        try:
            if self._memory is not None:
                self._redis, self._nats = self._connect_memory(self._memory)
            else:
                self._redis = await self._connect_redis()
                self._nats = await self._connect_nats()
        except TransportError:
            await self.close()
            raise
        self._writer = StreamWriter(
            self._redis,
            self._nats,
            attempts=self.settings.publish_attempts,
            retry_delay=self.settings.publish_retry_delay,
            retention=self.settings.stream_retention,
        )
        return self

    def _connect_memory(
        self, transport: MemoryTransport
    ) -> tuple[redis_asyncio.Redis, NatsClient]:
        # The stand-in has only the part of nats-py's client that Chirp calls.
        return transport.redis(), cast(NatsClient, transport.nats(self.name))

    async def _connect_redis(self) -> redis_asyncio.Redis:
        url = self.settings.redis_url
        redis = redis_asyncio.Redis.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT
        )
        try:
            await redis.ping()
        except Exception as error:
            await redis.aclose()
            raise TransportError(
                f"cannot connect to Redis at {url}: {error}"
            ) from error
        return redis

    async def _connect_nats(self) -> NatsClient:
        # nats-py retries a first connection forever when reconnects are unlimited;
        # the deadline turns an unreachable server into an error instead of a hang.
        url = self.settings.nats_url
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await nats.connect(
                    url,
                    name=self.name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    allow_reconnect=True,
                    error_cb=self._on_nats_error,
                    disconnected_cb=self._on_nats_disconnected,
                    reconnected_cb=self._on_nats_reconnected,
                )
        except TimeoutError as error:
            raise TransportError(
                f"cannot connect to NATS at {url}: no answer within {CONNECT_TIMEOUT}s"
            ) from error
        except Exception as error:
            raise TransportError(f"cannot connect to NATS at {url}: {error}") from error

    async def close(self) -> None:
        """Send what is queued, then close both connections."""
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._inbox is not None:
            inbox, self._inbox = self._inbox, None
            await inbox.close()
        self._closing = True
        if self._nats is not None:
            nc, self._nats = self._nats, None
            try:
                await nc.drain()
            except NatsError as error:
                logger.debug("NATS drain on close failed: %s", error)
        if self._redis is not None:
            r, self._redis = self._redis, None
            await r.aclose()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def context(self, name: str | None = None, *, ray_id: str | None = None) -> Context:
        """Return a root context: a new ray (or `ray_id`), a new request id."""
        return Context(
            self,
            name=name or self.name,
            ray_id=ray_id or new_id(),
            request_id=new_id(),
            trace=(),
            ts=int(time.time() * 1000),
        )

    @property
    def nats(self) -> NatsClient:
        """The NATS connection."""
        if self._nats is None:
            raise UsageError(f"client {self.name!r} is not connected")
        return self._nats

    @property
    def redis(self) -> redis_asyncio.Redis:
        """The Redis connection pool."""
        if self._redis is None:
            raise UsageError(f"client {self.name!r} is not connected")
        return self._redis

    async def inbox(self) -> Inbox:
        """The reply inbox of publish-and-wait calls, subscribed at first use."""
        if self._inbox is None:
            async with self._inbox_lock:
                if self._inbox is None:
                    inbox = Inbox(self.nats, self.names)
                    await inbox.start()
                    self._inbox = inbox
        return self._inbox

    @property
    def writer(self) -> StreamWriter:
        """The shared durable writer."""
        if self._writer is None:
            raise UsageError(f"client {self.name!r} is not connected")
        return self._writer

    async def _on_nats_error(self, error: Exception) -> None:
        if self._nats is None:
            # Still connecting: `connect` reports the outcome once, not every try.
            logger.debug("NATS connect attempt failed: %s", error)
            return
        logger.warning("NATS error: %s", error)

    async def _on_nats_disconnected(self) -> None:
        if not self._closing:
            logger.warning("NATS disconnected; reconnecting")

    async def _on_nats_reconnected(self) -> None:
        if self._nats is not None:
            logger.info("NATS reconnected to %s", self._nats.connected_url)
