"""A worker whose process records its OpenTelemetry spans to a file, one per line.

`CHIRPTEST_SPANS` names the file; each line is ``<trace id> <span name>``.
"""

import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

import chirp
from chirptest.messages_pb2 import Ping, PingDone


class _FileExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self._path, "a") as out:
            for span in spans:
                context = span.get_span_context()
                assert context is not None
                out.write(f"{context.trace_id:032x} {span.name}\n")
        return SpanExportResult.SUCCESS


_provider = TracerProvider()
_provider.add_span_processor(
    SimpleSpanProcessor(_FileExporter(os.environ["CHIRPTEST_SPANS"]))
)
trace.set_tracer_provider(_provider)


@chirp.worker(name="test-traced-ping")
async def traced_ping(ctx: chirp.Context, msg: Ping) -> None:
    """Answer with the completion, inside the handling span."""
    await ctx.msg(PingDone(key=msg.key))
