"""OpenTelemetry spans for publish, handling, operation calls and publish-and-wait.

OpenTelemetry is optional. Without the ``opentelemetry-api`` package, or while no
tracer provider is installed (the API's default), every function here returns at once
and nothing else is paid. With one, the trace context travels inside the envelope
(``Envelope.otel``, W3C ``traceparent``/``tracestate``), so the spans of one ray, in
every process it crosses, share one trace id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager, nullcontext
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import ProxyTracerProvider, SpanKind
except ImportError:  # pragma: no cover - exercised where the package is absent
    trace = None  # type: ignore[assignment]

_NOTHING: nullcontext[None] = nullcontext()


# Asking the API for its provider reads the environment each time, about 1 us, on
# every publish and call; the answer is kept for a second instead.
_RECHECK_SECONDS = 1.0
_tracer_seen: Any = None
_checked_at = -_RECHECK_SECONDS


def _tracer() -> Any:
    """Return Chirp's tracer, or None when no tracer provider is installed."""
    global _tracer_seen, _checked_at
    if trace is None:
        return None
    now = time.monotonic()
    if now - _checked_at < _RECHECK_SECONDS:
        return _tracer_seen
    provider = trace.get_tracer_provider()
    found = None
    if not isinstance(provider, ProxyTracerProvider):
        found = provider.get_tracer("chirp")
    _tracer_seen, _checked_at = found, now
    return found


def refresh() -> None:
    """Look for a tracer provider at the next span, not up to a second later."""
    global _checked_at
    _checked_at = -_RECHECK_SECONDS


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
    return _maybe_span(
        f"publish {message}", "PRODUCER", {"chirp.message": message}, ray_id
    )


def handle_span(
    worker: str, message: str, ray_id: str, carrier: Mapping[str, str]
) -> Any:
    """Return a context manager spanning one handling, in the publisher's trace."""
    attributes = {"chirp.worker": worker, "chirp.message": message}
    return _maybe_span(f"handle {message}", "CONSUMER", attributes, ray_id, carrier)


def call_span(operation: str, ray_id: str) -> Any:
    """Return a context manager spanning one operation call."""
    attributes = {"chirp.operation": operation}
    return _maybe_span(f"operation {operation}", "INTERNAL", attributes, ray_id)


def wait_span(message: str, ray_id: str) -> Any:
    """Return a context manager spanning one publish-and-wait."""
    attributes = {"chirp.message": message}
    return _maybe_span(f"publish_wait {message}", "CLIENT", attributes, ray_id)


def _maybe_span(
    name: str,
    kind: str,
    attributes: dict[str, str],
    ray_id: str,
    carrier: Mapping[str, str] | None = None,
) -> Any:
    """Return a span context manager, or a no-op one when nothing records spans."""
    if trace is None or not active():
        return _NOTHING
    parent = propagate.extract(carrier) if carrier else None
    attributes["chirp.ray_id"] = ray_id
    return _span(name, getattr(SpanKind, kind), attributes, parent)


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current trace context into `carrier`, when tracing."""
    if trace is not None and active():
        propagate.inject(carrier)
