import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest
import redis.asyncio as redis

from chirp._embedded import (
    EmbeddedServerError,
    EmbeddedServers,
    NatsServer,
    ValkeyServer,
    embedded_servers,
    embedded_servers_sync,
)


async def nats_round_trip(url: str) -> bytes:
    client = await nats.connect(url, allow_reconnect=False)
    try:
        subscription = await client.subscribe("chirp.test.echo")
        await client.publish("chirp.test.echo", b"hello")
        message = await subscription.next_msg(timeout=2)
        return bytes(message.data)
    finally:
        await client.close()


async def redis_ping(url: str) -> bool:
    client = redis.Redis.from_url(url)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_session_servers_answer(servers: EmbeddedServers) -> None:
    assert await nats_round_trip(servers.nats_url) == b"hello"
    assert await redis_ping(servers.redis_url)


async def test_embedded_servers_stop_on_exit(tmp_path: Path) -> None:
    async with embedded_servers(data_dir=tmp_path) as running:
        assert await nats_round_trip(running.nats_url) == b"hello"
        assert await redis_ping(running.redis_url)

    assert (tmp_path / "nats" / "nats-server.log").read_text()
    assert (tmp_path / "valkey" / "valkey-server.log").read_text()
    for url in (running.nats_url, running.redis_url):
        assert port_is_free(int(url.rsplit(":", 1)[1]))


def test_sync_servers_start_and_stop() -> None:
    with embedded_servers_sync() as running:
        port = int(running.redis_url.rsplit(":", 1)[1])
        assert not port_is_free(port)
    assert port_is_free(port)


async def test_nats_restart_keeps_port() -> None:
    server = NatsServer()
    await server.start()
    try:
        port, pid = server.port, server.pid
        await server.restart()
        assert (server.port, server.url) == (port, f"nats://127.0.0.1:{port}")
        assert server.pid not in (None, pid)
        assert await nats_round_trip(server.url) == b"hello"
    finally:
        await server.stop()


async def test_valkey_restart_keeps_port_and_persisted_data(unique_name: str) -> None:
    server = ValkeyServer(persistence=True)
    await server.start()
    try:
        port = server.port
        client = redis.Redis.from_url(server.url)
        await client.set(unique_name, b"kept")
        await client.aclose()

        await server.restart()

        assert server.port == port
        client = redis.Redis.from_url(server.url)
        assert await client.get(unique_name) == b"kept"
        await client.aclose()
    finally:
        await server.stop()


async def test_stop_frees_port_and_removes_temporary_dir() -> None:
    server = ValkeyServer()
    await server.start()
    data_dir = server.data_dir
    assert data_dir is not None and data_dir.is_dir()

    await server.stop()

    assert server.pid is None
    assert port_is_free(server.port)
    assert not data_dir.exists()
    await server.stop()  # stopping twice is harmless


def test_start_failure_names_binary_and_log_tail(tmp_path: Path) -> None:
    binary = tmp_path / "broken-server"
    binary.write_text("#!/bin/sh\necho 'cannot open config' >&2\nexit 3\n")
    binary.chmod(0o755)
    server = NatsServer(binary=binary, data_dir=tmp_path / "data")

    with pytest.raises(EmbeddedServerError) as caught:
        server.start_sync()

    message = str(caught.value)
    assert str(binary) in message
    assert "exited with code 3" in message
    assert "cannot open config" in message
    assert server.pid is None


def test_start_timeout_names_binary(tmp_path: Path) -> None:
    binary = tmp_path / "silent-server"
    binary.write_text("#!/bin/sh\nexec sleep 30\n")
    binary.chmod(0o755)
    server = ValkeyServer(binary=binary, start_timeout=0.3)

    with pytest.raises(EmbeddedServerError, match="did not answer"):
        server.start_sync()
    assert server.pid is None


def test_start_twice_is_an_error() -> None:
    server = NatsServer()
    server.start_sync()
    try:
        with pytest.raises(EmbeddedServerError, match="already running"):
            server.start_sync()
    finally:
        server.stop_sync()


# A parent that starts servers with the async API (so from an event loop's worker
# thread) and then dies without a chance to clean up.
_DOOMED_PARENT = """
import asyncio, sys, time
from pathlib import Path
from chirp._embedded import embedded_servers

async def main():
    async with embedded_servers(data_dir=Path(sys.argv[1])) as running:
        print(running.nats_url, running.redis_url, flush=True)
        time.sleep(60)

asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux's")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_servers_die_with_a_parent_killed_without_cleanup(
    how: signal.Signals, tmp_path: Path
) -> None:
    command = [sys.executable, "-c", _DOOMED_PARENT, str(tmp_path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        urls = parent.stdout.readline().split()
        ports = [int(url.rsplit(":", 1)[1]) for url in urls]
        assert len(ports) == 2 and not any(port_is_free(port) for port in ports)
        parent.send_signal(how)

    deadline = time.monotonic() + 10
    while not all(port_is_free(port) for port in ports):
        assert time.monotonic() < deadline, f"servers outlived their parent: {ports}"
        time.sleep(0.05)
