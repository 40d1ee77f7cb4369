"""Rendering for the terminal: aligned tables, key/value blocks, sizes and times; JSON for machines."""

from __future__ import annotations

import datetime as dt
import json
import stat
import sys
from collections.abc import Sequence
from typing import TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from strongroom_zones.display import minute_of_day as minute_of_day  # re-exported: callers use this module's name
from strongroom_zones.display import size as size


def _local_zone() -> dt.tzinfo:
    zone = dt.datetime.now().astimezone().tzinfo
    return zone if zone is not None else dt.UTC


# Times are shown in the operator's zone: the machine's, or the one ``--tz`` / ``$STRONGROOM_TZ``
# names (set once by the CLI's entry point, before any command runs).
_display_zone: dt.tzinfo = _local_zone()


def set_display_zone(zone: dt.tzinfo | None) -> None:
    """Show times in ``zone`` (None: the machine's local zone)."""
    global _display_zone
    _display_zone = zone if zone is not None else _local_zone()


def display_zone() -> dt.tzinfo:
    return _display_zone


def zone_label() -> str:
    """A short name of the display zone for table headers, e.g. ``UTC+08:00`` or ``CET``."""
    name = _display_zone.tzname(dt.datetime.now(dt.UTC).astimezone(_display_zone))
    return name or "local"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    """Print an aligned table (two spaces between columns); prints a note instead of an empty table."""
    out = out or sys.stdout
    if not rows:
        print("(none)", file=out)
        return
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


def fields(pairs: Sequence[tuple[str, str]], out: TextIO | None = None) -> None:
    """Print ``label: value`` lines with aligned values."""
    out = out or sys.stdout
    width = max(len(label) for label, _ in pairs) + 1
    for label, value in pairs:
        print(f"{label + ':':<{width}} {value}", file=out)


def as_json(message: Message | Sequence[Message], out: TextIO | None = None) -> None:
    """Print a message (or a list of them) as JSON: proto field names, enum names, zero values included,
    64-bit integers as JSON numbers."""
    data = [to_dict(m) for m in message] if isinstance(message, Sequence) else to_dict(message)
    print_json(data, out)


def to_dict(message: Message) -> dict[str, object]:
    """A message as :func:`as_json` prints it, for output that combines several."""
    return MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def print_json(data: object, out: TextIO | None = None) -> None:
    print(json.dumps(data, indent=2, sort_keys=True), file=out or sys.stdout)


def timestamp(ts: Timestamp, *, present: bool = True) -> str:
    """``2026-01-02 02:00:00`` in the display zone, or ``-`` when unset."""
    if not present or (ts.seconds == 0 and ts.nanos == 0):
        return "-"
    return ts.ToDatetime(tzinfo=dt.UTC).astimezone(_display_zone).strftime("%Y-%m-%d %H:%M:%S")


def mtime(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).astimezone(_display_zone).strftime("%Y-%m-%d %H:%M")


def enum_name(name: str, prefix: str) -> str:
    """``RUNNING_STATUS_BACKING_UP`` -> ``backing up``."""
    return name.removeprefix(prefix).replace("_", " ").lower()


def permissions(file_type: str, mode: int) -> str:
    """``drwxr-xr-x`` from a type character and permission bits."""
    return file_type + stat.filemode(mode & 0o7777)[1:]
