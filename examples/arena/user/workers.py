"""Workers of the user package: they create users and record follows.

Each answers its request with a completion or a failure message that carries the
request's parameters, so the publisher can wait for it (`Context.publish_wait`).
Running a message twice gives the same answer twice: the store's writes are
idempotent.
"""

from __future__ import annotations

from chirp import Context, worker

from arena.proto.user_pb2 import (
    UserCreate,
    UserCreateComplete,
    UserCreateFail,
    UserFollow,
    UserFollowComplete,
    UserFollowFail,
)
from arena.user import store
from arena.user.store import CreateOutcome, FollowOutcome


@worker
async def user_create(ctx: Context, message: UserCreate) -> None:
    """Store a new user, then announce it, or announce why it was refused."""
    outcome = await store.create_user(
        message.user_id, message.handle, message.display_name
    )
    if outcome is CreateOutcome.CREATED:
        complete = UserCreateComplete(user_id=message.user_id, handle=message.handle)
        await ctx.msg(complete)
        return

    if outcome is CreateOutcome.HANDLE_TAKEN:
        reason = f"handle {message.handle!r} belongs to another user"
    else:
        reason = f"user {message.user_id!r} exists with another handle"
    ctx.log.info("user-create %s refused: %s", message.user_id, reason)
    fail = UserCreateFail(user_id=message.user_id, code=outcome.value, message=reason)
    await ctx.msg(fail)


@worker
async def user_follow(ctx: Context, message: UserFollow) -> None:
    """Record a follow, then announce it, or announce why it was refused."""
    follower, followee = message.follower_id, message.followee_id
    if follower == followee:
        await _refuse(
            ctx, message, "CANNOT_FOLLOW_SELF", "users cannot follow themselves"
        )
        return

    outcome = await store.follow(follower, followee, request_id=ctx.request_id)
    if outcome is FollowOutcome.FOLLOWED:
        complete = UserFollowComplete(follower_id=follower, followee_id=followee)
        await ctx.msg(complete)
    elif outcome is FollowOutcome.ALREADY_FOLLOWING:
        reason = f"user {follower!r} follows {followee!r} already"
        await _refuse(ctx, message, "ALREADY_FOLLOWING", reason)
    else:
        missing = follower if outcome is FollowOutcome.FOLLOWER_NOT_FOUND else followee
        reason = f"user {missing!r} does not exist"
        await _refuse(ctx, message, "USER_NOT_FOUND", reason)


async def _refuse(ctx: Context, message: UserFollow, code: str, reason: str) -> None:
    ctx.log.info("user-follow refused with %s: %s", code, reason)
    fail = UserFollowFail(
        follower_id=message.follower_id,
        followee_id=message.followee_id,
        code=code,
        message=reason,
    )
    await ctx.msg(fail)
