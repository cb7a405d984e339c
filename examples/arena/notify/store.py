"""The notifications table, owned by the notify package alone."""

from __future__ import annotations

import sqlite3
import time

from arena.db import Database
from arena.proto.notify_pb2 import Notification

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    notification_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    text TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_by_user
    ON notifications (user_id, created_ms DESC);
"""

_db = Database(_SCHEMA)


async def add_notification(
    notification_id: str, *, user_id: str, text: str
) -> Notification:
    """Store a notification once and return it as stored.

    Adding an id that exists changes nothing and returns the stored notification, so
    a handler that runs twice notifies once.
    """

    def change(db: sqlite3.Connection) -> Notification:
        db.execute(
            "INSERT INTO notifications (notification_id, user_id, text, created_ms) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (notification_id) DO NOTHING",
            (notification_id, user_id, text, int(time.time() * 1000)),
        )
        row = db.execute(
            "SELECT notification_id, user_id, text, created_ms FROM notifications "
            "WHERE notification_id = ?",
            (notification_id,),
        ).fetchone()
        return _notification(row)

    return await _db.write(change)


async def list_notifications(user_id: str, *, limit: int) -> list[Notification]:
    """Return a user's notifications, newest first, at most `limit` of them."""

    def query(db: sqlite3.Connection) -> list[Notification]:
        rows = db.execute(
            "SELECT notification_id, user_id, text, created_ms FROM notifications "
            "WHERE user_id = ? ORDER BY created_ms DESC, notification_id LIMIT ?",
            (user_id, limit),
        ).fetchall()
        return [_notification(row) for row in rows]

    return await _db.read(query)


def _notification(row: tuple[str, str, str, int]) -> Notification:
    notification_id, user_id, text, created_ms = row
    return Notification(
        notification_id=notification_id,
        user_id=user_id,
        text=text,
        created_ms=created_ms,
    )
