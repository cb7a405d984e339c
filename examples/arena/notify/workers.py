"""Workers of the notify package."""

from __future__ import annotations

import hashlib

from chirp import Backoff, Context, worker

from arena.notify import push, store
from arena.proto.notify_pb2 import NotificationCreate
from arena.proto.user_pb2 import UserFollowComplete, UserGetRequest
from arena.user.operations import user_get


@worker(
    backoff=Backoff(base=0.05, cap=1.0),
    publishes=(NotificationCreate,),
    calls=(user_get,),
)
async def notify_follow(ctx: Context, message: UserFollowComplete) -> None:
    """Tell a user who just followed them: store, push, then announce the notification.

    Each step is safe to repeat, so a retry after a failed push stores nothing twice.
    """
    reply = await user_get(ctx, UserGetRequest(user_id=message.follower_id))
    notification = await store.add_notification(
        follow_notification_id(message.follower_id, message.followee_id),
        user_id=message.followee_id,
        text=f"{reply.user.handle} followed you",
    )

    await push.send(notification, request_id=ctx.request_id, attempt=ctx.attempt)

    await ctx.msg(
        NotificationCreate(
            user_id=notification.user_id,
            notification_id=notification.notification_id,
            text=notification.text,
        )
    )


def follow_notification_id(follower_id: str, followee_id: str) -> str:
    """Return the id of the notification about one follow, the same every time.

    Derived from the follow, not from the message, so that even two completion
    messages of one follow make a single notification.
    """
    digest = hashlib.sha256(f"follow\0{follower_id}\0{followee_id}".encode())
    return "n-" + digest.hexdigest()[:24]
