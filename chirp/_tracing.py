"""OpenTelemetry spans for publish, handling, operation calls and publish-and-wait.

OpenTelemetry is optional. Without the ``opentelemetry-api`` package, or while no
tracer provider is installed (the API's default), every function here returns at once
and nothing else is paid. With one, the trace context travels inside the envelope
(``Envelope.otel``, W3C ``traceparent``/``tracestate``), so the spans of one ray, in
every process it crosses, share one trace id.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager, nullcontext
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import ProxyTracerProvider, SpanKind
except ImportError:  # pragma: no cover - exercised where the package is absent
    trace = None  # type: ignore[assignment]

_NOTHING: nullcontext[None] = nullcontext()


def _tracer() -> Any:
    """Return Chirp's tracer, or None when no tracer provider is installed."""
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, ProxyTracerProvider):
        return None
    return provider.get_tracer("chirp")


def active() -> bool:
    """Tell whether spans are being recorded."""
    return _tracer() is not None


@contextmanager
def _span(
    name: str, kind: Any, attributes: Mapping[str, str], parent: Any
) -> Iterator[None]:
    tracer = _tracer()
    if tracer is None:
        yield
        return
    with tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=dict(attributes)
    ):
        yield


def publish_span(message: str, ray_id: str) -> Any:
    """Return a context manager spanning one publish (a no-op without tracing)."""
    if trace is None or not active():
        return _NOTHING
    return _span(
        f"publish {message}",
        SpanKind.PRODUCER,
        {"chirp.message": message, "chirp.ray_id": ray_id},
        None,
    )


def handle_span(
    worker: str, message: str, ray_id: str, carrier: Mapping[str, str]
) -> Any:
    """Return a context manager spanning one handling, in the publisher's trace."""
    if trace is None or not active():
        return _NOTHING
    parent = propagate.extract(carrier) if carrier else None
    return _span(
        f"handle {message}",
        SpanKind.CONSUMER,
        {"chirp.worker": worker, "chirp.message": message, "chirp.ray_id": ray_id},
        parent,
    )


def call_span(operation: str, ray_id: str) -> Any:
    """Return a context manager spanning one operation call."""
    if trace is None or not active():
        return _NOTHING
    return _span(
        f"operation {operation}",
        SpanKind.INTERNAL,
        {"chirp.operation": operation, "chirp.ray_id": ray_id},
        None,
    )


def wait_span(message: str, ray_id: str) -> Any:
    """Return a context manager spanning one publish-and-wait."""
    if trace is None or not active():
        return _NOTHING
    return _span(
        f"publish_wait {message}",
        SpanKind.CLIENT,
        {"chirp.message": message, "chirp.ray_id": ray_id},
        None,
    )


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current trace context into `carrier`, when tracing."""
    if trace is not None and active():
        propagate.inject(carrier)
