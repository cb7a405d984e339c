"""A simulated push provider that sends notifications to players' devices.

Like a real one, it sometimes fails: it refuses about one first attempt in ten, so
the demo shows the notify worker being retried. Which attempts fail depends only on
the request id, so a given message behaves the same way every time it is replayed.
"""

from __future__ import annotations

import asyncio
import zlib

from arena.proto.notify_pb2 import Notification

# One first attempt in this many fails.
_FAILURE_ONE_IN = 10
# Time a successful delivery takes, in seconds.
_LATENCY = 0.002


class PushUnavailable(Exception):
    """The push provider did not accept a notification; trying again later may work."""


async def send(notification: Notification, *, request_id: str, attempt: int) -> None:
    """Deliver a notification to the player's devices.

    Args:
        notification: What to deliver.
        request_id: The request the delivery belongs to; it decides the failures.
        attempt: Which attempt this is, from 1; only first attempts fail.

    Raises:
        PushUnavailable: The simulated provider refused this attempt.
    """
    if attempt == 1 and _unlucky(request_id):
        raise PushUnavailable(
            f"push provider refused notification {notification.notification_id} "
            f"for user {notification.user_id} (simulated outage)"
        )

    await asyncio.sleep(_LATENCY)


def _unlucky(request_id: str) -> bool:
    return zlib.crc32(request_id.encode()) % _FAILURE_ONE_IN == 0
