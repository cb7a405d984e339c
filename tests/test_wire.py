import asyncio
import re

import pytest
from chirptest.messages_pb2 import Ping

import chirp
from chirp._wire import EMPTY_TOKEN, Names, escape, unescape

HOSTILE = [
    "",
    "a.b",
    "a b",
    "*",
    ">",
    "a:b",
    "ünïcødé",
    "_",
    "_2E",
    "a.*",
    "x>y",
    "-",
    "tab\there",
    "new\nline",
    "🙂",
    "plain-Value-09",
    "x" * 1000,
    "ü.🙂" * 100,
]
TOKEN = re.compile(r"[A-Za-z0-9_-]+")


@pytest.mark.parametrize("value", HOSTILE)
def test_escape_gives_only_safe_characters_and_round_trips(value: str) -> None:
    token = escape(value)

    assert TOKEN.fullmatch(token), token
    assert unescape(token) == value


def test_escape_is_injective() -> None:
    tokens = [escape(value) for value in HOSTILE]

    assert len(set(tokens)) == len(HOSTILE)


def test_empty_value_is_a_lone_underscore_and_underscore_is_escaped() -> None:
    assert escape("") == EMPTY_TOKEN == "_"
    assert escape("_") == "_5F"
    assert escape("plain-1") == "plain-1"


def test_escape_encodes_a_trailing_newline() -> None:
    assert TOKEN.fullmatch(escape("abc\n"))


@pytest.mark.parametrize(
    "token", ["", "a.b", "a b", "*", ">", "_2", "_2e", "_GG", "_FF", "é", "a_"]
)
def test_unescape_rejects_malformed_tokens(token: str) -> None:
    with pytest.raises(chirp.DecodeError):
        unescape(token)


def test_unescape_rejects_a_trailing_newline() -> None:
    with pytest.raises(chirp.DecodeError):
        unescape("abc\n")


@pytest.mark.parametrize("token", ["_41", "_2D", "a_62"])
def test_unescape_rejects_non_canonical_tokens(token: str) -> None:
    with pytest.raises(chirp.DecodeError):
        unescape(token)


def test_namespace_separates_subjects_and_keys() -> None:
    named, default = Names("ns"), Names()

    assert named.subject("test-ping", ["a.b"]) == "chirp.ns.msg.test-ping.a_2Eb"
    assert default.subject("test-ping", ["a.b"]) == "chirp.msg.test-ping.a_2Eb"
    assert named.subject("test-ping", [None]) == "chirp.ns.msg.test-ping.*"
    assert named.stream_key("test-ping") == "chirp:ns:stream:test-ping"
    assert default.stream_key("test-ping") == "chirp:stream:test-ping"
    assert named.tail_key("test-status", ["eu", ""]) == "chirp:ns:tail:test-status:eu:_"
    assert default.tail_key("test-status", ["eu"]) != named.tail_key(
        "test-status", ["eu"]
    )


@pytest.mark.parametrize("namespace", ["NS", "a_b", "a.b", "-a", "a-", "a--b", "a b"])
def test_namespace_must_be_kebab_case(namespace: str) -> None:
    with pytest.raises(chirp.UsageError, match="kebab-case"):
        Names(namespace)


def test_namespace_rejects_a_trailing_newline() -> None:
    with pytest.raises(chirp.UsageError):
        Names("ns\n")


async def test_each_exact_subscription_gets_only_its_own_value(
    client: chirp.Client,
) -> None:
    ctx = client.context()
    exact = [await ctx.subscribe(Ping, {"key": value}) for value in HOSTILE]
    wildcard = await ctx.subscribe(Ping)
    try:
        for value in HOSTILE:
            await ctx.msg(Ping(key=value))

        for value, subscription in zip(HOSTILE, exact, strict=True):
            received = await subscription.next(timeout=5)
            assert received.body.key == value
            assert received.parameters == (value,)
        everything = [(await wildcard.next(timeout=5)).body.key for _ in HOSTILE]
        assert sorted(everything) == sorted(HOSTILE)

        # One connection delivers in publish order: a stray would be here by now.
        await asyncio.gather(*(_assert_nothing_more(s) for s in [*exact, wildcard]))
    finally:
        for subscription in [*exact, wildcard]:
            await subscription.close()


async def _assert_nothing_more(subscription: chirp.Subscription[Ping]) -> None:
    with pytest.raises(chirp.ChirpTimeoutError):
        await subscription.next(timeout=0.2)
