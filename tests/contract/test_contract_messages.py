"""Publishing, realtime delivery, tails and publish-and-wait, on both transports."""

import asyncio
import time
from typing import Any, cast

import pytest
from chirptest.messages_pb2 import Ping, PingDone, PingFailed, Status
from waits import wait_for

import chirp
from chirp.envelope_pb2 import Envelope
from chirp.testing import running_workers

FAST = 0.3


def ping_worker(name: str) -> chirp.Worker[Ping]:
    """Return a worker answering each ping with a completion, or told so, a failure."""

    @chirp.worker(name=name)
    async def answer(ctx: chirp.Context, msg: Ping) -> None:
        if msg.text == "fail":
            await ctx.msg(PingFailed(key=msg.key, code="NOPE", message="told to"))
        else:
            await ctx.msg(PingDone(key=msg.key, text=msg.text))

    return answer


async def test_publish_writes_the_stream_and_reaches_subscribers(
    client: chirp.Client, other: chirp.Client
) -> None:
    ctx = client.context()
    exact = await ctx.subscribe(Ping, {"key": "k.1"})
    anything = await ctx.subscribe(Ping)
    elsewhere = await ctx.subscribe(Ping, {"key": "k2"})

    published = await other.context("publisher").msg(Ping(key="k.1", text="hi"))

    for subscription in (exact, anything):
        received = await subscription.next(timeout=2)
        assert received.body == Ping(key="k.1", text="hi")
        assert received.request_id == published.request_id
    with pytest.raises(chirp.ChirpTimeoutError):
        await elsewhere.next(timeout=FAST)
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]],
        await client.redis.xrange(client.names.stream_key("test-ping")),
    )
    [(entry_id, fields)] = entries
    assert entry_id.decode() == published.entry_id
    envelope = Envelope.FromString(fields[b"e"])
    assert (envelope.name, list(envelope.parameters)) == ("test-ping", ["k.1"])
    assert [t.context_name for t in envelope.trace] == ["publisher"]
    for subscription in (exact, anything, elsewhere):
        await subscription.close()


async def test_subject_wildcards_route_like_nats(
    client: chirp.Client, other: chirp.Client
) -> None:
    # Raw subjects of the test's own namespace, below anything Chirp publishes.
    prefix = f"chirp.{client.names.namespace}.raw"
    patterns = ["a.*", "a.>", ">", "*", "a.*.c", "a.b"]
    seen: dict[str, list[str]] = {pattern: [] for pattern in patterns}

    def collector(pattern: str) -> Any:
        async def collect(msg: Any) -> None:
            seen[pattern].append(msg.subject[len(prefix) + 1 :])

        return collect

    subs = [
        await client.nats.subscribe(f"{prefix}.{p}", cb=collector(p)) for p in patterns
    ]
    # As in `Subscription.start`: nats-py sends a SUB from its flusher task, so yield
    # once before the flush, or the PONG may come back before the SUB was written.
    await asyncio.sleep(0)
    await client.nats.flush()
    for subject in ("a", "a.b", "a.b.c", "x.y"):
        await other.nats.publish(f"{prefix}.{subject}", b"")
    await other.nats.flush()

    expected = {
        "a.*": ["a.b"],
        "a.>": ["a.b", "a.b.c"],
        ">": ["a", "a.b", "a.b.c", "x.y"],
        "*": ["a"],
        "a.*.c": ["a.b.c"],
        "a.b": ["a.b"],
    }
    await wait_for(lambda: seen == expected, timeout=2)
    for sub in subs:
        await sub.unsubscribe()


async def test_a_subscription_receives_in_publish_order(
    client: chirp.Client, other: chirp.Client
) -> None:
    async with await client.context().subscribe(Ping) as subscription:
        ctx = other.context()
        for index in range(30):
            await ctx.msg(Ping(key=str(index)))

        keys = [(await subscription.next(timeout=2)).body.key for _ in range(30)]

    assert keys == [str(index) for index in range(30)]


async def test_a_closed_subscription_receives_nothing_more(
    client: chirp.Client,
) -> None:
    subscription = await client.context().subscribe(Ping)
    await subscription.close()

    await client.context().msg(Ping(key="late"))

    with pytest.raises(chirp.ChirpTimeoutError):
        await subscription.next(timeout=FAST)


async def test_tail_keeps_the_latest_per_parameter_set(client: chirp.Client) -> None:
    ctx = client.context()
    assert await ctx.tail_read(Status, {"region": "eu", "user_id": 1}) is None

    await ctx.msg(Status(region="eu", user_id=1, status="first"))
    latest = await ctx.msg(Status(region="eu", user_id=1, status="second"))
    await ctx.msg(Status(region="eu", user_id=2, status="other"))

    one = await ctx.tail_read(Status, {"region": "eu", "user_id": 1})
    two = await ctx.tail_read(Status, {"region": "eu", "user_id": 2})
    assert one is not None and two is not None
    assert (one.body.status, one.request_id) == ("second", latest.request_id)
    assert two.body.status == "other"
    assert await ctx.tail_read(Status, {"region": "us", "user_id": 1}) is None
    ttl = await client.redis.pttl(client.names.tail_key("test-status", ["eu", "1"]))
    assert 0 < ttl <= 60_000


async def test_a_batch_of_publishes_lands_or_fails_per_message(
    client: chirp.Client,
) -> None:
    ctx = client.context()
    # Status messages keep tails; Ping's stream is taken by a plain string, so
    # Redis refuses every Ping while the Status messages of the same batch land.
    await client.redis.set(client.names.stream_key("test-ping"), "not a stream")
    statuses = [Status(region="eu", user_id=i, status=f"s{i}") for i in range(20)]

    results = await asyncio.gather(
        *(ctx.msg(status) for status in statuses),
        ctx.msg(Ping(key="refused")),
        return_exceptions=True,
    )

    *landed, refused = results
    assert isinstance(refused, chirp.PublishError)
    assert client.names.stream_key("test-ping") in str(refused)
    assert all(isinstance(result, chirp.Published) for result in landed)
    assert await client.redis.xlen(client.names.stream_key("test-status")) == 20
    for i in (0, 19):
        tail = await ctx.tail_read(Status, {"region": "eu", "user_id": i})
        assert tail is not None and tail.body.status == f"s{i}"


async def test_tail_anchor_waits_for_the_next_publish(
    client: chirp.Client, other: chirp.Client
) -> None:
    params: dict[str, str | int] = {"region": "eu", "user_id": 6}
    await client.context().msg(Status(region="eu", user_id=6, status="old"))
    tail = await client.context().tail_read(Status, params)
    assert tail is not None

    async def publish_later() -> chirp.Published:
        await asyncio.sleep(0.05)
        return await other.context().msg(Status(region="eu", user_id=6, status="new"))

    later = asyncio.create_task(publish_later())
    ctx = client.context()
    anchored = await ctx.tail_anchor(Status, params, since=tail.ts, timeout=2)

    assert anchored.body.status == "new"
    assert anchored.request_id == (await later).request_id


async def test_publish_wait_returns_the_completion(
    client: chirp.Client, other: chirp.Client, unique_name: str
) -> None:
    ctx = client.context("waiter")

    async with running_workers(other, ping_worker(unique_name)):
        done = await ctx.publish_wait(
            Ping(key="k", text="hi"), PingDone, fail=PingFailed, timeout=5
        )

    assert done.body == PingDone(key="k", text="hi")
    assert done.ray_id == ctx.ray_id
    assert [t.context_name for t in done.trace] == ["waiter", unique_name]


async def test_publish_wait_gets_a_completion_from_further_down_the_ray(
    client: chirp.Client, other: chirp.Client, unique_name: str
) -> None:
    @chirp.worker(name=f"{unique_name}-relay")
    async def relay(ctx: chirp.Context, msg: Ping) -> None:
        await ctx.msg(Status(region="relay", user_id=1, status=msg.key))

    @chirp.worker(name=f"{unique_name}-finish")
    async def finish(ctx: chirp.Context, msg: Status) -> None:
        await ctx.msg(PingDone(key=msg.status, text="finished"))

    ctx = client.context("waiter")
    async with running_workers(other, relay, finish):
        done = await ctx.publish_wait(Ping(key="far"), PingDone, timeout=5)

    assert done.body == PingDone(key="far", text="finished")
    hops = [t.context_name for t in done.trace]
    assert hops == ["waiter", f"{unique_name}-relay", f"{unique_name}-finish"]


async def test_publish_wait_takes_no_reply_for_other_parameters(
    client: chirp.Client, other: chirp.Client, unique_name: str
) -> None:
    @chirp.worker(name=unique_name)
    async def answer_twice(ctx: chirp.Context, msg: Ping) -> None:
        # A completion of the awaited name for another key first, then the reply.
        await ctx.msg(PingDone(key=f"side-{msg.key}", text="side"))
        await ctx.msg(PingDone(key=msg.key, text="reply"))

    ctx = client.context()
    async with running_workers(other, answer_twice):
        done = await ctx.publish_wait(Ping(key="k"), PingDone, timeout=5)

    assert (done.body.key, done.body.text) == ("k", "reply")


async def test_closing_the_client_ends_its_waits_at_once(
    client: chirp.Client, unique_name: str
) -> None:
    waiting = asyncio.create_task(
        client.context().publish_wait(Ping(key=unique_name), PingDone, timeout=30)
    )
    await asyncio.sleep(0.2)  # published, and waiting for a worker there is not
    started = time.monotonic()

    await client.close()

    with pytest.raises(chirp.TransportError, match="closed"):
        await waiting
    assert time.monotonic() - started < 2


async def test_concurrent_waits_each_get_their_own_reply(
    client: chirp.Client, other: chirp.Client, unique_name: str
) -> None:
    ctx = client.context("waiter")
    async with running_workers(other, ping_worker(unique_name)):
        # One key for all: only the request id tells the replies apart.
        done = await asyncio.gather(
            *(
                ctx.publish_wait(Ping(key="same", text=f"t{i}"), PingDone, timeout=5)
                for i in range(20)
            )
        )

    assert [d.body.text for d in done] == [f"t{i}" for i in range(20)]


async def test_publish_wait_raises_the_failure(
    client: chirp.Client, other: chirp.Client, unique_name: str
) -> None:
    async with running_workers(other, ping_worker(unique_name)):
        with pytest.raises(chirp.MessageFailed) as failed:
            await client.context().publish_wait(
                Ping(key="k", text="fail"), PingDone, fail=PingFailed, timeout=5
            )

    assert (failed.value.code, failed.value.message) == ("NOPE", "told to")
    assert failed.value.received.body.key == "k"


async def test_publish_wait_times_out_without_a_worker(client: chirp.Client) -> None:
    started = time.monotonic()

    with pytest.raises(chirp.ChirpTimeoutError):
        await client.context().publish_wait(Ping(key="k"), PingDone, timeout=FAST)

    assert FAST <= time.monotonic() - started < FAST + 1
