"""The telemetry settings of a process, read once from its environment.

Environment:
    STRONGROOM_OTEL: where finished spans go: ``none`` (default; spans are still created, so trace
        ids reach the logs and the Kafka headers, but nothing is exported), ``console`` (printed,
        for debugging), ``otlp`` (spans *and* metrics to the collector named by the standard
        ``OTEL_EXPORTER_OTLP_*`` variables) or ``file:<dir>`` (one JSON line per span in
        ``<dir>/<service>-<pid>.jsonl``; tests and one-off investigations).
    STRONGROOM_METRICS_LISTEN: ``host:port`` of the process's Prometheus endpoint (``/metrics``);
        port 0 takes a free port, announced as ``LISTENING <service>-metrics <host:port>``.
        Unset: no endpoint.
    STRONGROOM_LOG_FORMAT: ``json`` (one object per line, with trace and span ids) or ``text``;
        the default is the process's own (JSON for services, text for the CLI and the agent's
        terminal use).
    STRONGROOM_LOG_LEVEL: ``DEBUG``, ``INFO`` (default), ``WARNING`` or ``ERROR``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["LogFormat", "TelemetrySettings", "TelemetrySettingsError", "parse_exporter"]

LogFormat = Literal["json", "text"]
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class TelemetrySettingsError(ValueError):
    """A telemetry variable is malformed; the message names it."""


def parse_exporter(value: str) -> str:
    """``value`` if it names a span exporter (``none``, ``console``, ``otlp``, ``file:<dir>``); else raises."""
    if value in {"none", "console", "otlp"}:
        return value
    if value.startswith("file:") and value[len("file:") :].strip():
        return value
    raise TelemetrySettingsError(f"STRONGROOM_OTEL must be none, console, otlp or file:<dir>, got {value!r}")


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise TelemetrySettingsError(f"STRONGROOM_METRICS_LISTEN must be host:port, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """What a process exports and how it logs (see the module docstring)."""

    exporter: str = "none"
    metrics_listen: str | None = None
    log_format: LogFormat = "json"
    log_level: str = "INFO"

    @property
    def span_dir(self) -> Path | None:
        """The directory of ``file:<dir>``, else None."""
        return Path(self.exporter[len("file:") :]) if self.exporter.startswith("file:") else None

    @property
    def otlp(self) -> bool:
        return self.exporter == "otlp"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, default_log_format: LogFormat = "json") -> TelemetrySettings:
        """Raises TelemetrySettingsError naming the malformed variable."""
        exporter = parse_exporter(environ.get("STRONGROOM_OTEL", "").strip() or "none")
        listen = environ.get("STRONGROOM_METRICS_LISTEN", "").strip()
        log_format = environ.get("STRONGROOM_LOG_FORMAT", "").strip().lower() or default_log_format
        if log_format not in ("json", "text"):
            raise TelemetrySettingsError(f"STRONGROOM_LOG_FORMAT must be json or text, got {log_format!r}")
        level = environ.get("STRONGROOM_LOG_LEVEL", "").strip().upper() or "INFO"
        if level not in _LEVELS:
            raise TelemetrySettingsError(f"STRONGROOM_LOG_LEVEL must be one of {', '.join(_LEVELS)}, got {level!r}")
        return cls(
            exporter=exporter,
            metrics_listen=_listen(listen) if listen else None,
            log_format="json" if log_format == "json" else "text",
            log_level=level,
        )
