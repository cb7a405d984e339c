"""Inspecting a live system: status, traces, publish, listen, tail and call."""

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from chirptest.messages_pb2 import Ping, PingDone, PingFailed, Status

import chirp
from chirp import Backoff, Client, Context, _inspect, _state
from chirp.testing import EmbeddedServers, running_workers

TESTS = str(Path(__file__).parent)
MESSAGES = ("--path", TESTS, "--module", "chirptest.messages_pb2")


class _Ceiling(random.Random):
    """Jitter that always picks the longest delay, so a retry's due time is known."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def _eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _env(servers: EmbeddedServers) -> dict[str, str]:
    return {
        **os.environ,
        "CHIRP_NATS_URL": servers.nats_url,
        "CHIRP_REDIS_URL": servers.redis_url,
    }


async def _cli(
    servers: EmbeddedServers, client: Client, *args: str
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "chirp", *args),
        "--namespace",
        client.names.namespace,
        env=_env(servers),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# status --------------------------------------------------------------------------


async def test_status_counts_lag_pending_retries_and_dead_letters(
    client: Client, servers: EmbeddedServers, unique_name: str
) -> None:
    dying, waiting, by_hand = (f"{unique_name}-{s}" for s in ("dying", "wait", "hand"))

    @chirp.worker(name=dying, backoff=Backoff(base=0.01, cap=0.01, max_attempts=2))
    async def gives_up(ctx: Context, msg: Ping) -> None:
        if msg.key.startswith("bad"):
            raise RuntimeError(f"cannot take {msg.key}")

    @chirp.worker(name=waiting, backoff=Backoff(base=3600, cap=3600, rng=_Ceiling()))
    async def retries_later(ctx: Context, msg: Ping) -> None:
        if msg.key.startswith("bad"):
            raise RuntimeError(f"not now {msg.key}")

    for key in ("ok-0", "ok-1", "ok-2", "bad-0", "bad-1"):
        await client.context().msg(Ping(key=key))
    redis, names = client.redis, client.names

    async def settled() -> bool:
        found = {s.worker: s for s in await _state.status(redis, names)}
        return (
            found[dying].dead_letters == 2
            and found[waiting].scheduled == 2
            and all(found[w].pending == 0 and found[w].lag == 0 for w in found)
        )

    async with running_workers(client, gives_up, retries_later):
        await _eventually(settled)
    stream = names.stream_key("test-ping")
    await redis.xgroup_create(stream, by_hand, id="0")
    await redis.xreadgroup(by_hand, "by-hand-1", {stream: ">"}, count=2)

    known = [("never-ran", "test-ping")]
    found = {s.worker: s for s in await _state.status(redis, names, known)}

    assert set(found) == {dying, waiting, by_hand, "never-ran"}
    assert (found[dying].dead_letters, found[dying].retries) == (2, 2)
    assert (found[dying].scheduled, found[dying].pending) == (0, 0)
    # The host stopped: holding nothing, its consumer left the group.
    assert not found[dying].consumers
    assert (found[waiting].scheduled, found[waiting].retries) == (2, 2)
    assert found[waiting].dead_letters == 0
    assert (found[by_hand].pending, found[by_hand].lag) == (2, 3)
    [consumer] = found[by_hand].consumers
    assert (consumer.name, consumer.pending) == ("by-hand-1", 2)
    assert all(
        s.stream_length == 5 and s.message == "test-ping" for s in found.values()
    )
    assert not found["never-ran"].group and found["never-ran"].lag is None

    code, out, _ = await _cli(servers, client, "status", "--json")
    assert code == 0
    rows = {row["worker"]: row for row in json.loads(out)}
    assert rows[dying]["dead_letters"] == 2 and rows[by_hand]["lag"] == 3

    code, out, _ = await _cli(servers, client, "status")
    header, *lines = out.splitlines()
    assert header.split("\t")[:3] == ["worker", "message", "stream"]
    assert any(line.startswith(f"{by_hand}\ttest-ping\t5\t3\t2\t") for line in lines)


# trace ---------------------------------------------------------------------------


async def test_trace_follows_a_ray_through_a_worker_and_its_dead_letters(
    client: Client, servers: EmbeddedServers, unique_name: str
) -> None:
    refusing = f"{unique_name}-refuse"

    @chirp.worker(name=unique_name)
    async def answer(ctx: Context, msg: Ping) -> None:
        await ctx.msg(PingDone(key=msg.key, text=msg.text))

    @chirp.worker(name=refusing, backoff=Backoff(max_attempts=1))
    async def refuse(ctx: Context, msg: Ping) -> None:
        raise RuntimeError("refused")

    ctx = client.context("tester")
    published = await ctx.msg(Ping(key="k1", text="hello"))
    await client.context("someone-else").msg(Ping(key="k2"))
    redis, names = client.redis, client.names

    async def handled() -> bool:
        done = await redis.xlen(names.stream_key("test-ping-done"))
        dead = await redis.xlen(names.dead_letter_key(refusing))
        return bool(done == 2 and dead == 2)

    async with running_workers(client, answer, refuse):
        await _eventually(handled)

    # Chunks of one entry: the scan must page through every stream.
    found = await _state.trace(redis, names, ctx.ray_id, chunk=1)

    ping, done = found.messages
    assert (ping.name, ping.request_id, ping.hops) == (
        "test-ping",
        published.request_id,
        ("tester",),
    )
    assert (done.name, done.hops) == ("test-ping-done", ("tester", unique_name))
    assert done.parameters == {"key": "k1"} and done.body == {
        "key": "k1",
        "text": "hello",
    }
    assert ping.ts <= done.ts
    [letter] = found.dead_letters
    assert letter["worker"] == refusing
    assert letter["request_id"] == published.request_id
    assert "RuntimeError: refused" in letter["reason"]

    code, out, _ = await _cli(servers, client, "trace", ctx.ray_id, *MESSAGES)
    assert code == 0
    assert f"test-ping-done\tkey=k1\t{done.request_id}\ttester > {unique_name}" in out
    assert f"\t{refusing}\ttest-ping\t{published.request_id}\t1\t" in out
    code, _, err = await _cli(servers, client, "trace", "0" * 32)
    assert code == 1 and "no message of ray" in err


# publish -------------------------------------------------------------------------


async def test_publish_waits_for_the_reply_or_the_failure(
    client: Client, servers: EmbeddedServers, unique_name: str
) -> None:
    @chirp.worker(name=unique_name)
    async def answer(ctx: Context, msg: Ping) -> None:
        if msg.fail_times:
            await ctx.msg(PingFailed(key=msg.key, code="NOPE", message="refused"))
        else:
            await ctx.msg(PingDone(key=msg.key, text=msg.text.upper()))

    wait = ("--wait", "test-ping-done", "--fail", "test-ping-failed", "--timeout", "20")
    async with running_workers(client, answer):
        body = ("--json", '{"text": "hi"}', "--param", "key=k1")
        code, out, err = await _cli(
            servers, client, "publish", "test-ping", *body, *wait, *MESSAGES
        )
        assert code == 0, err
        reply = json.loads(out)
        assert reply["name"] == "test-ping-done"
        assert reply["parameters"] == {"key": "k1"}
        assert reply["body"] == {"key": "k1", "text": "HI"}
        assert len(reply["ray_id"]) == 32

        body = ("--json", '{"key": "k2", "failTimes": 1}')
        code, out, _ = await _cli(
            servers, client, "publish", "test-ping", *body, *wait, *MESSAGES
        )
    assert code == 1
    failure = json.loads(out)
    assert failure["code"] == "NOPE" and failure["message"] == "refused"
    assert failure["received"]["name"] == "test-ping-failed"


async def test_publish_prints_the_ids_of_what_it_wrote(
    client: Client, servers: EmbeddedServers
) -> None:
    code, out, err = await _cli(
        servers, client, "publish", "test-ping", "--json", '{"key": "k"}', *MESSAGES
    )

    assert code == 0, err
    published = json.loads(out)
    [(entry_id, fields)] = await client.redis.xrange(
        client.names.stream_key("test-ping")
    )
    assert published["entry_id"] == entry_id.decode()
    assert published["request_id"].encode() in fields[b"e"]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (("--json", '{"nope": 1}'), "nope"),
        (("--json", '{"sleep": "slow"}'), "sleep"),
        (("--json", "{key"), "not valid JSON"),
        (("--param", "text=x"), "no parameter(s) ['text']"),
    ],
)
async def test_publish_names_what_is_wrong_with_its_input(
    client: Client, servers: EmbeddedServers, extra: tuple[str, str], named: str
) -> None:
    code, out, err = await _cli(
        servers, client, "publish", "test-ping", *extra, *MESSAGES
    )

    assert code == 2 and not out
    assert named in err


async def test_an_unknown_message_lists_the_known_ones(
    client: Client, servers: EmbeddedServers
) -> None:
    code, _, err = await _cli(servers, client, "publish", "test-pong", *MESSAGES)

    assert code == 2
    assert "unknown message 'test-pong'" in err and "test-ping-done" in err


# listen and tail -----------------------------------------------------------------


async def test_listen_prints_matching_messages_until_count(
    client: Client, servers: EmbeddedServers
) -> None:
    command = ("listen", "test-ping-done", "key=k1", "--count", "2", "--timeout", "20")
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "chirp", *command, *MESSAGES),
        *("--namespace", client.names.namespace),
        env=_env(servers),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    while b"Listening on" not in await process.stderr.readline():
        pass

    ctx = client.context()
    for key, text in (("k1", "a"), ("k2", "b"), ("k1", "c")):
        await ctx.msg(PingDone(key=key, text=text))
    out, _ = await process.communicate()

    assert process.returncode == 0
    first, second = _json_lines(out.decode())
    assert [first["body"], second["body"]] == [
        {"key": "k1", "text": "a"},
        {"key": "k1", "text": "c"},
    ]
    assert first["name"] == "test-ping-done" and first["parameters"] == {"key": "k1"}
    assert first["ray_id"] == ctx.ray_id and first["trace"] == ["test"]
    assert isinstance(first["ts"], int) and first["request_id"] != second["request_id"]


async def test_listen_exits_1_when_the_timeout_passes_first(
    client: Client, servers: EmbeddedServers
) -> None:
    limits = ("--count", "1", "--timeout", "0.2")
    code, out, _ = await _cli(
        servers, client, "listen", "test-ping", *limits, *MESSAGES
    )

    assert code == 1 and not out


async def test_tail_prints_the_kept_message_or_says_there_is_none(
    client: Client, servers: EmbeddedServers
) -> None:
    await client.context().msg(Status(region="eu", user_id=7, status="online"))

    code, out, _ = await _cli(
        servers, client, "tail", "test-status", "region=eu", "user_id=7", *MESSAGES
    )
    assert code == 0
    kept = json.loads(out)
    assert kept["parameters"] == {"region": "eu", "user_id": "7"}
    assert kept["body"]["status"] == "online"

    code, out, err = await _cli(
        servers, client, "tail", "test-status", "region=us", "user_id=7", *MESSAGES
    )
    assert code == 1 and not out
    assert "no tail of test-status region=us user_id=7" in err


# call ----------------------------------------------------------------------------

OPS = ("--path", TESTS, "--module", "chirptest.ops")


async def test_call_runs_an_operation_with_a_root_context(
    client: Client, servers: EmbeddedServers
) -> None:
    code, out, err = await _cli(
        servers, client, "call", "test-echo", "--json", '{"text": "hi"}', *OPS
    )

    assert code == 0, err
    response = json.loads(out)
    assert response["text"] == "hi" and response["depth"] == 1
    assert len(response["ray_id"]) == 32


@pytest.mark.parametrize(
    ("kind", "code"), [("operation", "ECHO_REFUSED"), ("crash", "INTERNAL")]
)
async def test_call_reports_the_error_and_exits_1(
    client: Client, servers: EmbeddedServers, kind: str, code: str
) -> None:
    request = json.dumps({"text": "hi", "raise_kind": kind})
    exit_code, out, _ = await _cli(
        servers, client, "call", "test-echo", "--json", request, *OPS
    )

    assert exit_code == 1
    error = json.loads(out)["error"]
    assert error["code"] == code and error["message"]


async def test_call_of_an_unknown_operation_lists_the_known_ones(
    client: Client, servers: EmbeddedServers
) -> None:
    code, _, err = await _cli(servers, client, "call", "test-nothing", *OPS)

    assert code == 2 and "known operations: test-echo" in err


# JSON bodies ---------------------------------------------------------------------


def test_parameters_are_set_with_the_type_of_their_field() -> None:
    body = _inspect.body_from_json(
        Status, '{"status": "on"}', {"region": "eu", "user_id": "12"}
    )

    assert body == Status(region="eu", user_id=12, status="on")
    with pytest.raises(chirp.UsageError, match=r"'user_id'.*'x'"):
        _inspect.body_from_json(Status, "{}", {"user_id": "x"})
    with pytest.raises(chirp.UsageError, match="not name=value"):
        _inspect.assignments(["region"])
