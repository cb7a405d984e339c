"""Operations of the user package: reads other packages may call in-process."""

from __future__ import annotations

from chirp import Context, operation

from arena.errors import registry
from arena.proto.user_pb2 import User, UserGetRequest, UserGetResponse
from arena.user import store


@operation(name="user-get", timeout=5.0)
async def user_get(ctx: Context, request: UserGetRequest) -> UserGetResponse:
    """Return a user with their follower count.

    Raises:
        OperationError: USER_NOT_FOUND (status 404) if there is no such user.
    """
    found = await store.get_user(request.user_id)
    record = registry.unwrap(found, "USER_NOT_FOUND", user_id=request.user_id)

    return UserGetResponse(
        user=User(
            user_id=record.user_id,
            handle=record.handle,
            display_name=record.display_name,
            follower_count=record.follower_count,
        )
    )
