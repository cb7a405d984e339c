"""Operations of the notify package."""

from __future__ import annotations

from chirp import Context, operation

from arena.errors import registry
from arena.notify import store
from arena.proto.notify_pb2 import NotificationListRequest, NotificationListResponse


@operation(name="notification-list", timeout=5.0)
async def notification_list(
    ctx: Context, request: NotificationListRequest
) -> NotificationListResponse:
    """Return a user's notifications, newest first.

    A user nobody notified, or who does not exist, has an empty list.

    Raises:
        OperationError: INVALID_LIMIT (status 400) if the limit is negative or above
            the maximum.
    """
    registry.ensure(
        0 <= request.limit <= store.MAX_LIMIT,
        "INVALID_LIMIT",
        maximum=store.MAX_LIMIT,
        limit=request.limit,
    )

    limit = request.limit or store.DEFAULT_LIMIT
    notifications = await store.list_notifications(request.user_id, limit=limit)
    return NotificationListResponse(notifications=notifications)
