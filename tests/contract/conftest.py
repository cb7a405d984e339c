"""One suite, two transports: every test here runs on the in-memory one and on real
NATS and Valkey servers, and must pass on both unchanged.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest

from chirp import Client
from chirp._embedded import EmbeddedServers
from chirp.testing import MemoryTransport

Connect = Callable[[str], Awaitable[Client]]


@pytest.fixture(params=["memory", "real"])
def transport(request: pytest.FixtureRequest) -> str:
    """Name the transport the test runs on."""
    return str(request.param)


@pytest.fixture
async def connect(
    request: pytest.FixtureRequest, transport: str, unique_name: str
) -> AsyncIterator[Connect]:
    """Return a factory of connected clients, all in the test's namespace.

    The real servers are started (once per session) only when a test first needs them.
    """
    memory: MemoryTransport | None = None
    servers: EmbeddedServers | None = None
    if transport == "memory":
        memory = MemoryTransport()
    else:
        servers = request.getfixturevalue("servers")
    async with AsyncExitStack() as stack:

        async def connect_one(name: str) -> Client:
            if memory is not None:
                client = Client.in_memory(
                    name, namespace=unique_name, transport=memory, test=True
                )
            else:
                assert servers is not None
                client = Client(
                    name,
                    nats_url=servers.nats_url,
                    redis_url=servers.redis_url,
                    namespace=unique_name,
                    test=True,
                )
            return await stack.enter_async_context(client)

        yield connect_one


@pytest.fixture
async def client(connect: Connect) -> Client:
    """Return a connected client on the test's transport (replaces the plugin's)."""
    return await connect("test")


@pytest.fixture
async def other(connect: Connect) -> Client:
    """Return a second connection in the same namespace as `client`."""
    return await connect("other")
