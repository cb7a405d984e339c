"""Workers of the user package: they create users and record follows.

Each answers its request with a completion or a failure message that carries the
request's parameters, so the publisher can wait for it (`Context.publish_wait`). A
failure message carries a code of ``errors.toml`` and its description; the gateway
gives it the code's status.
Running a message twice gives the same answer twice: the store's writes are
idempotent.
"""

from __future__ import annotations

from chirp import Context, OperationError, worker

from arena.errors import registry
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


@worker(publishes=(UserCreateComplete, UserCreateFail))
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
        refusal = registry.error("HANDLE_TAKEN", handle=message.handle)
    else:
        refusal = registry.error("USER_EXISTS", user_id=message.user_id)
    ctx.log.info("user-create %s refused: %s", message.user_id, refusal.message)
    fail = UserCreateFail(
        user_id=message.user_id, code=refusal.code, message=refusal.message
    )
    await ctx.msg(fail)


@worker(publishes=(UserFollowComplete, UserFollowFail))
async def user_follow(ctx: Context, message: UserFollow) -> None:
    """Record a follow, then announce it, or announce why it was refused."""
    follower, followee = message.follower_id, message.followee_id
    if follower == followee:
        await _refuse(ctx, message, registry.error("CANNOT_FOLLOW_SELF"))
        return

    outcome = await store.follow(follower, followee, request_id=ctx.request_id)
    if outcome is FollowOutcome.FOLLOWED:
        complete = UserFollowComplete(follower_id=follower, followee_id=followee)
        await ctx.msg(complete)
    elif outcome is FollowOutcome.ALREADY_FOLLOWING:
        refusal = registry.error(
            "ALREADY_FOLLOWING", follower_id=follower, followee_id=followee
        )
        await _refuse(ctx, message, refusal)
    else:
        missing = follower if outcome is FollowOutcome.FOLLOWER_NOT_FOUND else followee
        refusal = registry.error("USER_NOT_FOUND", user_id=missing)
        await _refuse(ctx, message, refusal)


async def _refuse(ctx: Context, message: UserFollow, refusal: OperationError) -> None:
    ctx.log.info("user-follow refused with %s: %s", refusal.code, refusal.message)
    fail = UserFollowFail(
        follower_id=message.follower_id,
        followee_id=message.followee_id,
        code=refusal.code,
        message=refusal.message,
    )
    await ctx.msg(fail)
