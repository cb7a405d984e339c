"""Bad input and failing dependencies: retried on schedule, or dead-lettered at once."""

import asyncio
import itertools
import time

import pytest
from chirptest.messages_pb2 import Ping
from conftest import WORKERS, HostPool, Ledger, publish_pings

from chirp import Client
from chirp.envelope_pb2 import Envelope

BASE = 0.2
CAP = 0.8
OUTAGE = 2.0
# Schedule times are whole milliseconds; the attempts are timed in another process.
CLOCK_SLACK = 0.005

pytestmark = pytest.mark.faults


async def test_dependency_outage_is_retried_on_the_backoff_schedule(
    client: Client, hosts: HostPool
) -> None:
    # Full jitter may legitimately draw a delay near zero; pinned to its ceiling, the
    # delays are exactly base, 2 base, 4 base... up to the cap, which the gaps between
    # attempts must respect.
    ledger = Ledger(client)
    down = f"{ledger.prefix}:down"
    await client.redis.set(down, 1)
    settings = {"backoff_base": BASE, "backoff_cap": CAP, "jitter": "max"}
    for _ in range(2):
        await hosts.start(workers="ledger-a", lease=2, **settings)
    ids = await publish_pings(client.context(), 20, text="flag trace")

    await asyncio.sleep(OUTAGE)
    await client.redis.delete(down)
    cleared = time.time()
    await ledger.wait_handled(ids, ["ledger-a"], timeout=15)

    failures = 0
    for index in range(20):
        starts = await ledger.starts("ledger-a", f"p{index}")
        assert [a for a, _, _ in starts] == list(range(1, len(starts) + 1))
        for (attempt, _, at), (_, _, next_at) in itertools.pairwise(starts):
            ceiling = min(CAP, BASE * 2 ** (attempt - 1))
            assert ceiling - CLOCK_SLACK <= next_at - at <= ceiling + 0.5, starts
        # Only the first attempt after the outage succeeded.
        assert starts[-2][2] < cleared <= starts[-1][2] + CLOCK_SLACK, starts
        failures += len(starts) - 1
    await ledger.wait_settled(["ledger-a"])
    assert await ledger.stats("ledger-a") == {"retries": failures}


def _envelope(name: str, body: bytes) -> bytes:
    return Envelope(name=name, request_id="poison", body=body).SerializeToString()


# Each entry written straight into the stream, and what its dead letter must say.
POISON: list[tuple[dict[bytes, bytes], str]] = [
    ({b"e": b"\xff\x00 not protobuf"}, "are not a Chirp envelope"),
    ({b"other": b"field"}, "has no 'e' field"),
    ({b"e": _envelope("", b"")}, "envelope has no message name"),
    # A Ping whose string field `key` holds bytes that are not UTF-8.
    ({b"e": _envelope("test-ping", b"\n\x02\xff\xfe")}, "does not parse as"),
    (
        {b"e": _envelope("no-such-message", Ping(key="x").SerializeToString())},
        "expected a 'test-ping' message, got 'no-such-message'",
    ),
    ({b"e": _envelope("test-ping", b"\xff" * 5_000_000)}, "(5000000 bytes)"),
]


async def test_poison_entries_are_dead_lettered_while_good_ones_flow(
    client: Client, hosts: HostPool
) -> None:
    ledger = Ledger(client)
    await hosts.start(lease=2)
    ctx = client.context()
    stream = client.names.stream_key("test-ping")

    good = await publish_pings(ctx, 100)
    poison: dict[str, str] = {}
    for fields, reason in POISON:
        entry_id = await client.redis.xadd(stream, fields)  # type: ignore[arg-type]
        poison[entry_id.decode()] = reason
        good.extend(await publish_pings(ctx, 20))
    # A huge body that is valid is no poison: it is handled like any other.
    huge = await ctx.msg(Ping(key="huge", text="x" * 5_000_000))
    good.append(huge.request_id)

    await ledger.wait_handled(good, timeout=30)
    await ledger.wait_settled()
    for worker in WORKERS:
        dead = await ledger.dead_letters(worker)
        assert {d["entry_id"].decode() for d in dead} == set(poison)
        for letter in dead:
            assert poison[letter["entry_id"].decode()] in letter["reason"].decode()
            assert letter["attempts"] == b"1"
            assert letter["worker"].decode() == worker
            assert letter["stream"].decode() == stream
        assert await ledger.stats(worker) == {"dead_letters": len(POISON)}
