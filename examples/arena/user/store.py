"""The users and follows tables.

Every write is idempotent, because workers may run a message more than once: creating
a user again with the same id and handle, or recording a follow again for the same
request, succeeds without changing anything.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from dataclasses import dataclass

from arena.db import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    handle TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS follows (
    follower_id TEXT NOT NULL REFERENCES users (user_id),
    followee_id TEXT NOT NULL REFERENCES users (user_id),
    request_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX IF NOT EXISTS follows_by_followee ON follows (followee_id);
"""

_db = Database(_SCHEMA)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A stored user and how many follow them."""

    user_id: str
    handle: str
    display_name: str
    follower_count: int


class CreateOutcome(enum.Enum):
    """What creating a user did; a refusal's value is its failure code."""

    CREATED = "CREATED"
    HANDLE_TAKEN = "HANDLE_TAKEN"
    USER_EXISTS = "USER_EXISTS"


class FollowOutcome(enum.Enum):
    """What recording a follow did."""

    FOLLOWED = enum.auto()
    FOLLOWER_NOT_FOUND = enum.auto()
    FOLLOWEE_NOT_FOUND = enum.auto()
    ALREADY_FOLLOWING = enum.auto()


async def create_user(user_id: str, handle: str, display_name: str) -> CreateOutcome:
    """Store a user unless the handle or the id belongs to someone else.

    Returns:
        CREATED also when this exact user (same id and handle) exists already.
    """

    def change(db: sqlite3.Connection) -> CreateOutcome:
        owner = _handle_owner(db, handle)
        if owner == user_id:
            return CreateOutcome.CREATED
        if owner is not None:
            return CreateOutcome.HANDLE_TAKEN
        if _exists(db, user_id):
            return CreateOutcome.USER_EXISTS

        db.execute(
            "INSERT INTO users (user_id, handle, display_name, created_ms) "
            "VALUES (?, ?, ?, ?)",
            (user_id, handle, display_name, _now_ms()),
        )
        return CreateOutcome.CREATED

    return await _db.write(change)


async def get_user(user_id: str) -> UserRecord | None:
    """Return a user with their follower count, or None if there is no such user."""

    def query(db: sqlite3.Connection) -> UserRecord | None:
        row = db.execute(
            "SELECT user_id, handle, display_name, "
            "(SELECT COUNT(*) FROM follows WHERE followee_id = users.user_id) "
            "FROM users WHERE user_id = ?",
            (user_id,),
        ).fetchone()
        return None if row is None else UserRecord(*row)

    return await _db.read(query)


async def follow(
    follower_id: str, followee_id: str, *, request_id: str
) -> FollowOutcome:
    """Record that one user follows another.

    Args:
        request_id: The request that asks for the follow. The same request recording
            it again is FOLLOWED; another request finding it is ALREADY_FOLLOWING.
    """

    def change(db: sqlite3.Connection) -> FollowOutcome:
        if not _exists(db, follower_id):
            return FollowOutcome.FOLLOWER_NOT_FOUND
        if not _exists(db, followee_id):
            return FollowOutcome.FOLLOWEE_NOT_FOUND
        recorded_by = _follow_request(db, follower_id, followee_id)
        if recorded_by is not None:
            if recorded_by == request_id:
                return FollowOutcome.FOLLOWED
            return FollowOutcome.ALREADY_FOLLOWING

        db.execute(
            "INSERT INTO follows (follower_id, followee_id, request_id, created_ms) "
            "VALUES (?, ?, ?, ?)",
            (follower_id, followee_id, request_id, _now_ms()),
        )
        return FollowOutcome.FOLLOWED

    return await _db.write(change)


def _handle_owner(db: sqlite3.Connection, handle: str) -> str | None:
    row = db.execute("SELECT user_id FROM users WHERE handle = ?", (handle,)).fetchone()
    return None if row is None else str(row[0])


def _exists(db: sqlite3.Connection, user_id: str) -> bool:
    row = db.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone()
    return row is not None


def _follow_request(
    db: sqlite3.Connection, follower_id: str, followee_id: str
) -> str | None:
    row = db.execute(
        "SELECT request_id FROM follows WHERE follower_id = ? AND followee_id = ?",
        (follower_id, followee_id),
    ).fetchone()
    return None if row is None else str(row[0])


def _now_ms() -> int:
    return int(time.time() * 1000)
