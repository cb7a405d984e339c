"""What a host costs over time: memory under failing traffic, Redis calls when idle."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis_asyncio
from conftest import HostPool, Ledger, publish_pings

from chirp import Client
from chirp._embedded import ValkeyServer
from chirp.testing import EmbeddedServers

RATE = 500  # messages a second, each failing once: below what one host handles
WARM_UP = 3.0
MEASURED = 9.0
GROWTH_LIMIT_KB = 2 * 1024

pytestmark = pytest.mark.faults


async def test_memory_stays_flat_while_every_message_fails_once(
    client: Client, hosts: HostPool
) -> None:
    ledger = Ledger(client)
    host = await hosts.start(workers="ledger-a", backoff_base=0.01)
    ctx = client.context()
    ids: list[str] = []

    async def publish_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ids.extend(await publish_pings(ctx, RATE // 10, fail_times=1))
            await asyncio.sleep(0.1)

    await publish_for(WARM_UP)
    before = host.rss_kb()
    await publish_for(MEASURED)
    await ledger.wait_handled(ids, ["ledger-a"], timeout=30)
    after = host.rss_kb()

    assert after - before < GROWTH_LIMIT_KB, (before, after, len(ids))
    await ledger.wait_settled(["ledger-a"])
    assert await ledger.stats("ledger-a") == {"retries": len(ids)}


@pytest.fixture
async def private_valkey() -> AsyncIterator[ValkeyServer]:
    """Run a Valkey that only the host under test talks to."""
    server = ValkeyServer()
    await server.start()
    yield server
    await server.stop()


IDLE = 5.0
CALLS_PER_SECOND_LIMIT = 20


async def test_idle_host_sends_few_redis_commands(
    servers: EmbeddedServers,
    private_valkey: ValkeyServer,
    make_hosts: Callable[..., HostPool],
) -> None:
    # The shortest lease polls for takeovers most often: the worst case when idle.
    hosts = make_hosts(servers.nats_url, private_valkey.url)
    await hosts.start(workers="ledger-a", lease=1)
    probe = redis_asyncio.Redis.from_url(private_valkey.url)
    try:
        await asyncio.sleep(1.0)
        before = await _commands_by_client(probe)
        await asyncio.sleep(IDLE)
        after = await _commands_by_client(probe)
        breakdown = await probe.info("commandstats")
    finally:
        await probe.aclose()

    sent = sum(n - before.get(client_id, 0) for client_id, n in after.items())
    assert 0 < sent / IDLE < CALLS_PER_SECOND_LIMIT, (sent, breakdown)


async def _commands_by_client(probe: redis_asyncio.Redis) -> dict[str, int]:
    """Return the commands each connection but the probe's own has sent so far."""
    own = str(await probe.client_id())
    counts: dict[str, int] = {}
    for line in (await probe.execute_command("CLIENT", "LIST")).decode().splitlines():
        fields = dict(item.split("=", 1) for item in line.split(" ") if "=" in item)
        if fields["id"] != own:
            counts[fields["id"]] = int(fields["tot-cmds"])
    return counts
