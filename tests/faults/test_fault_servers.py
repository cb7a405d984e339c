"""Servers that restart or drop connections while messages flow."""

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio
from chirptest.messages_pb2 import Ping, PingDone, Status
from conftest import WORKERS, HostPool, Ledger, eventually

from chirp import ChirpTimeoutError, Client, PublishError, TransportError
from chirp._embedded import NatsServer, ValkeyServer
from chirp.testing import EmbeddedServers

# No single call of a test may take longer than this: a hang is a failure.
CALL_BOUND = 10.0

pytestmark = pytest.mark.faults


@pytest.fixture
async def valkey(tmp_path: Path) -> AsyncIterator[ValkeyServer]:
    """Run a Valkey of the test's own, persisting to an fsynced append-only file."""
    server = ValkeyServer(data_dir=tmp_path / "valkey", persistence=True)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def nats_server() -> AsyncIterator[NatsServer]:
    """Run a NATS server of the test's own."""
    server = NatsServer()
    await server.start()
    yield server
    await server.stop()


def _client(nats_url: str, redis_url: str, namespace: str) -> Client:
    return Client(
        "test", nats_url=nats_url, redis_url=redis_url, namespace=namespace, test=True
    )


class _Publisher:
    """Publish pings one after another until stopped; sort each outcome."""

    def __init__(self, client: Client, label: str) -> None:
        self._ctx = client.context()
        self._label = label
        self.returned: list[str] = []
        self.failed: list[PublishError] = []
        self._stop = asyncio.Event()

    async def run(self, pause: float = 0.002) -> None:
        index = 0
        while not self._stop.is_set():
            ping = Ping(key=f"{self._label}-{index}")
            index += 1
            try:
                async with asyncio.timeout(CALL_BOUND):
                    published = await self._ctx.msg(ping)
            except PublishError as error:
                self.failed.append(error)
            else:
                self.returned.append(published.request_id)
            await asyncio.sleep(pause)

    def stop(self) -> None:
        self._stop.set()


async def test_redis_crash_loses_no_returned_publish(
    servers: EmbeddedServers,
    valkey: ValkeyServer,
    make_hosts: Callable[..., HostPool],
    unique_name: str,
) -> None:
    hosts = make_hosts(servers.nats_url, valkey.url)
    running = [await hosts.start(lease=1) for _ in range(2)]
    async with _client(servers.nats_url, valkey.url, unique_name) as client:
        publishers = [_Publisher(client, f"w{i}") for i in range(4)]
        tasks = [asyncio.create_task(p.run()) for p in publishers]
        await asyncio.sleep(1.0)

        # A crash, not a shutdown: every acknowledged write is on disk already.
        assert valkey.pid is not None
        os.kill(valkey.pid, signal.SIGKILL)
        await asyncio.sleep(1.5)  # longer than a publish's retries
        await valkey.restart()
        await asyncio.sleep(1.0)
        for publisher in publishers:
            publisher.stop()
        await asyncio.gather(*tasks)

        returned = [i for p in publishers for i in p.returned]
        failed = [e for p in publishers for e in p.failed]
        assert failed, "publishes during the outage should have failed"
        ledger = Ledger(client)
        await ledger.wait_handled(returned, timeout=30)
        await ledger.wait_settled()
        for worker in WORKERS:
            assert await ledger.troubles(worker) == {}
    assert all(host.alive() for host in running)


async def test_nats_restart_leaves_the_client_working(
    servers: EmbeddedServers,
    nats_server: NatsServer,
    make_hosts: Callable[..., HostPool],
    unique_name: str,
) -> None:
    hosts = make_hosts(nats_server.url, servers.redis_url)
    await hosts.start(workers="ledger-a")
    async with (
        _client(nats_server.url, servers.redis_url, unique_name) as client,
        asyncio.timeout(60),
    ):
        ctx = client.context()
        early = await ctx.subscribe(Ping, {"key": "live"})

        await nats_server.stop()
        # Durable without NATS: the write to Redis is the publish.
        async with asyncio.timeout(CALL_BOUND):
            during = await ctx.msg(Ping(key="during"))
        with pytest.raises((ChirpTimeoutError, TransportError)):
            async with asyncio.timeout(CALL_BOUND):
                await ctx.publish_wait(
                    Ping(key="pw0", text="reply"), PingDone, timeout=1
                )
        await nats_server.start()
        await eventually(lambda: _connected(client), CALL_BOUND)

        # A subscription made before the restart receives again.
        await ctx.msg(Ping(key="live"))
        assert (await early.next(timeout=CALL_BOUND)).body.key == "live"
        await early.close()
        # A new subscription, a publish-and-wait (through the host, which had to
        # reconnect too) and a tail anchor work on the same client.
        async with await ctx.subscribe(Ping, {"key": "new"}) as fresh:
            await ctx.msg(Ping(key="new"))
            assert (await fresh.next(timeout=CALL_BOUND)).body.key == "new"
        done = await ctx.publish_wait(
            Ping(key="pw1", text="reply"), PingDone, timeout=CALL_BOUND
        )
        assert done.body.key == "pw1"
        await _check_tail_anchor(client)
        await Ledger(client).wait_handled([during.request_id], ["ledger-a"])


async def _connected(client: Client) -> bool:
    return bool(client.nats.is_connected)


async def _check_tail_anchor(client: Client) -> None:
    ctx = client.context()
    params = {"region": "eu", "user_id": 7}
    since = int(time.time() * 1000)

    async def publish_later() -> None:
        await asyncio.sleep(0.2)
        await ctx.msg(Status(region="eu", user_id=7, status="back"))

    publishing = asyncio.create_task(publish_later())
    anchored = await ctx.tail_anchor(Status, params, since=since, timeout=CALL_BOUND)
    await publishing
    assert anchored.body.status == "back"


async def test_dropped_redis_connections_stop_nothing(
    servers: EmbeddedServers,
    valkey: ValkeyServer,
    make_hosts: Callable[..., HostPool],
    unique_name: str,
) -> None:
    hosts = make_hosts(servers.nats_url, valkey.url)
    running = [await hosts.start(lease=1) for _ in range(2)]
    killer = redis_asyncio.Redis.from_url(valkey.url)
    async with _client(servers.nats_url, valkey.url, unique_name) as client:
        publishers = [_Publisher(client, f"w{i}") for i in range(2)]
        tasks = [asyncio.create_task(p.run(pause=0.005)) for p in publishers]
        killed = 0
        for _ in range(20):  # five times a second for four seconds
            await asyncio.sleep(0.2)
            # The killer's own connection is spared (SKIPME defaults to yes).
            killed += await killer.execute_command("CLIENT", "KILL", "TYPE", "normal")
        for publisher in publishers:
            publisher.stop()
        await asyncio.gather(*tasks)
        await killer.aclose()

        assert killed >= 20
        returned = [i for p in publishers for i in p.returned]
        assert len(returned) > 500
        ledger = Ledger(client)
        await ledger.wait_handled(returned, timeout=30)
        await ledger.wait_settled()
        for worker in WORKERS:
            assert await ledger.troubles(worker) == {}
    assert all(host.alive() for host in running)
