"""Pytest fixtures for testing code built on Chirp against real servers.

Load the plugin from a `conftest.py`::

    pytest_plugins = ["chirp.testing"]

It provides:

- `servers`: one NATS server and one Valkey server, started once for the whole test
  session on free loopback ports (see `EmbeddedServers` for the URLs). Their logs stay
  in pytest's temporary directory after the session.
- `unique_name`: a fresh kebab-case name such as `t-3f9a1c` for each test. Tests share
  the servers, so they keep apart by naming their messages, streams and workers with
  it instead of flushing the database.
- `client`: a connected `chirp.Client` in a namespace of its own (a `unique_name`), so
  every subject and key of one test is apart from every other test's.
- `running_workers`: run workers in-process for the length of an ``async with``.
- `published`: the messages of one kind published so far, to assert what a worker
  published.

Pure unit tests need no server: (with the ``memory`` extra installed)

- `memory_transport`: a `MemoryTransport` of the test's own: a fake Redis server
  (`fakeredis`, running Chirp's real commands and scripts) and an in-process NATS.
- `memory_client`: a connected `chirp.Client` on it, in a namespace of its own; more
  clients on the same transport come from ``Client.in_memory(transport=...)``.

Time control: mark a test ``@pytest.mark.looptime`` (the ``looptime`` plugin, in the
``testing`` extra) and use `memory_client`: the event loop's clock then jumps ahead
whenever every task waits on a timer, and Chirp's backoff schedule and deadlines follow
that clock, so an hour of retries passes in milliseconds. Lease takeovers are timed by
Redis's own clock and stay in real time.
"""

import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from google.protobuf.message import Message

from chirp._client import Client
from chirp._embedded import EmbeddedServers, embedded_servers_sync
from chirp._host import WorkerHost
from chirp._memory import MemoryTransport
from chirp._schema import message_spec
from chirp._subscribe import Received, received_from
from chirp._wire import ENVELOPE_FIELD, decode_envelope
from chirp._worker import Worker

M = TypeVar("M", bound=Message)

__all__ = [
    "EmbeddedServers",
    "MemoryTransport",
    "client",
    "memory_client",
    "memory_transport",
    "new_unique_name",
    "published",
    "running_workers",
    "servers",
    "unique_name",
]

_issued_names: set[str] = set()


def new_unique_name(prefix: str = "t") -> str:
    """Return a kebab-case name not returned before in this process, like `t-3f9a1c`.

    Args:
        prefix: The first part of the name; it should itself be kebab-case.
    """
    while True:
        name = f"{prefix}-{secrets.token_hex(3)}"
        # Three random bytes collide now and then in a long session; never twice.
        if name not in _issued_names:
            _issued_names.add(name)
            return name


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServers]:
    """Run one NATS server and one Valkey server for the whole test session."""
    data_dir = tmp_path_factory.mktemp("chirp-servers")
    with embedded_servers_sync(data_dir=data_dir) as running:
        yield running


@pytest.fixture
def unique_name() -> str:
    """Return a kebab-case name no other test in this session received."""
    return new_unique_name()


@pytest.fixture
async def client(servers: EmbeddedServers, unique_name: str) -> AsyncIterator[Client]:
    """Return a client connected to the session's servers, in a namespace of its own."""
    async with Client(
        "test",
        nats_url=servers.nats_url,
        redis_url=servers.redis_url,
        namespace=unique_name,
        test=True,
    ) as connected:
        yield connected


@pytest.fixture
def memory_transport() -> MemoryTransport:
    """Return an in-memory transport no other test shares."""
    return MemoryTransport()


@pytest.fixture
async def memory_client(
    memory_transport: MemoryTransport, unique_name: str
) -> AsyncIterator[Client]:
    """Return a client on the test's in-memory transport, in a namespace of its own."""
    async with Client.in_memory(
        "test", namespace=unique_name, transport=memory_transport, test=True
    ) as connected:
        yield connected


@asynccontextmanager
async def running_workers(
    client: Client, *workers: Worker[Any], grace: float = 5.0
) -> AsyncIterator[WorkerHost]:
    """Run `workers` in this process until the block ends, then drain them.

    Args:
        client: The connected client the workers use.
        workers: The workers to run.
        grace: Seconds in-flight handlers get to finish when the block ends.
    """
    host = WorkerHost(client, workers, grace=grace)
    await host.start()
    try:
        yield host
    finally:
        await host.drain()


async def published(
    client: Client, message: type[M], params: Mapping[str, object] | None = None
) -> list[Received[M]]:
    """Return every `message` in its stream, oldest first: what was published.

    Reads the durable stream of the client's namespace, so it sees messages published
    before the call, by any process. `params` keeps those whose parameters match.

    Example::

        async with running_workers(client, user_create):
            await client.context().publish_wait(UserCreate(...), UserCreateComplete)
        [done] = await published(client, UserCreateComplete)
    """
    spec = message_spec(message)
    wanted = spec.parameters_from(dict(params or {}))
    rows: Any = await client.redis.xrange(client.names.stream_key(spec.name))
    found = []
    for entry_id, fields in rows:
        where = f"entry {entry_id.decode()}"
        envelope = decode_envelope(fields[ENVELOPE_FIELD], where=where)
        received = received_from(spec, envelope, where=where)
        pairs = zip(wanted, received.parameters, strict=True)
        if all(w is None or w == v for w, v in pairs):
            found.append(received)
    return found
