"""Tracing of the services: the implementation lives in ``strongroom_telemetry`` (shared with the agent).

This module is the services' import path: ``configure_tracing``, ``traced`` and ``TelemetryError``
(``STRONGROOM_OTEL``: ``none``, ``console``, ``otlp`` or ``file:<dir>``; ADR 0039), and the metric
instruments (``Metrics``; ``instruments()`` on the process's meter provider).
"""

from __future__ import annotations

from strongroom_telemetry.metrics import Metrics, instruments
from strongroom_telemetry.tracing import TelemetryError, configure_tracing, traced

__all__ = ["Metrics", "TelemetryError", "configure_tracing", "instruments", "traced"]
