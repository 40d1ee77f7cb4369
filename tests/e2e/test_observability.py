"""Observability of the real stack (issue 11, ADR 0039): one backup is one trace, metrics are scraped,
health answers, logs are JSON with trace ids.

Every process (the five services and the agent) runs with ``STRONGROOM_OTEL=file:<dir>``: each
appends its finished spans as JSON lines to ``<dir>/<service>-<pid>.jsonl``, and the test reads
them all. ``STRONGROOM_METRICS_LISTEN=127.0.0.1:0`` gives each its Prometheus endpoint, announced
as ``LISTENING <service>-metrics <addr>`` in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from strongroom_platform.certs import CA_CERT_FILE
from strongroom_testing.fixtures import PgLogins, S3Config
from test_backup_restore import Platform, backup, enrolled_instance, eventually, make_tree, running_platform

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
async def observed(
    stack_kafka: str, pg_logins: PgLogins, s3_config: S3Config, tmp_path: Path
) -> AsyncIterator[tuple[Platform, Path]]:
    spans = tmp_path / "spans"
    settings = {
        "STRONGROOM_OBJECT_STORE": "s3",
        "STRONGROOM_S3_ENDPOINT": s3_config.endpoint,
        "STRONGROOM_S3_ACCESS_KEY": s3_config.access_key,
        "STRONGROOM_S3_SECRET_KEY": s3_config.secret_key,
        "STRONGROOM_S3_SECURE": "1" if s3_config.secure else "0",
        "STRONGROOM_S3_BUCKET": f"e2e-{uuid.uuid4().hex[:12]}",
        "STRONGROOM_OTEL": f"file:{spans}",
        "STRONGROOM_METRICS_LISTEN": "127.0.0.1:0",
    }
    async with running_platform(stack_kafka, pg_logins, tmp_path, settings) as running:
        yield running, spans


def read_spans(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob("*.jsonl")) for line in path.read_text().splitlines()]


def span_tree(spans: list[dict[str, Any]], root: dict[str, Any]) -> str:
    """The trace under ``root`` as an indented tree: ``service  KIND  name  (ms)``."""
    children: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        if span["parent_id"] is not None:
            children.setdefault(span["parent_id"], []).append(span)
    lines: list[str] = []

    def walk(span: dict[str, Any], depth: int) -> None:
        ms = (span["end_ns"] - span["start_ns"]) / 1e6
        lines.append(f"{'  ' * depth}{span['service']:<9} {span['kind']:<8} {span['name']}  ({ms:.1f} ms)")
        for child in sorted(children.get(span["span_id"], []), key=lambda s: s["start_ns"]):
            walk(child, depth + 1)

    walk(root, 0)
    return "\n".join(lines)


def metrics_address(platform: Platform, service: str) -> str:
    text = (platform.logs / f"{service}.log").read_text(errors="replace")
    found = re.search(rf"^LISTENING {service}-metrics (\S+)$", text, re.MULTILINE)
    assert found, f"{service} announced no metrics endpoint"
    return found.group(1)


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels...}`` (labels matched as a subset), or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{wanted}"' in head for key, wanted in labels.items()):
            return float(value)
    return None


async def test_one_backup_is_one_trace_and_its_metrics_are_scraped(
    observed: tuple[Platform, Path], tmp_path: Path
) -> None:
    platform, span_dir = observed
    source = tmp_path / "source"
    make_tree(source)
    instance_id, agent = await enrolled_instance(platform, source, tmp_path / "agent-state")
    try:
        job = await backup(platform, instance_id)
        assert job.stats.bytes_read > 0

        # -- the trace starts at the operator's backup-now call (ADR 0045): scheduler -> job-requested ->
        # gateway -> the agent's job span, which the gateway, Kafka and the catalog continue
        async def backup_trace() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
            spans = read_spans(span_dir)
            jobs = [s for s in spans if s["name"] == "agent.backup" and s["attributes"].get("strongroom.job_id")]
            for job_span in jobs:
                members = [s for s in spans if s["trace_id"] == job_span["trace_id"]]
                if any(s["service"] == "catalog" and s["kind"] == "CONSUMER" for s in members):
                    return job_span, members
            return None

        job_span, members = await eventually("the backup's trace to reach the catalog", backup_trace, within=60)

        # The trace's root in the services' files is the operator's call. Its parent is either none or,
        # when the calling process traces too (this test process, once an earlier test switched
        # tracing on), that caller's client span, exported elsewhere: a root is a span whose parent
        # is not in the files. Each process exports in batches (once a second, later under load): wait
        # until there is exactly one root, i.e. the trace is whole.
        def roots(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
            ids = {s["span_id"] for s in spans}
            return [s for s in spans if s["parent_id"] is None or s["parent_id"] not in ids]

        async def settled_trace() -> list[dict[str, Any]] | None:
            spans = [s for s in read_spans(span_dir) if s["trace_id"] == job_span["trace_id"]]
            return spans if len(roots(spans)) == 1 else None

        members = await eventually("the whole trace, one root", settled_trace, within=60)
        by_id = {s["span_id"]: s for s in members}

        def ancestors(span: dict[str, Any]) -> list[dict[str, Any]]:
            chain = []
            while span["parent_id"] in by_id:
                span = by_id[span["parent_id"]]
                chain.append(span)
            return chain

        [root] = roots(members)
        tree = span_tree(members, root)
        sys.stderr.write(f"----- one backup's trace ({len(members)} spans) -----\n{tree}\n")
        assert root["service"] == "scheduler" and root["kind"] == "SERVER" and root["name"].endswith("/RunBackupNow")
        assert job_span["service"] == "agent" and job_span["attributes"]["strongroom.job_status"] == "COMPLETE"
        requested = by_id[job_span["parent_id"]]
        assert (requested["service"], requested["kind"], requested["name"]) == (
            "gateway",
            "CONSUMER",
            "job-requested process",
        )
        assert ancestors(job_span)[-1]["span_id"] == root["span_id"]
        # Every span of the trace hangs under the operator's call: nothing is orphaned.
        assert all(s["span_id"] == root["span_id"] or ancestors(s)[-1]["span_id"] == root["span_id"] for s in members)
        root = job_span  # what follows is the backup itself, under the agent's job span
        services = {s["service"] for s in members}
        assert {"agent", "gateway", "catalog"} <= services
        commit = next(s for s in members if s["service"] == "gateway" and s["name"].endswith("/CommitPoint"))
        assert commit["kind"] == "SERVER" and by_id[commit["parent_id"]]["kind"] == "CLIENT"
        produced = next(s for s in members if s["name"] == "point-created publish")
        assert produced["service"] == "gateway" and produced["kind"] == "PRODUCER"
        consumed = next(s for s in members if s["service"] == "catalog" and s["name"] == "point-created process")
        assert consumed["parent_id"] == produced["span_id"]
        assert commit["span_id"] in {a["span_id"] for a in ancestors(produced)}
        uploads = [s for s in members if s["service"] == "gateway" and s["name"].endswith("/UploadChunks")]
        assert uploads, "the chunk uploads are part of the trace"

        # -- the logs: JSON lines, and the catalog's indexing lines carry the backup's trace id
        catalog_lines = [
            json.loads(line)
            for line in (platform.logs / "catalog.log").read_text().splitlines()
            if line.startswith("{")
        ]
        assert catalog_lines and all({"time", "level", "service", "message"} <= set(e) for e in catalog_lines)
        assert any(e.get("trace_id") == root["trace_id"] for e in catalog_lines)

        # -- the metrics: the scheduler counted the job, the gateway the stored bytes and the session
        scheduler = metrics_address(platform, "scheduler")
        text = await eventually(
            "the scheduler to count the finished backup",
            lambda: _scraped_with(scheduler, "strongroom_jobs_total", kind="backup", status="COMPLETE"),
        )
        sys.stderr.write("----- scheduler /metrics (excerpt) -----\n")
        sys.stderr.write("\n".join(line for line in text.splitlines() if line.startswith("strongroom_")) + "\n")
        assert sample(text, "strongroom_jobs_total", kind="backup", status="COMPLETE") == 1.0
        assert sample(text, "strongroom_backup_read_bytes_total") == float(job.stats.bytes_read)
        assert sample(text, "strongroom_backup_uploaded_bytes_total") == float(job.stats.bytes_uploaded)
        assert sample(text, "strongroom_job_duration_seconds_count", kind="backup", status="COMPLETE") == 1.0
        assert sample(text, "strongroom_backup_dedup_ratio_count") == 1.0
        last = sample(text, "strongroom_instance_last_success_timestamp_seconds", instance_id=instance_id)
        assert last is not None and last > 1.7e9
        assert sample(text, "strongroom_outbox_backlog", schema="scheduler") == 0.0
        assert sample(text, "strongroom_consumer_lag", group="scheduler", topic="job-updated") is not None
        gateway = scrape(metrics_address(platform, "gateway"))
        stored = sample(gateway, "strongroom_stored_bytes_total")
        assert stored is not None and stored > 0
        assert sample(gateway, "strongroom_gateway_sessions") == 1.0

        # -- health: SERVING on a public listener over TLS, without a credential
        ca = (platform.tls_dir / CA_CERT_FILE).read_bytes()
        address = platform.stack.addresses["catalog"]
        async with grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service="strongroom.catalog.v1.CatalogService"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await agent.stop()


async def _scraped_with(address: str, name: str, **labels: str) -> str | None:
    with contextlib.suppress(OSError):
        text = await asyncio.to_thread(scrape, address)
        if sample(text, name, **labels):
            return text
    return None
