"""The SQLite file the arena stores share, used from asyncio through worker threads.

Every thread keeps its own connection (sqlite3 connections must stay in the thread
that made them), so concurrent handlers and operations of one process never share
one. WAL mode lets the gateway read while the worker host writes.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

PATH_VARIABLE = "ARENA_DB"
DEFAULT_PATH = "arena.sqlite3"
# Seconds a statement waits for another connection's write lock before failing.
_BUSY_TIMEOUT = 10.0


def database_path() -> str:
    """Return the database file: ``ARENA_DB``, or ``arena.sqlite3`` in the cwd."""
    return os.environ.get(PATH_VARIABLE) or DEFAULT_PATH


class Database:
    """The tables of one store in the shared SQLite file.

    Args:
        schema: SQL that creates the store's tables if they do not exist; it runs on
            each new connection, so it must be idempotent.
    """

    def __init__(self, schema: str) -> None:
        self._schema = schema
        self._local = threading.local()

    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run `query` with a connection in a worker thread and return its result."""
        return await asyncio.to_thread(self._read, query)

    async def write(self, change: Callable[[sqlite3.Connection], T]) -> T:
        """Run `change` in one immediate transaction in a worker thread.

        The transaction takes the write lock at its start, so a read followed by a
        write inside `change` sees no other writer in between.
        """
        return await asyncio.to_thread(self._write, change)

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        return query(self._connection())

    def _write(self, change: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = change(connection)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return result

    def _connection(self) -> sqlite3.Connection:
        # Keyed by path so that a changed ARENA_DB (as in tests) opens the new file.
        path = database_path()
        connections: dict[str, sqlite3.Connection] = self._local.__dict__.setdefault(
            "connections", {}
        )
        connection = connections.get(path)
        if connection is None:
            connection = _open(path, self._schema)
            connections[path] = connection
        return connection


def _open(path: str, schema: str) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; `Database._write` opens its own.
    connection = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    # Immediate: connections of several threads and processes open at once, and two
    # that both read the schema before writing it would fail instead of waiting.
    connection.executescript(f"BEGIN IMMEDIATE; {schema} COMMIT;")
    return connection
