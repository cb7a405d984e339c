"""The arena example: its stores, operations and workers, and the demo end to end."""

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from arena.notify import push
from arena.notify import workers as notify_workers
from arena.notify.operations import notification_list
from arena.proto.notify_pb2 import (
    Notification,
    NotificationCreate,
    NotificationListRequest,
)
from arena.proto.user_pb2 import (
    UserCreate,
    UserCreateComplete,
    UserCreateFail,
    UserFollow,
    UserFollowComplete,
    UserFollowFail,
    UserGetRequest,
)
from arena.user import store
from arena.user import workers as user_workers
from arena.user.operations import user_get
from arena.user.store import CreateOutcome, FollowOutcome

import chirp
from chirp.testing import running_workers

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "arena.sqlite3"
    monkeypatch.setenv("ARENA_DB", str(path))
    return path


@pytest.fixture
async def arena(client: chirp.Client) -> AsyncIterator[chirp.Context]:
    """Run the arena's workers in-process; return a context to talk to them."""
    workers = (
        user_workers.user_create,
        user_workers.user_follow,
        notify_workers.notify_follow,
    )
    async with running_workers(client, *workers):
        yield client.context()


async def test_creating_the_same_user_again_succeeds() -> None:
    first = await store.create_user("u1", "ada", "Ada")
    again = await store.create_user("u1", "ada", "Ada")

    assert first is again is CreateOutcome.CREATED


async def test_a_taken_handle_or_id_is_refused() -> None:
    await store.create_user("u1", "ada", "Ada")

    assert await store.create_user("u2", "ada", "Ada") is CreateOutcome.HANDLE_TAKEN
    assert await store.create_user("u1", "bob", "Bob") is CreateOutcome.USER_EXISTS


async def test_a_follow_replayed_by_its_request_succeeds_but_not_by_another() -> None:
    await store.create_user("u1", "ada", "Ada")
    await store.create_user("u2", "bob", "Bob")

    assert await store.follow("u1", "u2", request_id="r1") is FollowOutcome.FOLLOWED
    assert await store.follow("u1", "u2", request_id="r1") is FollowOutcome.FOLLOWED
    again = await store.follow("u1", "u2", request_id="r2")
    assert again is FollowOutcome.ALREADY_FOLLOWING
    missing = await store.follow("u1", "u3", request_id="r3")
    assert missing is FollowOutcome.FOLLOWEE_NOT_FOUND


async def test_user_get_counts_followers_and_404s_unknown_users(
    client: chirp.Client,
) -> None:
    await store.create_user("u1", "ada", "Ada")
    await store.create_user("u2", "bob", "Bob")
    await store.follow("u1", "u2", request_id="r1")
    ctx = client.context()

    reply = await user_get(ctx, UserGetRequest(user_id="u2"))
    with pytest.raises(chirp.OperationError) as raised:
        await user_get(ctx, UserGetRequest(user_id="nobody"))

    assert (reply.user.handle, reply.user.follower_count) == ("bob", 1)
    assert (raised.value.code, raised.value.status) == ("USER_NOT_FOUND", 404)


def test_push_fails_about_one_first_attempt_in_ten() -> None:
    ids = [f"request-{i}" for i in range(2000)]

    unlucky = [i for i in ids if push._unlucky(i)]

    assert 150 < len(unlucky) < 250


async def test_push_fails_first_attempts_only() -> None:
    notification = Notification(notification_id="n1", user_id="u1", text="hi")
    request_id = next(f"r{i}" for i in range(1000) if push._unlucky(f"r{i}"))

    with pytest.raises(push.PushUnavailable):
        await push.send(notification, request_id=request_id, attempt=1)
    await push.send(notification, request_id=request_id, attempt=2)


async def test_a_redelivered_follow_completes_again(client: chirp.Client) -> None:
    for user_id, handle in (("u1", "ada"), ("u2", "bob")):
        await store.create_user(user_id, handle, handle)
    ctx = client.context()
    follow = UserFollow(follower_id="u1", followee_id="u2")

    async with await ctx.subscribe(UserFollowComplete) as completions:
        # The same context twice: the same request id, as when a message is retried.
        await user_workers.user_follow(ctx, follow)
        await user_workers.user_follow(ctx, follow)
        first = await completions.next(timeout=5)
        second = await completions.next(timeout=5)

    assert (
        first.body
        == second.body
        == UserFollowComplete(follower_id="u1", followee_id="u2")
    )


async def test_workers_answer_creates_and_follows(arena: chirp.Context) -> None:
    for user_id, handle in (("u1", "ada"), ("u2", "bob")):
        create = UserCreate(user_id=user_id, handle=handle, display_name=handle)
        await arena.publish_wait(
            create, UserCreateComplete, fail=UserCreateFail, timeout=10
        )

    with pytest.raises(chirp.MessageFailed) as taken:
        await arena.publish_wait(
            UserCreate(user_id="u3", handle="ada", display_name="Copycat"),
            UserCreateComplete,
            fail=UserCreateFail,
            timeout=10,
        )
    with pytest.raises(chirp.MessageFailed) as self_follow:
        await arena.publish_wait(
            UserFollow(follower_id="u1", followee_id="u1"),
            UserFollowComplete,
            fail=UserFollowFail,
            timeout=10,
        )

    assert taken.value.code == "HANDLE_TAKEN"
    assert self_follow.value.code == "CANNOT_FOLLOW_SELF"


async def test_a_follow_notifies_the_followee(arena: chirp.Context) -> None:
    for user_id, handle in (("u1", "ada"), ("u2", "bob")):
        await store.create_user(user_id, handle, handle)

    follow = UserFollow(follower_id="u1", followee_id="u2")
    await arena.publish_wait(follow, UserFollowComplete, fail=UserFollowFail)
    created = await arena.tail_anchor(
        NotificationCreate, {"user_id": "u2"}, since=0, timeout=10
    )
    listed = await notification_list(arena, NotificationListRequest(user_id="u2"))

    assert created.body.text == "ada followed you"
    assert [n.text for n in listed.notifications] == ["ada followed you"]


def test_the_demo_runs_end_to_end() -> None:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES)}
    env.pop("CHIRP_NAMESPACE", None)

    result = subprocess.run(
        [sys.executable, "-m", "arena.demo", "--requests", "200"],
        cwd=EXAMPLES.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "retries" in result.stdout
    assert "mismatches: 0" in result.stdout
