"""Strongroom's metrics: the instrument catalog, the meter provider and the Prometheus endpoint.

Every process builds one meter provider (:func:`configure_metrics`) with a Prometheus reader on a
registry of its own, served on ``STRONGROOM_METRICS_LISTEN`` at ``/metrics``, and with
``STRONGROOM_OTEL=otlp`` also an OTLP exporter. Code records through :class:`Metrics` (names in
Prometheus form, as scraped):

- ``strongroom_jobs_total{kind,status}`` (counter): jobs finished, ``kind`` backup or restore,
  ``status`` as the API names it (``COMPLETE``, ``PARTIAL_COMPLETE``, ``FAILED``, ``CANCELED``);
  backups counted by the scheduler, restores by the restore service.
- ``strongroom_job_duration_seconds{kind,status}`` (histogram): creation to end of those jobs.
- ``strongroom_backup_read_bytes_total``, ``strongroom_backup_uploaded_bytes_total`` (counters):
  bytes read from disk and bytes of new chunks uploaded by finished backups (scheduler).
- ``strongroom_backup_dedup_ratio`` (histogram): per finished backup, bytes the point covers
  (read + unchanged) / bytes uploaded (scheduler).
- ``strongroom_stored_bytes_total`` (counter): bytes of pack files written to the object store (gateway).
- ``strongroom_consumer_lag{group,topic,partition}`` (gauge): records not yet handled (every consumer).
- ``strongroom_outbox_backlog{schema}`` (gauge): events not yet published (every outbox relay).
- ``strongroom_gateway_sessions`` (gauge): agents connected to this gateway process.
- ``strongroom_gateway_held_jobs`` (gauge): backup jobs this gateway process holds back until one of
  its sessions' backups ends (``STRONGROOM_GATEWAY_MAX_RUNNING_BACKUPS``, ADR 0053).
- ``strongroom_instance_last_success_timestamp_seconds{instance_id}`` (gauge): Unix time of the
  instance's latest successful backup seen by this scheduler process since it started.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from strongroom_telemetry.tracing import TelemetryError

__all__ = ["Metrics", "ProcessMeters", "configure_metrics", "instruments"]

_OTLP_METRICS_MODULE = "opentelemetry.exporter.otlp.proto.grpc.metric_exporter"

# Job durations run from seconds (an unchanged host) to a day (a first backup of many TB).
_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
_RATIO_BUCKETS = (1, 1.1, 1.25, 1.5, 2, 3, 5, 10, 20, 50, 100, 1000)


class Metrics:
    """The instruments of the catalog above, from ``provider`` (default: the global meter provider).

    Instruments of the global provider may be created before the process sets it: OpenTelemetry's
    proxies forward to the real provider once it is there.
    """

    def __init__(self, provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter("strongroom", meter_provider=provider)
        self.jobs = meter.create_counter("strongroom.jobs", description="Jobs finished, by kind and final status")
        self.job_duration = meter.create_histogram(
            "strongroom.job.duration", unit="s", description="Time from a job's creation to its end"
        )
        self.backup_read = meter.create_counter(
            "strongroom.backup.read", unit="By", description="Bytes read from disk by finished backups"
        )
        self.backup_uploaded = meter.create_counter(
            "strongroom.backup.uploaded", unit="By", description="Bytes of new chunks uploaded by finished backups"
        )
        self.stored = meter.create_counter(
            "strongroom.stored", unit="By", description="Bytes of pack files written to the object store"
        )
        self.dedup_ratio = meter.create_histogram(
            "strongroom.backup.dedup_ratio",
            unit="1",
            description="Per backup: bytes the point covers / bytes uploaded (1 = nothing deduplicated)",
        )
        self.consumer_lag = meter.create_gauge(
            "strongroom.consumer.lag", description="Records of a partition not yet handled by the consumer group"
        )
        self.outbox_backlog = meter.create_gauge(
            "strongroom.outbox.backlog", description="Outbox events not yet published to Kafka"
        )
        self.gateway_sessions = meter.create_gauge(
            "strongroom.gateway.sessions", description="Agents connected to this gateway process"
        )
        self.gateway_held_jobs = meter.create_gauge(
            "strongroom.gateway.held_jobs",
            description="Backup jobs held back by this gateway process's cap on running backups",
        )
        self.admission_waiting = meter.create_gauge(
            "strongroom.admission.waiting",
            description="Due backups waiting for a free slot under the fleet's concurrent-backup cap",
        )
        self.last_success = meter.create_gauge(
            "strongroom.instance.last_success_timestamp",
            unit="s",
            description="Unix time of the instance's latest successful backup",
        )

    def job_finished(self, kind: str, status: str, duration_seconds: float | None) -> None:
        """Count a finished job (``status`` as the API names it, e.g. ``COMPLETE``) and its duration."""
        labels = {"kind": kind, "status": status}
        self.jobs.add(1, labels)
        if duration_seconds is not None and duration_seconds >= 0:
            self.job_duration.record(duration_seconds, labels)

    def backup_bytes(self, *, read: int, unchanged: int, uploaded: int, ratio: bool = True) -> None:
        """Count a finished backup's bytes; with ``ratio`` (a backup that completed) also its
        dedup ratio, (read + unchanged) / uploaded."""
        self.backup_read.add(read)
        self.backup_uploaded.add(uploaded)
        covered = read + unchanged
        if ratio and covered > 0:
            self.dedup_ratio.record(covered / uploaded if uploaded > 0 else float(covered))


@functools.cache
def instruments() -> Metrics:
    """The process's instruments on the global meter provider (created on first use)."""
    return Metrics()


@dataclass(frozen=True, slots=True)
class ProcessMeters:
    """A process's meter provider and the Prometheus registry its endpoint serves."""

    provider: MeterProvider
    registry: CollectorRegistry


def _otlp_reader() -> MetricReader:
    try:
        module = importlib.import_module(_OTLP_METRICS_MODULE)
    except ImportError as exc:
        raise TelemetryError("STRONGROOM_OTEL=otlp needs the 'opentelemetry-exporter-otlp-proto-grpc' package") from exc
    exporter: Any = module.OTLPMetricExporter()
    return PeriodicExportingMetricReader(exporter)


def configure_metrics(service_name: str, *, otlp: bool = False, set_global: bool = True) -> ProcessMeters:
    """The meter provider of ``service_name``: a Prometheus reader on a registry of its own, plus OTLP.

    With ``set_global`` it becomes OpenTelemetry's global meter provider (once per process).
    Call ``provider.shutdown()`` at exit.
    """
    registry = CollectorRegistry(auto_describe=True)
    readers: list[MetricReader] = [
        PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=registry)
    ]
    if otlp:
        readers.append(_otlp_reader())
    views = [
        View(
            instrument_name="strongroom.job.duration", aggregation=ExplicitBucketHistogramAggregation(_DURATION_BUCKETS)
        ),
        View(
            instrument_name="strongroom.backup.dedup_ratio",
            aggregation=ExplicitBucketHistogramAggregation(_RATIO_BUCKETS),
        ),
    ]
    provider = MeterProvider(
        metric_readers=readers, resource=Resource.create({"service.name": service_name}), views=views
    )
    if set_global:
        metrics.set_meter_provider(provider)
    return ProcessMeters(provider, registry)
