"""Telemetry settings, JSON logs, the span file, gRPC trace propagation and the metrics endpoint."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from strongroom_telemetry.config import TelemetrySettings, TelemetrySettingsError
from strongroom_telemetry.grpc_tracing import TracingServerInterceptor, client_interceptors
from strongroom_telemetry.logs import JsonFormatter
from strongroom_telemetry.metrics import Metrics
from strongroom_telemetry.process import start
from strongroom_telemetry.propagation import context_from_headers, context_from_traceparent, traceparent_of
from strongroom_telemetry.tracing import configure_tracing


def test_settings_from_env() -> None:
    env = {
        "STRONGROOM_OTEL": "file:/spans",
        "STRONGROOM_METRICS_LISTEN": "127.0.0.1:0",
        "STRONGROOM_LOG_FORMAT": "TEXT",
        "STRONGROOM_LOG_LEVEL": "debug",
    }
    settings = TelemetrySettings.from_env(env)
    assert settings.span_dir == Path("/spans")
    assert (settings.metrics_listen, settings.log_format, settings.log_level) == ("127.0.0.1:0", "text", "DEBUG")
    assert TelemetrySettings.from_env({}) == TelemetrySettings()
    assert TelemetrySettings.from_env({}, default_log_format="text").log_format == "text"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STRONGROOM_OTEL", "jaeger"),
        ("STRONGROOM_OTEL", "file:"),
        ("STRONGROOM_METRICS_LISTEN", "9464"),
        ("STRONGROOM_METRICS_LISTEN", "host:port"),
        ("STRONGROOM_LOG_FORMAT", "xml"),
        ("STRONGROOM_LOG_LEVEL", "LOUD"),
    ],
)
def test_malformed_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(TelemetrySettingsError, match=name):
        TelemetrySettings.from_env({name: value})


def _memory_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = configure_tracing("test", "none", set_global=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_json_log_lines_carry_the_current_trace_and_span_ids() -> None:
    provider, _ = _memory_provider()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("catalog"))
    logger = logging.getLogger("strongroom.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside")
        with provider.get_tracer("t").start_as_current_span("work") as span:
            logger.warning("inside %s", "the span")
            try:
                raise KeyError("boom")
            except KeyError:
                logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    outside, inside, failed = (json.loads(line) for line in out.getvalue().splitlines())
    assert outside["message"] == "outside" and "trace_id" not in outside
    context = span.get_span_context()
    assert inside["message"] == "inside the span"
    assert (inside["trace_id"], inside["span_id"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert (inside["service"], inside["level"], inside["logger"]) == ("catalog", "WARNING", "strongroom.test.json")
    assert "KeyError: 'boom'" in failed["exception"]


def test_file_exporter_writes_one_json_line_per_span_with_its_parent(tmp_path: Path) -> None:
    provider = configure_tracing("gateway", f"file:{tmp_path}", set_global=False)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("outer") as outer, tracer.start_as_current_span("inner", kind=SpanKind.CLIENT):
        pass
    provider.shutdown()  # flushes the batch
    (path,) = tmp_path.glob("gateway-*.jsonl")
    inner, root = (json.loads(line) for line in path.read_text().splitlines())
    trace_id = f"{outer.get_span_context().trace_id:032x}"
    assert (root["name"], root["parent_id"], root["trace_id"], root["service"]) == ("outer", None, trace_id, "gateway")
    assert (inner["name"], inner["kind"], inner["trace_id"]) == ("inner", "CLIENT", trace_id)
    assert inner["parent_id"] == root["span_id"]


def test_a_malformed_or_missing_traceparent_starts_a_new_trace() -> None:
    provider, _ = _memory_provider()
    with provider.get_tracer("t").start_as_current_span("producer"):
        header = traceparent_of()
    assert header is not None
    parent = context_from_headers([("other", b"x"), ("traceparent", header.encode())])
    assert traceparent_of(parent) == header
    for bad in (None, "", "00-zz-yy-01", "x" * 500, b"\xff\xfe"):
        assert traceparent_of(context_from_traceparent(bad)) is None


# -- gRPC: a real server and channel on 127.0.0.1 ----------------------------------------------------


def _echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    async def run() -> bytes:
        if request == b"fail":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "refused")
        return request

    return run()


async def _join(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return b"".join([part async for part in requests])


async def _chat(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
    async for part in requests:
        yield part.upper()


@pytest.fixture
async def traced_server() -> AsyncIterator[tuple[str, InMemorySpanExporter, TracerProvider]]:
    provider, exporter = _memory_provider()
    server = grpc.aio.server(interceptors=[TracingServerInterceptor(provider)])
    methods = {
        "Say": grpc.unary_unary_rpc_method_handler(_echo),
        "Join": grpc.stream_unary_rpc_method_handler(_join),
        "Chat": grpc.stream_stream_rpc_method_handler(_chat),
    }
    handler = grpc.method_handlers_generic_handler("test.Echo", methods)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", exporter, provider
    finally:
        await server.stop(None)


async def test_a_call_continues_the_callers_trace_on_the_server(
    traced_server: tuple[str, InMemorySpanExporter, TracerProvider],
) -> None:
    address, exporter, provider = traced_server
    async with grpc.aio.insecure_channel(address, interceptors=client_interceptors(provider)) as channel:
        say = channel.unary_unary("/test.Echo/Say")
        with provider.get_tracer("t").start_as_current_span("job") as job:
            assert await say(b"hello") == b"hello"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await say(b"fail")
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await _until(lambda: len(exporter.get_finished_spans()) == 5)
    spans = exporter.get_finished_spans()
    trace_id = job.get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert [s.name for s in clients] == ["test.Echo/Say"] * 2
    for client in clients:
        assert client.parent is not None and client.parent.span_id == job.get_span_context().span_id
        (server,) = (s for s in servers if s.parent is not None and s.parent.span_id == client.context.span_id)
        assert server.attributes is not None and server.attributes["rpc.method"] == "Say"
    failed_server = next(s for s in servers if s.status.status_code is StatusCode.ERROR)
    assert failed_server.attributes is not None
    assert failed_server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]


async def test_streaming_calls_continue_the_trace_too(
    traced_server: tuple[str, InMemorySpanExporter, TracerProvider],
) -> None:
    address, exporter, provider = traced_server
    async with grpc.aio.insecure_channel(address, interceptors=client_interceptors(provider)) as channel:
        join = channel.stream_unary("/test.Echo/Join")
        chat = channel.stream_stream("/test.Echo/Chat")
        with provider.get_tracer("t").start_as_current_span("job") as job:
            assert await join(iter([b"a", b"b"])) == b"ab"
            assert [reply async for reply in chat(iter([b"x", b"y"]))] == [b"X", b"Y"]
    await _until(lambda: len(exporter.get_finished_spans()) == 5)
    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {job.get_span_context().trace_id}
    for method in ("test.Echo/Join", "test.Echo/Chat"):
        (client,) = (s for s in spans if s.name == method and s.kind is SpanKind.CLIENT)
        (server,) = (s for s in spans if s.name == method and s.kind is SpanKind.SERVER)
        assert server.parent is not None and server.parent.span_id == client.context.span_id


async def _until(condition: Any, within: float = 5.0) -> None:
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_the_metrics_endpoint_serves_the_catalog() -> None:
    settings = TelemetrySettings(metrics_listen="127.0.0.1:0", log_format="text")
    announce = io.StringIO()
    telemetry = start("scheduler", settings, set_global=False, announce=announce, log_stream=io.StringIO())
    try:
        metrics = Metrics(telemetry.meters.provider)
        metrics.job_finished("backup", "COMPLETE", 42.0)
        metrics.backup_bytes(read=300, unchanged=100, uploaded=50)
        assert telemetry.metrics_address is not None
        assert announce.getvalue() == f"LISTENING scheduler-metrics {telemetry.metrics_address}\n"
        with urllib.request.urlopen(f"http://{telemetry.metrics_address}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        telemetry.shutdown()
    assert 'strongroom_jobs_total{kind="backup",status="COMPLETE"} 1.0' in text
    assert "strongroom_backup_read_bytes_total 300.0" in text
    assert 'strongroom_job_duration_seconds_bucket{kind="backup",le="60",status="COMPLETE"} 1.0' in text
    assert "strongroom_backup_dedup_ratio_sum 8.0" in text


def test_a_taken_metrics_port_is_an_error() -> None:
    first = start("a", TelemetrySettings(metrics_listen="127.0.0.1:0"), set_global=False, log_stream=io.StringIO())
    try:
        assert first.metrics_address is not None
        with pytest.raises(OSError):
            start("b", TelemetrySettings(metrics_listen=first.metrics_address), set_global=False)
    finally:
        first.shutdown()
