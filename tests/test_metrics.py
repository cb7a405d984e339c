"""Prometheus metrics after a known sequence of successes, failures and retries."""

import asyncio
import time
from typing import Any

import httpx
from chirptest.messages_pb2 import EchoRequest, EchoResponse, Ping
from prometheus_client.parser import text_string_to_metric_families

import chirp
from chirp import Client, Context
from chirp._host import WorkerHost


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_worker_and_operation_metrics(client: Client, unique_name: str) -> None:
    done: list[str] = []

    @chirp.worker(name=unique_name, backoff=chirp.Backoff(base=0.01, cap=0.01))
    async def counted(ctx: Context, msg: Ping) -> None:
        if msg.key == "flaky" and ctx.attempt < 3:
            raise RuntimeError("not yet")
        done.append(msg.key)

    @chirp.operation(name=f"{unique_name}-op")
    async def picky(ctx: Context, req: EchoRequest) -> EchoResponse:
        if req.text == "no":
            raise chirp.OperationError("PICKY_REFUSED", "refused", status=400)
        return EchoResponse(text=req.text)

    host = WorkerHost(client, [counted], health=("127.0.0.1", 0))
    await host.start()
    try:
        ctx = client.context()
        for key in ("a", "b", "flaky"):
            await ctx.msg(Ping(key=key))
        await _wait_for(lambda: len(done) == 3)
        await picky(ctx, EchoRequest(text="yes"))
        await picky(ctx, EchoRequest(text="yes"))
        try:
            await picky(ctx, EchoRequest(text="no"))
        except chirp.OperationError:
            pass
        assert host.health is not None
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"http://127.0.0.1:{host.health.port}/metrics")
    finally:
        await host.drain()

    samples = _samples(reply.text)
    worker = {"worker": unique_name, "message": "test-ping"}
    assert _value(samples, "chirp_messages_handled_total", **worker, outcome="ok") == 3
    assert (
        _value(samples, "chirp_messages_handled_total", **worker, outcome="retry") == 2
    )
    assert _value(samples, "chirp_handler_seconds_count", **worker) == 5
    assert _value(samples, "chirp_receive_lag_seconds_count", **worker) == 5
    assert _value(samples, "chirp_worker_pending", worker=unique_name) == 0
    assert _value(samples, "chirp_worker_scheduled", worker=unique_name) == 0
    op = f"{unique_name}-op"
    assert _value(samples, "chirp_operation_calls_total", operation=op, code="OK") == 2
    refused = _value(
        samples, "chirp_operation_calls_total", operation=op, code="PICKY_REFUSED"
    )
    assert refused == 1
    assert _value(samples, "chirp_operation_seconds_count", operation=op) == 3
    assert _value(samples, "chirp_publish_seconds_count", message="test-ping") >= 3
