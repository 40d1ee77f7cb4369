"""The one call a process's entry point makes: logs, tracing, metrics and the Prometheus endpoint.

``telemetry = start("catalog", TelemetrySettings.from_env(os.environ))`` before anything else
runs, ``telemetry.shutdown()`` at exit (flushes spans and metrics, closes the endpoint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import IO, Any

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import start_http_server

from strongroom_telemetry.config import TelemetrySettings
from strongroom_telemetry.logs import configure_logging
from strongroom_telemetry.metrics import ProcessMeters, configure_metrics
from strongroom_telemetry.tracing import configure_tracing

__all__ = ["Telemetry", "start"]

log = logging.getLogger(__name__)


@dataclass
class Telemetry:
    """What :func:`start` switched on; :meth:`shutdown` undoes it."""

    tracer_provider: TracerProvider
    meters: ProcessMeters
    metrics_address: str | None = None
    _server: Any = None

    def shutdown(self) -> None:
        """Flush and stop exporters, close the metrics endpoint. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self.tracer_provider.shutdown()
        self.meters.provider.shutdown()


def _serve_metrics(service: str, listen: str, meters: ProcessMeters, announce: IO[str] | None) -> tuple[Any, str]:
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=meters.registry)
    address = f"{host}:{server.server_port}"
    if announce is not None:
        print(f"LISTENING {service}-metrics {address}", file=announce, flush=True)
    log.info("%s metrics on http://%s/metrics", service, address)
    return server, address


def start(
    service: str,
    settings: TelemetrySettings,
    *,
    set_global: bool = True,
    announce: IO[str] | None = None,
    log_stream: IO[str] | None = None,
) -> Telemetry:
    """Configure logging, the tracer and meter providers (global by default) and serve ``/metrics``.

    ``announce`` receives ``LISTENING <service>-metrics <host:port>`` once the endpoint serves
    (a service passes stdout, where supervisors read its other ``LISTENING`` lines). Raises
    OSError when the metrics address cannot be bound, TelemetryError when an exporter is missing.
    """
    configure_logging(service, log_format=settings.log_format, level=settings.log_level, stream=log_stream)
    tracer_provider = configure_tracing(service, settings.exporter, set_global=set_global)
    meters = configure_metrics(service, otlp=settings.otlp, set_global=set_global)
    telemetry = Telemetry(tracer_provider, meters)
    if settings.metrics_listen is not None:
        try:
            telemetry._server, telemetry.metrics_address = _serve_metrics(
                service, settings.metrics_listen, meters, announce
            )
        except OSError:
            telemetry.shutdown()
            raise
    return telemetry
