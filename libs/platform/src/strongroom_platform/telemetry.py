"""Tracing with OpenTelemetry: one tracer provider per process, chosen by ``STRONGROOM_OTEL``.

``none`` records nothing, ``console`` prints finished spans (debugging), ``otlp``
exports to the collector named by the standard ``OTEL_EXPORTER_OTLP_*``
variables and needs the ``opentelemetry-exporter-otlp-proto-grpc`` package.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import IO, Literal

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter

__all__ = ["TelemetryError", "configure_tracing", "traced"]

Exporter = Literal["none", "console", "otlp"]

_OTLP_MODULE = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"


class TelemetryError(RuntimeError):
    """Tracing cannot be set up as configured; the message says what to install or change."""


def _otlp_exporter() -> SpanExporter:
    try:
        module = importlib.import_module(_OTLP_MODULE)
    except ImportError as exc:
        raise TelemetryError(
            "STRONGROOM_OTEL=otlp needs the 'opentelemetry-exporter-otlp-proto-grpc' package; "
            "install it or use STRONGROOM_OTEL=console / none"
        ) from exc
    exporter: SpanExporter = module.OTLPSpanExporter()
    return exporter


def configure_tracing(
    service_name: str,
    exporter: Exporter,
    *,
    set_global: bool = True,
    console_out: IO[str] | None = None,
) -> TracerProvider:
    """Build the tracer provider of ``service_name`` with the chosen exporter.

    With ``set_global`` it also becomes OpenTelemetry's global provider (once per
    process; OpenTelemetry ignores later attempts). Call ``shutdown()`` on the
    result at exit to flush spans. Raises TelemetryError for ``otlp`` without
    the exporter package, ValueError for an unknown exporter.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        console = ConsoleSpanExporter() if console_out is None else ConsoleSpanExporter(out=console_out)
        provider.add_span_processor(SimpleSpanProcessor(console))
    elif exporter == "otlp":
        # Batching keeps the export off the request path.
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    elif exporter != "none":
        raise ValueError(f"unknown trace exporter {exporter!r}: use none, console or otlp")
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


@contextlib.asynccontextmanager
async def traced(
    name: str, *, provider: trace.TracerProvider | None = None, **attributes: str | int | float | bool
) -> AsyncIterator[trace.Span]:
    """``async with traced("catalog.index_point", point_id=...) as span:`` -- a span around the block.

    Uses the global provider unless ``provider`` is given; an exception leaving
    the block is recorded on the span and marks it as an error.
    """
    tracer = trace.get_tracer("strongroom", tracer_provider=provider)
    with tracer.start_as_current_span(name, attributes=attributes) as span:
        yield span
