import asyncio
import time

import pytest
from chirptest.messages_pb2 import EchoRequest, EchoResponse

import chirp

# The context each call of `echo` ran with, by its request id.
seen: dict[str, chirp.Context] = {}


@chirp.operation
async def echo(ctx: chirp.Context, req: EchoRequest) -> EchoResponse:
    seen[ctx.request_id] = ctx
    await asyncio.sleep(req.sleep)
    return EchoResponse(
        text=req.text,
        ray_id=ctx.ray_id,
        request_id=ctx.request_id,
        depth=len(ctx.trace),
    )


@chirp.operation(name="echo-nested")
async def nested(ctx: chirp.Context, req: EchoRequest) -> EchoResponse:
    seen[ctx.request_id] = ctx
    return await ctx.call(echo, req)


@chirp.operation
async def misbehave(ctx: chirp.Context, req: EchoRequest) -> EchoResponse:
    if req.raise_kind == "value":
        raise ValueError("boom")
    if req.raise_kind == "timeout":
        raise TimeoutError("its own timeout, not a deadline")
    return EchoRequest(text="wrong type")  # type: ignore[return-value]


@chirp.operation(timeout=0.05)
async def hasty(ctx: chirp.Context, req: EchoRequest) -> EchoResponse:
    await asyncio.sleep(req.sleep)
    return EchoResponse(text=req.text)


async def test_operation_runs_with_a_child_context(client: chirp.Client) -> None:
    ctx = client.context("caller")

    response = await echo(ctx, EchoRequest(text="hi"))

    child = seen[response.request_id]
    assert response.text == "hi"
    assert echo.name == child.name == "echo"
    assert child.ray_id == response.ray_id == ctx.ray_id
    assert child.request_id != ctx.request_id
    assert child.trace == (ctx.own_trace_entry(),)
    assert child.trace[0].context_name == "caller"
    assert child.trace[0].request_id == ctx.request_id


async def test_nested_call_extends_the_trace_again(client: chirp.Client) -> None:
    ctx = client.context("caller")

    response = await ctx.call(nested, EchoRequest(text="deep"))

    inner = seen[response.request_id]
    assert response.depth == 2
    assert inner.ray_id == ctx.ray_id
    hops = [entry.context_name for entry in inner.trace]
    assert hops == ["caller", "echo-nested"]
    middle = seen[inner.trace[1].request_id]
    assert middle.trace == (ctx.own_trace_entry(),)
    assert len({ctx.request_id, middle.request_id, inner.request_id}) == 3


async def test_wrong_request_type_is_a_usage_error(client: chirp.Client) -> None:
    with pytest.raises(chirp.UsageError, match="EchoRequest"):
        await echo(client.context(), EchoResponse(text="hi"))  # type: ignore[arg-type]


async def test_operation_error_propagates_unchanged(client: chirp.Client) -> None:
    error = chirp.OperationError("ECHO_REFUSED", "refused on purpose", status=409)

    @chirp.operation
    async def refuse(ctx: chirp.Context, req: EchoRequest) -> EchoResponse:
        raise error

    with pytest.raises(chirp.OperationError) as raised:
        await refuse(client.context(), EchoRequest())

    assert raised.value is error
    assert (raised.value.code, raised.value.status) == ("ECHO_REFUSED", 409)


async def test_unexpected_exception_becomes_internal_error(
    client: chirp.Client,
) -> None:
    ctx = client.context()

    with pytest.raises(chirp.InternalError, match="misbehave") as raised:
        await misbehave(ctx, EchoRequest(raise_kind="value"))

    assert raised.value.ray_id == ctx.ray_id
    assert isinstance(raised.value.__cause__, ValueError)
    assert str(raised.value.__cause__) == "boom"


async def test_own_timeout_error_is_internal_not_a_deadline(
    client: chirp.Client,
) -> None:
    with pytest.raises(chirp.InternalError) as raised:
        await misbehave(client.context(), EchoRequest(raise_kind="timeout"))

    assert isinstance(raised.value.__cause__, TimeoutError)


async def test_returning_the_wrong_type_is_internal_error(
    client: chirp.Client,
) -> None:
    ctx = client.context()

    with pytest.raises(chirp.InternalError, match="EchoResponse") as raised:
        await misbehave(ctx, EchoRequest())

    assert raised.value.ray_id == ctx.ray_id


async def test_operation_timeout(client: chirp.Client) -> None:
    started = time.monotonic()

    with pytest.raises(chirp.ChirpTimeoutError, match="hasty") as raised:
        await hasty(client.context(), EchoRequest(sleep=2))

    assert isinstance(raised.value, TimeoutError)
    assert time.monotonic() - started < 1
    response = await hasty(client.context(), EchoRequest(text="quick"))
    assert response.text == "quick"


async def test_parent_deadline_applies(client: chirp.Client) -> None:
    parent = client.context().child("parent", timeout=0.05)
    started = time.monotonic()

    with pytest.raises(chirp.ChirpTimeoutError):
        await echo(parent, EchoRequest(sleep=2))

    assert time.monotonic() - started < 1


async def test_child_deadline_is_the_earlier_one(client: chirp.Client) -> None:
    parent = client.context().child("parent", timeout=30)

    response = await echo(parent, EchoRequest())

    child = seen[response.request_id]
    assert parent.deadline is not None and child.deadline is not None
    assert child.deadline == parent.deadline


def test_name_defaults_to_kebab_case_function_name() -> None:
    @chirp.operation
    async def get_user_name(ctx: chirp.Context, req: EchoRequest) -> EchoResponse:
        return EchoResponse()

    assert get_user_name.name == "get-user-name"
    assert get_user_name.request_type is EchoRequest
    assert get_user_name.response_type is EchoResponse
    assert isinstance(get_user_name, chirp.Operation)


def test_sync_function_is_refused() -> None:
    with pytest.raises(chirp.UsageError, match="async"):

        @chirp.operation  # type: ignore[arg-type]
        def sync(ctx: chirp.Context, req: EchoRequest) -> EchoResponse:
            return EchoResponse()


def test_missing_annotations_are_refused() -> None:
    with pytest.raises(chirp.UsageError, match="request"):

        @chirp.operation
        async def unannotated(ctx, req) -> EchoResponse:  # type: ignore[no-untyped-def]
            return EchoResponse()

    with pytest.raises(chirp.UsageError, match="response"):

        @chirp.operation
        async def no_return(ctx: chirp.Context, req: EchoRequest):  # type: ignore[no-untyped-def]
            return EchoResponse()


def test_non_protobuf_annotation_is_refused() -> None:
    with pytest.raises(chirp.UsageError, match="request"):

        @chirp.operation  # type: ignore[type-var]
        async def takes_text(ctx: chirp.Context, req: str) -> EchoResponse:
            return EchoResponse()


async def test_a_deadline_leaves_the_caller_task_uncancelled(
    client: chirp.Client,
) -> None:
    with pytest.raises(chirp.ChirpTimeoutError):
        await hasty(client.context(), EchoRequest(sleep=2))

    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.02)


async def test_nested_expiry_is_reported_once(client: chirp.Client) -> None:
    parent = client.context().child("parent", timeout=0.05)

    with pytest.raises(chirp.ChirpTimeoutError):
        await nested(parent, EchoRequest(sleep=2))

    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_outside_cancellation_is_not_a_timeout(client: chirp.Client) -> None:
    call = asyncio.create_task(echo(client.context(), EchoRequest(sleep=2)))
    await asyncio.sleep(0.05)
    call.cancel()

    with pytest.raises(asyncio.CancelledError):
        await call
