"""FastStream's NATS subscriber, pulling a JetStream backlog, with a no-op handler."""

from __future__ import annotations

import asyncio

import nats
from faststream import FastStream
from faststream.nats import JStream, NatsBroker, PullSub

from bench.peers.common import main

STREAM = "FASTSTREAM"
SUBJECT = "faststream.bench"
DURABLE = "faststream"


async def fill(url: str, count: int, size: int) -> None:
    """Publish the backlog into a JetStream stream and wait until it holds it all."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=STREAM, subjects=[SUBJECT])
    body = b"x" * size
    for start in range(0, count, 1000):
        for _ in range(min(1000, count - start)):
            await nc.publish(SUBJECT, body)
        await nc.flush()
    # The server stores core-NATS publishes asynchronously: wait (up to a minute).
    for _ in range(1200):
        if (await js.stream_info(STREAM)).state.messages >= count:
            break
        await asyncio.sleep(0.05)
    await nc.close()


async def consume(url: str) -> None:
    """Run a durable pull subscriber taking 100 messages per fetch."""
    broker = NatsBroker(url, logger=None)

    @broker.subscriber(
        SUBJECT,
        stream=JStream(STREAM, declare=False),
        durable=DURABLE,
        pull_sub=PullSub(batch_size=100),
    )
    async def handle(body: bytes) -> None:
        """Do nothing."""

    await FastStream(broker, logger=None).run()


if __name__ == "__main__":
    main(fill, consume)
