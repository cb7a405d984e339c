"""The API edge: the HTTP answer to each kind of error."""

import json
from pathlib import Path

import pytest
from chirptest.messages_pb2 import EchoRequest, EchoResponse, Ping, PingDone, PingFailed

import chirp
from chirp.testing import running_workers

DOCS = "https://docs.example/errors"


@pytest.fixture
def registry(tmp_path: Path) -> chirp.Registry:
    (tmp_path / "errors.toml").write_text(
        "[USER_NOT_FOUND]\n"
        "status = 404\n"
        'description = "User {user_id} was not found"\n'
        'placeholders = ["user_id"]\n'
        "\n"
        "[PING_REFUSED]\n"
        "status = 409\n"
        'description = "Ping {key} was refused"\n'
        'placeholders = ["key"]\n'
    )
    return chirp.Registry.load(tmp_path)


def test_a_registered_error_answers_with_its_status_and_documentation(
    registry: chirp.Registry,
) -> None:
    error = registry.error("USER_NOT_FOUND", user_id="u1")

    answer = chirp.api_error(error, registry=registry, docs_url=DOCS)

    assert answer.status == 404
    assert answer.headers == {}
    assert answer.body == {
        "code": "USER_NOT_FOUND",
        "message": "User u1 was not found",
        "documentation": f"{DOCS}#user_not_found",
        "metadata": {"user_id": "u1"},
    }
    assert json.loads(answer.content()) == answer.body


def test_an_unregistered_operation_error_keeps_its_status_without_a_link(
    registry: chirp.Registry,
) -> None:
    error = chirp.OperationError("ODD", "odd", status=418, metadata={"n": 1})

    answer = chirp.api_error(error, registry=registry, docs_url=DOCS)

    assert (answer.status, answer.body["documentation"]) == (418, None)
    assert answer.body["metadata"] == {"n": 1}


def test_without_a_docs_url_there_is_no_link(registry: chirp.Registry) -> None:
    answer = chirp.api_error(registry.error("USER_NOT_FOUND", user_id="u1"))

    assert answer.body["documentation"] is None


def refusing_worker(name: str) -> chirp.Worker[Ping]:
    @chirp.worker(name=name)
    async def refuse(ctx: chirp.Context, msg: Ping) -> None:
        await ctx.msg(PingFailed(key=msg.key, code=msg.text, message="refused"))

    return refuse


@pytest.mark.parametrize(("code", "status"), [("PING_REFUSED", 409), ("ODD", 400)])
async def test_a_failure_message_answers_with_its_codes_status(
    client: chirp.Client,
    registry: chirp.Registry,
    unique_name: str,
    code: str,
    status: int,
) -> None:
    ctx = client.context("waiter")

    async with running_workers(client, refusing_worker(unique_name)):
        with pytest.raises(chirp.MessageFailed) as raised:
            await ctx.publish_wait(
                Ping(key="k", text=code), PingDone, fail=PingFailed, timeout=10
            )
    answer = chirp.api_error(raised.value, registry=registry)

    assert answer.status == status
    assert (answer.body["code"], answer.body["message"]) == (code, "refused")


@chirp.operation(name="edge-broken")
async def broken(ctx: chirp.Context, req: EchoRequest) -> EchoResponse:
    raise ValueError("the database said no")


async def internal_error(client: chirp.Client) -> chirp.InternalError:
    try:
        await broken(client.context(), EchoRequest())
    except chirp.InternalError as error:
        return error
    raise AssertionError("the operation did not fail")


async def test_an_internal_error_names_the_ray_and_hides_the_details(
    client: chirp.Client,
) -> None:
    error = await internal_error(client)

    answer = chirp.api_error(error)

    assert answer.status == 500
    assert answer.body["code"] == "CHIRP_INTERNAL"
    assert answer.body["message"] == f"Internal error; look up ray {error.ray_id}"
    assert answer.body["metadata"] == {"ray_id": error.ray_id}
    assert "database" not in answer.content().decode()


async def test_a_verbose_internal_error_shows_the_exception_and_cause(
    client: chirp.Client,
) -> None:
    error = await internal_error(client)

    answer = chirp.api_error(error, verbose=True)

    assert answer.body["metadata"]["detail"].startswith("InternalError: operation")
    assert answer.body["metadata"]["cause"] == "ValueError: the database said no"


def test_any_other_exception_is_internal_under_the_ray_given() -> None:
    answer = chirp.api_error(KeyError("user_id"), ray_id="r1")
    anonymous = chirp.api_error(KeyError("user_id"))

    assert (answer.status, answer.body["message"]) == (
        500,
        "Internal error; look up ray r1",
    )
    assert anonymous.body["message"] == "Internal error"
    assert anonymous.body["metadata"] == {}


def test_a_timeout_is_a_504(registry: chirp.Registry) -> None:
    error = chirp.ChirpTimeoutError("no 'x-done' reply within 10s")

    answer = chirp.api_error(error, registry=registry, ray_id="r1", docs_url=DOCS)
    verbose = chirp.api_error(error, verbose=True)

    assert answer.status == 504
    assert answer.body == {
        "code": "CHIRP_TIMEOUT",
        "message": "No answer came before the deadline",
        "documentation": f"{DOCS}#chirp_timeout",
        "metadata": {"ray_id": "r1"},
    }
    assert verbose.body["metadata"]["detail"].endswith("within 10s")


def test_a_decode_failure_is_a_502() -> None:
    answer = chirp.api_error(chirp.DecodeError("truncated body"))

    assert (answer.status, answer.body["code"]) == (502, "CHIRP_DECODE_FAILED")


def test_a_registry_without_chirps_codes_still_answers_with_them() -> None:
    bare = chirp.Registry()

    answer = chirp.api_error(chirp.ChirpTimeoutError("late"), registry=bare)

    assert (answer.status, answer.body["code"]) == (504, "CHIRP_TIMEOUT")


@pytest.mark.parametrize(("seconds", "header"), [(2.5, "3"), (7, "7"), (0, "0")])
def test_rate_limited_sets_retry_after(seconds: float, header: str) -> None:
    error = chirp.error("CHIRP_RATE_LIMITED", retry_after=seconds)

    answer = chirp.api_error(error)

    assert answer.status == 429
    assert answer.headers == {"Retry-After": header}
    assert answer.body["metadata"] == {"retry_after": seconds}
    assert answer.body["message"] == (
        f"Too many requests; retry after {seconds} seconds"
    )
