"""Hosts that crash, hang or are restarted while they handle messages."""

import asyncio
import logging
import random
import time

import pytest
from chirptest.messages_pb2 import Ping
from conftest import WORKERS, HostPool, Ledger, eventually, publish_pings

from chirp import Client

logger = logging.getLogger(__name__)

BACKLOG = 3000
HOSTS = 3
KILLS = 6

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("concurrency", [1, 16])
async def test_sigkilled_hosts_lose_no_message(
    client: Client, hosts: HostPool, concurrency: int
) -> None:
    ledger = Ledger(client)
    ids = await publish_pings(client.context(), BACKLOG)
    settings = {"lease": 1, "concurrency": concurrency}
    running = [hosts.spawn(**settings) for _ in range(HOSTS)]
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    logger.info("kill schedule seed %d", seed)

    # Kill at random points of the progress, whatever the speed of the machine.
    orphaned = 0
    thresholds = sorted(rng.randrange(BACKLOG * 9 // 10) for _ in range(KILLS))
    for threshold in thresholds:
        await eventually(
            lambda t=threshold: _progress_reaches(ledger, t), 30, lambda: "no progress"
        )
        victim = rng.randrange(HOSTS)
        orphaned += await _pending_of(client, running[victim].pid)
        running[victim].kill()
        running[victim] = hosts.spawn(**settings)

    # The kills must have left entries behind for the others to take over.
    assert orphaned > 0
    await ledger.wait_handled(ids, timeout=60)
    await ledger.wait_settled()
    for worker in WORKERS:
        assert await ledger.dead_letters(worker) == []
        assert await ledger.troubles(worker) == {}


async def _progress_reaches(ledger: Ledger, count: int) -> bool:
    return min([len(await ledger.handled(w)) for w in WORKERS]) >= count


async def _pending_of(client: Client, pid: int) -> int:
    """Return how many entries consumers of the process `pid` hold, over all groups."""
    stream = client.names.stream_key("test-ping")
    held = 0
    for worker in WORKERS:
        summary = await client.redis.xpending(stream, worker)
        for consumer in summary["consumers"]:
            if f"-{pid}-" in consumer["name"].decode():
                held += int(consumer["pending"])
    return held


async def test_hung_handler_is_taken_over_once_its_host_is_killed(
    client: Client, hosts: HostPool
) -> None:
    # The handler awaits a dependency that never answers. Its host is alive and keeps
    # renewing the lease (Chirp cannot tell a hung handler from a long one), so the
    # message must not move while the host lives; once the host is killed, another
    # takes the message over after the lease and completes it.
    ledger = Ledger(client)
    settings = {"lease": 1, "workers": "ledger-a"}
    hung = await hosts.start(**settings)
    published = await client.context().msg(Ping(key="h", text="hang"))
    await eventually(lambda: _started(ledger, "h", 1), 10)
    other = await hosts.start(**settings)

    await asyncio.sleep(2.5)  # more than twice the lease
    assert len(await ledger.starts("ledger-a", "h")) == 1
    hung.kill()
    killed_at = time.time()

    await ledger.wait_handled([published.request_id], ["ledger-a"], timeout=10)
    first, second = await ledger.starts("ledger-a", "h")
    assert (first[1], second[1]) == (hung.pid, other.pid)
    # Taken over after the lease (renewed up to a third of it before the kill), and
    # a takeover is not a failed attempt.
    assert second[2] - killed_at >= 1 * 2 / 3 - 0.05
    assert second[0] == 1
    await ledger.wait_settled(["ledger-a"])
    assert await ledger.stats("ledger-a") == {}


async def test_blocked_host_loses_its_message_to_another_after_the_lease(
    client: Client, hosts: HostPool
) -> None:
    # Here the hung call blocks the whole event loop, so the lease is not renewed:
    # the message moves after the lease while the blocked host stays up, forever
    # stuck (it is left running on purpose and killed at teardown).
    ledger = Ledger(client)
    settings = {"lease": 1, "workers": "ledger-a"}
    blocked = await hosts.start(**settings)
    published = await client.context().msg(Ping(key="b", text="block"))
    await eventually(lambda: _started(ledger, "b", 1), 10)
    other = await hosts.start(**settings)

    await ledger.wait_handled([published.request_id], ["ledger-a"], timeout=10)
    first, second = await ledger.starts("ledger-a", "b")
    assert (first[1], second[1]) == (blocked.pid, other.pid)
    assert second[2] - first[2] >= 1 - 0.05
    assert blocked.alive()
    await ledger.wait_settled(["ledger-a"])


async def test_handler_longer_than_its_lease_never_runs_twice(
    client: Client, hosts: HostPool
) -> None:
    ledger = Ledger(client)
    settings = {"lease": 1, "workers": "ledger-a", "concurrency": 2}
    for _ in range(2):
        await hosts.start(**settings)
    ctx = client.context()
    sent = [await ctx.msg(Ping(key=f"l{i}", text="trace", sleep=3)) for i in range(4)]

    await ledger.wait_handled([p.request_id for p in sent], ["ledger-a"], timeout=15)
    runs = await ledger.runs("ledger-a")
    for index in range(4):
        key = f"l{index}"
        assert len(await ledger.starts("ledger-a", key)) == 1, key
        spans = sorted((start, end) for k, start, end, _ in runs if k == key)
        assert len(spans) == 1, f"{key} ran {len(spans)} times: {spans}"
    await ledger.wait_settled(["ledger-a"])


@pytest.mark.parametrize("grace", [0.2, 5.0], ids=["cut-short", "finish"])
async def test_rolling_restarts_count_no_retry(
    client: Client, hosts: HostPool, grace: float
) -> None:
    # A short grace cancels running handlers and hands their messages back; a long
    # one lets them finish. Neither may count an attempt or lose a message.
    ledger = Ledger(client)
    settings = {"lease": 2, "concurrency": 4, "grace": grace}
    running = [await hosts.start(**settings) for _ in range(HOSTS)]
    rng = random.Random()
    ctx = client.context()
    sent = await asyncio.gather(
        *(ctx.msg(Ping(key=f"r{i}", sleep=rng.uniform(0.5, 1.0))) for i in range(60))
    )

    stopped = []
    for round_ in range(4):
        await asyncio.sleep(0.8)
        victim = round_ % HOSTS
        running[victim].terminate()
        stopped.append(running[victim])
        running[victim] = hosts.spawn(**settings)

    await ledger.wait_handled([p.request_id for p in sent], timeout=30)
    await ledger.wait_settled()
    for host in stopped:
        assert await host.wait_exit(grace + 5) == 0, host.output()
    for worker in WORKERS:
        assert await ledger.dead_letters(worker) == []
        assert await ledger.troubles(worker) == {}
        assert (await ledger.stats(worker)).get("retries", 0) == 0


async def _started(ledger: Ledger, key: str, count: int) -> bool:
    return len(await ledger.starts("ledger-a", key)) >= count
