"""Operations of the notify package."""

from __future__ import annotations

from chirp import Context, OperationError, operation

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
    if not 0 <= request.limit <= store.MAX_LIMIT:
        raise OperationError(
            "INVALID_LIMIT",
            f"limit must be between 0 and {store.MAX_LIMIT}, got {request.limit}",
            status=400,
        )

    limit = request.limit or store.DEFAULT_LIMIT
    notifications = await store.list_notifications(request.user_id, limit=limit)
    return NotificationListResponse(notifications=notifications)
