from __future__ import annotations

import io
import json

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from strongroom_telemetry import tracing as telemetry
from strongroom_telemetry.tracing import TelemetryError, configure_tracing, traced


async def test_traced_records_a_span_with_attributes_and_errors() -> None:
    provider = configure_tracing("strongroom-test", "none", set_global=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with traced("work.ok", provider=provider, items=3):
        pass
    with pytest.raises(KeyError):
        async with traced("work.fails", provider=provider):
            raise KeyError("boom")
    provider.shutdown()
    ok, failed = exporter.get_finished_spans()
    assert (ok.name, dict(ok.attributes or {})) == ("work.ok", {"items": 3})
    assert ok.resource.attributes["service.name"] == "strongroom-test"
    assert failed.name == "work.fails"
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.events[0].name == "exception"


async def test_console_exporter_prints_finished_spans() -> None:
    out = io.StringIO()
    provider = configure_tracing("strongroom-console", "console", set_global=False, console_out=out)
    async with traced("printed", provider=provider):
        pass
    provider.shutdown()
    span = json.loads(out.getvalue())
    assert span["name"] == "printed"
    assert span["resource"]["attributes"]["service.name"] == "strongroom-console"


def test_otlp_without_the_exporter_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the exporter is not installed, whether or not it is in this environment.
    monkeypatch.setattr(telemetry, "_OTLP_MODULE", "strongroom_missing_otlp_exporter")
    with pytest.raises(TelemetryError, match="opentelemetry-exporter-otlp-proto-grpc"):
        configure_tracing("strongroom-test", "otlp", set_global=False)


def test_unknown_exporter_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown trace exporter"):
        configure_tracing("strongroom-test", "jaeger", set_global=False)  # type: ignore[arg-type]
