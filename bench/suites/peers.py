"""Peers: FastStream and Taskiq draining the same backlog, beside Chirp at c128.

The peers run as subprocesses of ``.venv/peers`` (see `bench.peers`). Their
Redis drains are timed like Chirp's, from the consumer group; FastStream's NATS
subscriber pulls a JetStream stream on a second, JetStream-enabled server, timed from
its durable consumer's state.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

import nats
from nats.js.errors import NotFoundError

from bench.core import (
    DRAIN_TIMEOUT,
    PAYLOAD_SIZE,
    PEERS_PYTHON,
    REPO,
    Drain,
    Lab,
    Row,
    seed_jobs,
    spawn,
    stop,
    wait_drained,
)
from bench.suites.drain import drain_chirp
from chirp._embedded import NatsServer

# Script, its stream, its consumer group (or JetStream durable), and the row label.
REDIS_PEERS = (
    ("faststream_redis", "faststream-bench", "faststream", "FastStream Redis stream"),
    ("taskiq_redis_stream", "taskiq-bench", "taskiq", "Taskiq Redis stream"),
)


def _peer(script: str, *args: object) -> list[str]:
    return [str(PEERS_PYTHON), "-m", f"bench.peers.{script}", *map(str, args)]


def _fill(script: str, url: str, count: int) -> None:
    """Run a peer's fill step to completion."""
    env = {"PYTHONPATH": str(REPO)}
    subprocess.run(_peer(script, "fill", url, count, PAYLOAD_SIZE), env=env, check=True)


async def _chirp_rate(lab: Lab, count: int) -> float:
    """Chirp at concurrency 128 on this backlog size: reused from `worker` if run."""
    if "worker_c128" in lab.series and count == lab.sizes.backlog:
        return float(lab.series["worker_c128"])
    await seed_jobs(lab, "bench-peers", count, PAYLOAD_SIZE)
    drain = await drain_chirp(lab, "bench-peers", count)
    await lab.redis.flushdb()
    return count / drain.seconds


async def run(lab: Lab) -> None:
    """Drain the backlog with each peer; compare Chirp's c128 drain with each."""
    count = lab.sizes.backlog
    ours = await _chirp_rate(lab, count)
    for script, stream, group, label in REDIS_PEERS:
        await asyncio.to_thread(_fill, script, lab.redis_url, count)
        consumer = spawn(script, _peer(script, "consume", lab.redis_url), lab.env(""))
        try:
            drain = await wait_drained(lab, stream, [group], count, [consumer])
        finally:
            stop(consumer)
        await lab.redis.flushdb()
        _add(lab, script, label, ours, count / drain.seconds)
    with tempfile.TemporaryDirectory() as store:
        server = NatsServer(extra_args=["-js", "-sd", store])
        await server.start()
        try:
            rate = await _nats_peer(lab, server.url, count)
        finally:
            await server.stop()
    _add(lab, "faststream_nats", "FastStream NATS JetStream pull", ours, rate)


def _add(lab: Lab, key: str, label: str, ours: float, theirs: float) -> None:
    lab.series[f"peer_{key}"] = theirs
    name = "worker drain c128 vs peer"
    lab.add(Row(f"peers.{key}", "peers", name, ours, "msg/s", label, theirs))


async def _nats_peer(lab: Lab, url: str, count: int) -> float:
    await asyncio.to_thread(_fill, "faststream_nats", url, count)
    consumer = spawn(
        "faststream_nats", _peer("faststream_nats", "consume", url), lab.env("")
    )
    try:
        drain = await _wait_jetstream(url, count, consumer)
    finally:
        stop(consumer)
    return count / drain.seconds


async def _wait_jetstream(
    url: str, count: int, consumer: subprocess.Popen[bytes]
) -> Drain:
    """Wait until the durable consumer got and acked `count` messages."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    started: float | None = None
    deadline = time.perf_counter() + DRAIN_TIMEOUT
    try:
        while time.perf_counter() < deadline:
            if consumer.poll() is not None:
                raise RuntimeError(f"{consumer.args} exited with {consumer.returncode}")
            try:
                info = await js.consumer_info("FASTSTREAM", "faststream")
            except NotFoundError:
                await asyncio.sleep(0.005)
                continue
            now = time.perf_counter()
            delivered = info.delivered.stream_seq or 0
            if delivered and started is None:
                started = now
            done = delivered >= count and not info.num_ack_pending
            if started is not None and done:
                return Drain(now - started, [], 0)
            await asyncio.sleep(0.005)
    finally:
        await nc.close()
    raise TimeoutError(f"FastStream's NATS consumer did not drain {count} messages")


def peers_ready() -> bool:
    """Tell whether the peers' virtual environment exists."""
    return Path(PEERS_PYTHON).exists()
