"""Tracing with OpenTelemetry: one tracer provider per process, chosen by ``STRONGROOM_OTEL``.

``none`` exports nothing (spans still exist, so their ids reach logs and message headers),
``console`` prints finished spans (debugging), ``otlp`` exports to the collector named by the
standard ``OTEL_EXPORTER_OTLP_*`` variables, ``file:<dir>`` appends one JSON object per finished
span to ``<dir>/<service>-<pid>.jsonl`` (:class:`JsonLinesSpanExporter`; the end-to-end tests
collect a backup's trace from every process this way).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

__all__ = ["JsonLinesSpanExporter", "TelemetryError", "configure_tracing", "span_record", "traced"]

_OTLP_MODULE = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
# Spans reach a file or the collector within this long of ending (the SDK's default is 5 s).
_EXPORT_DELAY_MILLIS = 1000


class TelemetryError(RuntimeError):
    """Telemetry cannot be set up as configured; the message says what to install or change."""


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


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as the JSON object :class:`JsonLinesSpanExporter` writes.

    Keys: ``trace_id``, ``span_id``, ``parent_id`` (hex; ``None`` for a root), ``name``, ``kind``
    (``SERVER``, ``CLIENT``, ``PRODUCER``, ``CONSUMER``, ``INTERNAL``), ``service``, ``start_ns``,
    ``end_ns``, ``status`` (``UNSET``, ``OK``, ``ERROR``) and ``attributes``.
    """
    context = span.get_span_context()
    assert context is not None  # a finished SDK span always has one
    return {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name", ""),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {key: _plain(value) for key, value in (span.attributes or {}).items()},
    }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span to ``path`` as one line of JSON (:func:`span_record`).

    The file is created on the first export (its directory too); lines are written whole under a
    lock, so a reader sees complete lines only.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(span), separators=(",", ":")) + "\n" for span in spans)
        try:
            with self._lock:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                with self._path.open("a", encoding="utf-8") as out:
                    out.write(lines)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


def configure_tracing(
    service_name: str,
    exporter: str,
    *,
    set_global: bool = True,
    console_out: IO[str] | None = None,
) -> TracerProvider:
    """Build the tracer provider of ``service_name`` with the chosen exporter (see the module docstring).

    With ``set_global`` it also becomes OpenTelemetry's global provider (once per process;
    OpenTelemetry ignores later attempts). Call ``shutdown()`` on the result at exit to flush
    spans. Raises TelemetryError for ``otlp`` without the exporter package, ValueError for an
    unknown exporter.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        console = ConsoleSpanExporter() if console_out is None else ConsoleSpanExporter(out=console_out)
        provider.add_span_processor(SimpleSpanProcessor(console))
    elif exporter == "otlp":
        # Batching keeps the export off the request path.
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(), schedule_delay_millis=_EXPORT_DELAY_MILLIS))
    elif exporter.startswith("file:") and exporter[len("file:") :]:
        path = Path(exporter[len("file:") :]) / f"{service_name}-{os.getpid()}.jsonl"
        provider.add_span_processor(
            BatchSpanProcessor(JsonLinesSpanExporter(path), schedule_delay_millis=_EXPORT_DELAY_MILLIS)
        )
    elif exporter != "none":
        raise ValueError(f"unknown trace exporter {exporter!r}: use none, console, otlp or file:<dir>")
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
