"""Log records as JSON lines carrying the trace and span ids of the span current when they were logged.

One object per line on stderr: ``time`` (UTC, ISO 8601 with milliseconds), ``level``,
``service``, ``logger``, ``message``, then ``trace_id`` and ``span_id`` (hex, as in the trace
backend) when a span was current, and ``exception`` (the formatted traceback) when one was logged.
A log search for a trace id finds every line of one backup across the processes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import IO, Any

from opentelemetry import trace

from strongroom_telemetry.config import LogFormat

__all__ = ["JsonFormatter", "configure_logging"]

# aiokafka and faust are chatty at INFO about every rebalance.
_NOISY = ("aiokafka", "faust", "mode", "kafka")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = f"{context.trace_id:032x}"
            entry["span_id"] = f"{context.span_id:016x}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(
    service: str, *, log_format: LogFormat = "json", level: str = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """Send the root logger's records to ``stream`` (default stderr) as JSON or text; return the handler.

    Replaces the root logger's handlers (a process configures logging once, in its entry point).
    Text lines are ``<time> <service> <LEVEL> <logger>: <message>``.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler
