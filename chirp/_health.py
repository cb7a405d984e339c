"""The worker host's HTTP endpoint: liveness, readiness and Prometheus metrics.

- ``GET /livez``: 200 while every consumer's loops are running and each has heard
  from Redis or finished a handler within its stall limit; 503 otherwise. A host that
  is connected but no longer reads (a dead loop, every slot held by a hung handler)
  fails it, so an orchestrator restarts it and another instance takes its messages.
- ``GET /readyz``: 200 while NATS is connected and Redis answers PING; 503 otherwise.

- ``GET /metrics``: Prometheus metrics (see `chirp._metrics`); the per-worker levels
  (pending, lag, scheduled, dead letters) are read from Redis for each scrape.

Probes get a small JSON object saying why. Other paths get 404. The protocol is one
request per connection (HTTP/1.0 style), which is all probes and scrapers need.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from chirp._metrics import DEAD_LETTERS, LAG, PENDING, SCHEDULED

if TYPE_CHECKING:
    from chirp._client import Client
    from chirp._consumer import Consumer

logger = logging.getLogger(__name__)

_JSON = "application/json"
_READ_TIMEOUT = 5.0
_PING_TIMEOUT = 1.0


class HealthServer:
    """Serve ``/livez`` and ``/readyz`` for a worker host.

    Args:
        client: The host's client (for readiness).
        consumers: The host's consumers (for liveness).
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one (see `port` once started).
        clock: Monotonic seconds; progress times come from the same clock.
    """

    def __init__(
        self,
        client: Client,
        consumers: Sequence[Consumer],
        *,
        host: str,
        port: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._consumers = consumers
        self._host = host
        self._port = port
        self._clock = clock
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        logger.info("health endpoint on http://%s:%d/livez", self._host, self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Return whether every consumer is alive, and the details per worker."""
        now = self._clock()
        details = {c.name: c.liveness(now) for c in self._consumers}
        return all(d["alive"] for d in details.values()), {"workers": details}

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Return whether NATS is connected and Redis answers, and each part."""
        nats = self._client.nats.is_connected
        try:
            async with asyncio.timeout(_PING_TIMEOUT):
                redis = bool(await self._client.redis.ping())
        except Exception:
            redis = False
        return nats and redis, {"nats": nats, "redis": redis}

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                request = await reader.readline()
                while (await reader.readline()).strip():
                    pass  # headers: nothing in them matters here
            status, content_type, payload = await self._answer(request)
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def metrics(self) -> bytes:
        """Return the Prometheus exposition, with worker levels read just now."""
        for consumer in self._consumers:
            levels = await consumer.levels()
            PENDING.labels(consumer.name).set(levels["pending"])
            LAG.labels(consumer.name).set(levels["lag"])
            SCHEDULED.labels(consumer.name).set(levels["scheduled"])
            DEAD_LETTERS.labels(consumer.name).set(levels["dead_letters"])
        return generate_latest(REGISTRY)

    async def _answer(self, request: bytes) -> tuple[str, str, bytes]:
        parts = request.decode(errors="replace").split()
        path = parts[1] if len(parts) > 1 else ""
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, await self.metrics()
        if path == "/livez":
            ok, body = self.liveness()
        elif path == "/readyz":
            ok, body = await self.readiness()
        else:
            return "404 Not Found", _JSON, _json({"error": f"no such path {path!r}"})
        status = "200 OK" if ok else "503 Service Unavailable"
        return status, _JSON, _json({"ok": ok, **body})


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
