"""One ray, one OpenTelemetry trace, across a caller and a worker host process."""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chirptest.messages_pb2 import Ping, PingDone
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chirp import Client
from chirp._tracing import refresh
from chirp.testing import EmbeddedServers

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Record this process's spans; the provider is set once for the process."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    refresh()
    yield exporter
    exporter.shutdown()  # later tests record nothing more


@pytest.fixture
def traced_host(
    servers: EmbeddedServers, unique_name: str, tmp_path: Path
) -> Iterator[Path]:
    """Run a worker host process that writes its spans to a file; return the file."""
    span_file = tmp_path / "spans.txt"
    env = {
        **os.environ,
        "CHIRP_NATS_URL": servers.nats_url,
        "CHIRP_REDIS_URL": servers.redis_url,
        "CHIRP_NAMESPACE": unique_name,
        "CHIRPTEST_SPANS": str(span_file),
    }
    command = [sys.executable, "-m", "chirp", "run", "--path", str(TESTS)]
    host = subprocess.Popen(
        [*command, "chirptest.otel_workers"], env=env, stderr=subprocess.DEVNULL
    )
    yield span_file
    host.terminate()
    host.wait(10)


async def test_one_trace_id_in_spans_of_both_processes(
    client: Client, spans: InMemorySpanExporter, traced_host: Path
) -> None:
    spans.clear()
    done = await client.context().publish_wait(Ping(key="traced"), PingDone, timeout=20)
    assert done.body.key == "traced"

    mine = {span.name: span for span in spans.get_finished_spans()}
    trace_id = f"{mine['publish_wait test-ping'].context.trace_id:032x}"
    assert f"{mine['publish test-ping'].context.trace_id:032x}" == trace_id
    theirs = await _wait_for_lines(traced_host, 2)
    assert (trace_id, "handle test-ping") in theirs
    assert (trace_id, "publish test-ping-done") in theirs


async def _wait_for_lines(path: Path, count: int) -> set[tuple[str, str]]:
    deadline = time.monotonic() + 10
    while True:
        lines = await asyncio.to_thread(_lines, path)
        if len(lines) >= count or time.monotonic() > deadline:
            return {(line[:32], line[33:]) for line in lines}
        await asyncio.sleep(0.05)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
