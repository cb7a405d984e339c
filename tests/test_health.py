"""The worker host's health endpoint."""

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from chirptest.messages_pb2 import Ping

import chirp
from chirp import Client, Context
from chirp._embedded import NatsServer
from chirp._health import HealthServer
from chirp._host import WorkerHost
from chirp.testing import EmbeddedServers


@pytest.fixture
async def host(client: Client, unique_name: str) -> AsyncIterator[WorkerHost]:
    @chirp.worker(name=unique_name)
    async def idle(ctx: Context, msg: Ping) -> None:
        pass

    running = WorkerHost(client, [idle], health=("127.0.0.1", 0))
    await running.start()
    yield running
    await running.drain()


async def _get(server: HealthServer, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(f"http://127.0.0.1:{server.port}{path}")


async def test_a_consuming_host_is_live_and_ready(host: WorkerHost) -> None:
    assert host.health is not None
    live = await _get(host.health, "/livez")
    ready = await _get(host.health, "/readyz")

    assert live.status_code == 200
    assert live.json()["ok"] is True
    assert ready.status_code == 200
    assert ready.json() == {"ok": True, "nats": True, "redis": True}
    assert (await _get(host.health, "/other")).status_code == 404


async def test_a_host_that_stopped_reading_is_not_live(host: WorkerHost) -> None:
    assert host.health is not None
    [consumer] = host.consumers
    # Stop its loops only: the host stays connected, but reads nothing any more.
    consumer._stopping.set()
    consumer._wakeup.set()
    await asyncio.gather(*consumer._loops)

    live = await _get(host.health, "/livez")

    assert live.status_code == 503
    [details] = live.json()["workers"].values()
    assert details["loops_running"] is False


async def test_a_host_without_progress_is_not_live(
    client: Client, host: WorkerHost
) -> None:
    later = HealthServer(
        client,
        host.consumers,
        host="127.0.0.1",
        port=0,
        clock=lambda: time.monotonic() + 3600,
    )
    alive, details = later.liveness()
    assert not alive
    [worker] = details["workers"].values()
    assert worker["seconds_since_progress"] > 3000


async def test_readiness_follows_nats(
    servers: EmbeddedServers, unique_name: str
) -> None:
    nats = NatsServer()
    await nats.start()
    try:
        async with Client(
            "test",
            nats_url=nats.url,
            redis_url=servers.redis_url,
            namespace=unique_name,
        ) as own:
            health = HealthServer(own, [], host="127.0.0.1", port=0)
            assert (await health.readiness())[0]
            await nats.stop()
            await asyncio.sleep(0.2)
            ready, parts = await health.readiness()
            assert not ready
            assert parts == {"nats": False, "redis": True}
            await nats.start()
    finally:
        await nats.stop()
