"""W3C trace context (``traceparent``) in and out of gRPC metadata, Kafka headers and outbox rows.

Only the ``traceparent`` value travels (no baggage): it names the trace and the parent span, and
it is all a receiver needs to continue the trace. A missing or malformed value starts a new trace
instead of failing anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "TRACEPARENT",
    "context_from_headers",
    "context_from_metadata",
    "context_from_traceparent",
    "current_traceparent",
    "traceparent_of",
]

TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()
# The longest valid traceparent is 55 characters; anything much longer is not one.
_MAX_TRACEPARENT = 128


def traceparent_of(context: otel_context.Context | None = None) -> str | None:
    """The ``traceparent`` of the span current in ``context`` (default: the current context); None without one."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier.get(TRACEPARENT)


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span, or None outside any span."""
    return traceparent_of(None)


def context_from_traceparent(value: str | bytes | None) -> otel_context.Context:
    """A context whose parent is the span ``value`` names; an empty context when ``value`` is absent or invalid."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not value or len(value) > _MAX_TRACEPARENT:
        return otel_context.Context()
    return _PROPAGATOR.extract({TRACEPARENT: value}, context=otel_context.Context())


def context_from_headers(headers: Iterable[tuple[str, bytes]]) -> otel_context.Context:
    """The parent context of a Kafka record from its ``traceparent`` header (the last one wins)."""
    value: bytes | None = None
    for key, raw in headers:
        if key == TRACEPARENT:
            value = raw
    return context_from_traceparent(value)


def context_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> otel_context.Context:
    """The parent context of a gRPC call from its invocation metadata."""
    value: str | bytes | None = None
    for key, raw in metadata or ():
        if key == TRACEPARENT:
            value = raw
    return context_from_traceparent(value)
