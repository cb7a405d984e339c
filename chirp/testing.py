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
"""

import secrets
from collections.abc import Iterator

import pytest

from chirp._embedded import EmbeddedServers, embedded_servers_sync

__all__ = ["EmbeddedServers", "new_unique_name", "servers", "unique_name"]

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
