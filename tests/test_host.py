"""Worker host processes (`chirp run`) killed and stopped while they handle messages."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chirptest.messages_pb2 import Ping, PingDone

from chirp import Client
from chirp.testing import EmbeddedServers

TESTS = Path(__file__).parent
GROUP = "test-process-ping"


@pytest.fixture
def start_host(
    servers: EmbeddedServers, unique_name: str, tmp_path: Path
) -> Iterator[object]:
    """Return a function that starts a `chirp run chirptest.workers` process."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(lease: float = 30.0) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "CHIRP_NATS_URL": servers.nats_url,
            "CHIRP_REDIS_URL": servers.redis_url,
            "CHIRP_NAMESPACE": unique_name,
            "CHIRPTEST_LEASE": str(lease),
        }
        log = open(tmp_path / f"host-{len(processes)}.log", "wb")
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "chirp", "run", "--path", str(TESTS)),
                *("--grace", "10", "chirptest.workers"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


async def _wait_started(client: Client, key: str, timeout: float = 20.0) -> None:
    counter = f"chirptest:{client.names.namespace}:{key}"
    deadline = time.monotonic() + timeout
    while await client.redis.get(counter) is None:
        assert time.monotonic() < deadline, "the handler never started"
        await asyncio.sleep(0.05)


async def test_message_of_a_killed_host_is_completed_by_another(
    client: Client, start_host: object
) -> None:
    first = start_host(lease=1.0)  # type: ignore[operator]
    ctx = client.context()
    async with await ctx.subscribe(PingDone, {"key": "k"}) as done:
        await ctx.msg(Ping(key="k", sleep=60))
        await _wait_started(client, "k")
        first.send_signal(signal.SIGKILL)
        first.wait()
        start_host(lease=1.0)  # type: ignore[operator]
        completion = await done.next(timeout=30)

    # The second start of the key ran in the second process, after the lease expired.
    assert completion.body.text == "2"
    stream = client.names.stream_key("test-ping")
    await _wait_until_acked(client, stream)


async def _wait_until_acked(client: Client, stream: str) -> None:
    deadline = time.monotonic() + 10
    while int((await client.redis.xpending(stream, GROUP))["pending"]) != 0:
        assert time.monotonic() < deadline, "entry still pending"
        await asyncio.sleep(0.05)


async def test_sigterm_lets_the_handler_finish_and_loses_nothing(
    client: Client, start_host: object
) -> None:
    host = start_host()  # type: ignore[operator]
    ctx = client.context()
    async with await ctx.subscribe(PingDone, {"key": "k"}) as done:
        await ctx.msg(Ping(key="k", sleep=1.0))
        await _wait_started(client, "k")
        host.send_signal(signal.SIGTERM)
        completion = await done.next(timeout=15)
    assert completion.body.text == "1"
    assert await asyncio.to_thread(host.wait, 15) == 0
    await _wait_until_acked(client, client.names.stream_key("test-ping"))
