"""Operations of the user package: reads other packages may call in-process."""

from __future__ import annotations

from chirp import Context, OperationError, operation

from arena.proto.user_pb2 import User, UserGetRequest, UserGetResponse
from arena.user import store


@operation(name="user-get", timeout=5.0)
async def user_get(ctx: Context, request: UserGetRequest) -> UserGetResponse:
    """Return a user with their follower count.

    Raises:
        OperationError: USER_NOT_FOUND (status 404) if there is no such user.
    """
    record = await store.get_user(request.user_id)
    if record is None:
        raise OperationError(
            "USER_NOT_FOUND", f"user {request.user_id!r} does not exist", status=404
        )

    return UserGetResponse(
        user=User(
            user_id=record.user_id,
            handle=record.handle,
            display_name=record.display_name,
            follower_count=record.follower_count,
        )
    )
