import asyncio
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest
from chirptest.messages_pb2 import Ping, PingDone, PingFailed, Status

import chirp
from chirp._context import Params
from chirp._embedded import EmbeddedServers, ValkeyServer
from chirp.envelope_pb2 import Envelope
from chirp.testing import running_workers


@pytest.fixture
async def other(
    client: chirp.Client, servers: EmbeddedServers
) -> AsyncIterator[chirp.Client]:
    """Return a second connection in the same namespace as `client`."""
    async with chirp.Client(
        "other",
        nats_url=servers.nats_url,
        redis_url=servers.redis_url,
        namespace=client.names.namespace,
        test=True,
    ) as connected:
        yield connected


async def stream_envelopes(
    client: chirp.Client, name: str
) -> list[tuple[str, Envelope]]:
    key = client.names.stream_key(name)
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]], await client.redis.xrange(key)
    )
    return [(i.decode(), Envelope.FromString(f[b"e"])) for i, f in entries]


def ping_worker(name: str) -> chirp.Worker[Ping]:
    @chirp.worker(name=name)
    async def answer(ctx: chirp.Context, msg: Ping) -> None:
        await asyncio.sleep(msg.sleep)
        if msg.text == "fail":
            await ctx.msg(PingFailed(key=msg.key, code="NOPE", message="told to"))
        else:
            await ctx.msg(PingDone(key=msg.key, text=msg.text))

    return answer


async def test_publish_writes_the_envelope_to_the_stream(client: chirp.Client) -> None:
    ctx = client.context("publisher")
    before = int(time.time() * 1000)

    published = await ctx.msg(Ping(key="k.1", text="hello"))

    [(entry_id, envelope)] = await stream_envelopes(client, "test-ping")
    assert published.entry_id == entry_id
    assert envelope.name == "test-ping"
    assert list(envelope.parameters) == ["k.1"]
    assert envelope.ray_id == ctx.ray_id
    assert envelope.request_id == published.request_id
    assert envelope.request_id not in ("", ctx.request_id)
    assert before <= envelope.ts <= int(time.time() * 1000)
    assert Ping.FromString(envelope.body) == Ping(key="k.1", text="hello")
    [entry] = envelope.trace
    assert (entry.context_name, entry.request_id) == ("publisher", ctx.request_id)
    assert entry.ts == ctx.ts
    assert entry.test


async def test_every_publish_gets_a_new_request_id(client: chirp.Client) -> None:
    ctx = client.context()

    first = await ctx.msg(Ping(key="a"))
    second = await ctx.msg(Ping(key="a"))

    assert first.request_id != second.request_id
    assert first.entry_id != second.entry_id


async def test_child_context_keeps_the_ray(client: chirp.Client) -> None:
    ctx = client.context("parent")
    child = ctx.child("x")

    await child.msg(Ping(key="k"))

    [(_, envelope)] = await stream_envelopes(client, "test-ping")
    assert envelope.ray_id == ctx.ray_id
    assert child.request_id != ctx.request_id
    hops = [(t.context_name, t.request_id) for t in envelope.trace]
    assert hops == [("parent", ctx.request_id), ("x", child.request_id)]


async def test_concurrent_publishes_all_land(client: chirp.Client) -> None:
    ctx = client.context()

    results = await asyncio.gather(*(ctx.msg(Ping(key=str(i))) for i in range(100)))

    assert len({r.entry_id for r in results}) == 100
    assert len({r.request_id for r in results}) == 100
    assert await client.redis.xlen(client.names.stream_key("test-ping")) == 100
    stored = {
        e.request_id: e.parameters[0]
        for _, e in await stream_envelopes(client, "test-ping")
    }
    assert stored == {r.request_id: str(i) for i, r in enumerate(results)}


async def test_close_sends_and_announces_the_publishes_under_way(
    servers: EmbeddedServers, unique_name: str
) -> None:
    async with chirp.Client(
        "watcher",
        nats_url=servers.nats_url,
        redis_url=servers.redis_url,
        namespace=unique_name,
        test=True,
    ) as watcher:
        sub = await watcher.context().subscribe(Ping)
        closing = chirp.Client(
            "closing",
            nats_url=servers.nats_url,
            redis_url=servers.redis_url,
            namespace=unique_name,
            test=True,
        )
        await closing.connect()
        ctx = closing.context()
        publishes = [asyncio.create_task(ctx.msg(Ping(key=str(i)))) for i in range(60)]
        # The first publisher is writing on its own, the others queue behind it.
        await asyncio.sleep(0)
        await closing.close()

        assert all(p.done() and not p.exception() for p in publishes)
        announced = [await sub.next(timeout=2) for _ in range(60)]
        assert len({r.request_id for r in announced}) == 60
        stream = watcher.names.stream_key("test-ping")
        assert await watcher.redis.xlen(stream) == 60
        await sub.close()


async def test_publish_without_redis_raises_publish_error(
    servers: EmbeddedServers, unique_name: str
) -> None:
    valkey = ValkeyServer()
    await valkey.start()
    try:
        async with chirp.Client(
            "doomed",
            nats_url=servers.nats_url,
            redis_url=valkey.url,
            namespace=unique_name,
            test=True,
        ) as doomed:
            ctx = doomed.context()
            await ctx.msg(Ping(key="ok"))
            await valkey.stop()
            started = time.monotonic()

            with pytest.raises(chirp.PublishError):
                await ctx.msg(Ping(key="lost"))

            assert time.monotonic() - started < 5
    finally:
        await valkey.stop()


async def test_subscribe_is_registered_when_it_returns(
    client: chirp.Client, other: chirp.Client
) -> None:
    for attempt in range(5):
        key = f"k{attempt}"
        async with await client.context().subscribe(Ping, {"key": key}) as sub:
            await other.context().msg(Ping(key=key))

            received = await sub.next(timeout=2)

        assert received.body.key == key


async def test_subscribe_is_registered_even_under_concurrent_load(
    client: chirp.Client, other: chirp.Client
) -> None:
    """Publish on NATS the moment `subscribe` returns, many times at once."""
    envelope = Envelope(name="test-ping", body=Ping(key="x").SerializeToString())
    data = envelope.SerializeToString()

    async def one_round(index: int) -> None:
        key = f"c{index}"
        async with await client.context().subscribe(Ping, {"key": key}) as sub:
            subject = client.names.subject("test-ping", [key])
            await other.nats.publish(subject, data)
            await other.nats.flush()
            await sub.next(timeout=2)

    for batch in range(10):
        await asyncio.gather(*(one_round(batch * 32 + i) for i in range(32)))


async def test_tail_read_misuse(client: chirp.Client) -> None:
    ctx = client.context()

    with pytest.raises(chirp.UsageError, match="no tail"):
        await ctx.tail_read(Ping, {"key": "k"})
    with pytest.raises(chirp.UsageError, match="user_id"):
        await ctx.tail_read(Status, {"region": "eu"})
    with pytest.raises(chirp.UsageError, match="user_id"):
        await ctx.tail_anchor(Status, {"region": "eu"}, since=0, timeout=1)


async def test_tail_anchor_returns_a_newer_tail_at_once(client: chirp.Client) -> None:
    ctx = client.context()
    params: Params = {"region": "eu", "user_id": 5}
    await ctx.msg(Status(region="eu", user_id=5, status="now"))
    tail = await ctx.tail_read(Status, params)
    assert tail is not None

    anchored = await ctx.tail_anchor(Status, params, since=tail.ts - 1, timeout=1)

    assert anchored.request_id == tail.request_id


async def test_tail_anchor_waits_for_the_next_publish(client: chirp.Client) -> None:
    ctx = client.context()
    params: Params = {"region": "eu", "user_id": 6}
    await ctx.msg(Status(region="eu", user_id=6, status="old"))
    tail = await ctx.tail_read(Status, params)
    assert tail is not None

    async def publish_later() -> chirp.Published:
        await asyncio.sleep(0.05)
        return await ctx.msg(Status(region="eu", user_id=6, status="new"))

    later = asyncio.create_task(publish_later())
    anchored = await ctx.tail_anchor(Status, params, since=tail.ts, timeout=5)

    assert anchored.body.status == "new"
    assert anchored.request_id == (await later).request_id


async def test_tail_anchor_times_out(client: chirp.Client) -> None:
    ctx = client.context()
    params: Params = {"region": "eu", "user_id": 7}
    await ctx.msg(Status(region="eu", user_id=7, status="old"))
    since = int(time.time() * 1000) + 1
    started = time.monotonic()

    with pytest.raises(chirp.ChirpTimeoutError):
        await ctx.tail_anchor(Status, params, since=since, timeout=0.2)

    assert 0.2 <= time.monotonic() - started < 2


async def test_publish_wait_ignores_completions_of_other_requests(
    client: chirp.Client, other: chirp.Client, unique_name: str
) -> None:
    ctx = client.context()
    pings = await other.context().subscribe(Ping, {"key": "k"})
    seen = await other.context().subscribe(PingDone, {"key": "k"})

    async with running_workers(client, ping_worker(unique_name)):
        waiting = asyncio.create_task(
            ctx.publish_wait(
                Ping(key="k", text="real", sleep=0.3), PingDone, timeout=10
            )
        )
        await pings.next(timeout=5)
        await other.context().msg(PingDone(key="k", text="decoy"))
        done = await waiting

    assert done.body.text == "real"
    first = await seen.next(timeout=2)
    assert first.body.text == "decoy", "the decoy came too late to test anything"
    await seen.close()
    await pings.close()
