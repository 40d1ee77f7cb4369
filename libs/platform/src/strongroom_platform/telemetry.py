"""Tracing of the services: the implementation lives in ``strongroom_telemetry`` (shared with the agent).

This module keeps the platform's import path: ``configure_tracing``, ``traced`` and ``TelemetryError``
(``STRONGROOM_OTEL``: ``none``, ``console``, ``otlp`` or ``file:<dir>``; ADR 0039).
"""

from __future__ import annotations

from strongroom_telemetry.tracing import TelemetryError, configure_tracing, traced

__all__ = ["TelemetryError", "configure_tracing", "traced"]
