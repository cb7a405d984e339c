"""The HTTP API of the arena, in front of the user and notify packages.

Every request gets a root context, so its ray id (returned in the ``X-Ray-Id`` header)
ties together everything the request caused: the messages it published, the workers
that handled them, the operations they called. Reads call operations in-process;
writes publish a message and wait for the worker's answer. Errors answer through
`chirp.api_error` with the codes of the arena's ``errors.toml`` files, whose reference
``GET /errors`` serves.

Run it with ``uvicorn arena.gateway:app``; it connects to the servers named by
``CHIRP_NATS_URL`` and ``CHIRP_REDIS_URL``.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from chirp import Client, Context, api_error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from arena.errors import registry
from arena.notify.operations import notification_list
from arena.proto.notify_pb2 import Notification, NotificationListRequest
from arena.proto.user_pb2 import (
    UserCreate,
    UserCreateComplete,
    UserCreateFail,
    UserFollow,
    UserFollowComplete,
    UserFollowFail,
    UserGetRequest,
)
from arena.user.operations import user_get

RAY_HEADER = "X-Ray-Id"
# Seconds a write waits for the worker's answer before the client gets a 504.
WRITE_TIMEOUT = 10.0

# Where an error answer's documentation link points: this gateway's own reference.
DOCS_URL = os.environ.get("ARENA_ERRORS_URL", "/errors")
# With "1", 5xx answers carry the exception's text: for development only.
VERBOSE_ERRORS = os.environ.get("ARENA_VERBOSE_ERRORS") == "1"
_HANDLE = re.compile(r"^[a-z0-9_]{2,30}$")

Json = dict[str, Any]
Endpoint = Callable[[Request, Context], Awaitable[Json]]


def error_response(error: Exception, ray_id: str) -> Response:
    """Return the HTTP answer to an error, as `chirp.api_error` makes it.

    Business errors keep their status (message failures get theirs from their code),
    a missed deadline is a 504, and any other error, Chirp's or not, is a 500 that
    names the ray to look up.
    """
    answer = api_error(
        error,
        registry=registry,
        verbose=VERBOSE_ERRORS,
        docs_url=DOCS_URL,
        ray_id=ray_id,
    )
    return Response(
        answer.content(),
        answer.status,
        answer.headers,
        media_type="application/json",
    )


def endpoint(handler: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: give it a root context, answer in JSON, map errors.

    The handler returns the JSON body of a 200 answer or raises; every answer
    carries the ray id in the ``X-Ray-Id`` header.
    """

    async def run(request: Request) -> Response:
        client: Client = request.state.client
        ctx = client.context()
        response: Response
        try:
            response = JSONResponse(await handler(request, ctx))
        except Exception as error:
            response = error_response(error, ctx.ray_id)
        response.headers[RAY_HEADER] = ctx.ray_id
        return response

    return run


@endpoint
async def create_user(request: Request, ctx: Context) -> Json:
    """``POST /users`` ``{handle, display_name}``: register a player."""
    body = await _json_object(request)
    handle = _text(body, "handle")
    registry.ensure(_HANDLE.match(handle), "INVALID_HANDLE", handle=handle)
    create = UserCreate(
        user_id="u" + secrets.token_hex(8),
        handle=handle,
        display_name=_text(body, "display_name"),
    )

    await ctx.publish_wait(
        create, UserCreateComplete, fail=UserCreateFail, timeout=WRITE_TIMEOUT
    )
    return {
        "user_id": create.user_id,
        "handle": create.handle,
        "display_name": create.display_name,
        "follower_count": 0,
    }


@endpoint
async def get_user(request: Request, ctx: Context) -> Json:
    """``GET /users/{user_id}``: a player and their follower count."""
    reply = await user_get(ctx, UserGetRequest(user_id=request.path_params["user_id"]))
    user = reply.user
    return {
        "user_id": user.user_id,
        "handle": user.handle,
        "display_name": user.display_name,
        "follower_count": user.follower_count,
    }


@endpoint
async def follow_user(request: Request, ctx: Context) -> Json:
    """``POST /users/{user_id}/follow`` ``{followee_id}``: follow another player."""
    body = await _json_object(request)
    follow = UserFollow(
        follower_id=request.path_params["user_id"],
        followee_id=_text(body, "followee_id"),
    )

    await ctx.publish_wait(
        follow, UserFollowComplete, fail=UserFollowFail, timeout=WRITE_TIMEOUT
    )
    return {"follower_id": follow.follower_id, "followee_id": follow.followee_id}


@endpoint
async def list_notifications(request: Request, ctx: Context) -> Json:
    """``GET /users/{user_id}/notifications?limit=N``: newest first."""
    limit = request.query_params.get("limit", "0")
    registry.ensure(limit.isdigit(), "INVALID_QUERY", name="limit", value=limit)
    list_request = NotificationListRequest(
        user_id=request.path_params["user_id"], limit=int(limit)
    )

    reply = await notification_list(ctx, list_request)
    return {"notifications": [_notification_json(n) for n in reply.notifications]}


async def health(request: Request) -> Response:
    """``GET /health``: answers once the gateway is connected."""
    return JSONResponse({"status": "ok"})


async def errors(request: Request) -> Response:
    """``GET /errors``: the reference of every error code, in Markdown."""
    return PlainTextResponse(registry.reference(), media_type="text/markdown")


async def _json_object(request: Request) -> Json:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        registry.bail("INVALID_JSON")
    return body


def _text(body: Json, field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        registry.bail("INVALID_FIELD", field=field)
    return value


def _notification_json(notification: Notification) -> Json:
    return {
        "notification_id": notification.notification_id,
        "text": notification.text,
        "created_ms": notification.created_ms,
    }


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Client]]:
    """Connect the gateway's Chirp client for as long as the app runs."""
    async with Client(name="gateway") as client:
        yield {"client": client}


app = Starlette(
    routes=[
        Route("/users", create_user, methods=["POST"]),
        Route("/users/{user_id}", get_user, methods=["GET"]),
        Route("/users/{user_id}/follow", follow_user, methods=["POST"]),
        Route("/users/{user_id}/notifications", list_notifications, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/errors", errors, methods=["GET"]),
    ],
    lifespan=lifespan,
)
