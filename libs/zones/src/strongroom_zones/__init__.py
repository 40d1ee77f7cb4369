"""Zone names as Strongroom reads and writes them: a fixed offset (``UTC+8``, ``UTC+08:00``,
``+05:30``, ``UTC``) or an IANA name (``Asia/Shanghai``; the system's time zone database).

The standard library only, so that the operator CLI (which installs without the services) and the
services (whose schedule and billing days end at the zone's midnights) read a zone the same way.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

__all__ = ["DEFAULT_ZONE", "parse_zone", "zone_name"]

DEFAULT_ZONE = dt.timezone(dt.timedelta(hours=8), "UTC+08:00")
"""The seed's zone: schedule and billing days end at midnight UTC+8 unless configured otherwise."""

_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)


def parse_zone(text: str) -> dt.tzinfo:
    """The zone ``text`` names; ValueError with the accepted forms otherwise."""
    value = text.strip()
    if value.upper() in {"UTC", "GMT", "Z"}:
        return dt.UTC
    match = _OFFSET.match(value)
    if match:
        sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3) or 0)
        if hours > 14 or minutes >= 60:
            raise ValueError(f"zone offset out of range: {text!r}")
        offset = dt.timedelta(hours=hours, minutes=minutes) * (-1 if sign == "-" else 1)
        return dt.timezone(offset, f"UTC{sign}{hours:02}:{minutes:02}")
    try:
        return zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown zone {text!r}: give an offset such as UTC+8 or +05:30, or an IANA name such as Asia/Shanghai"
        ) from None


def zone_name(zone: dt.tzinfo) -> str:
    """A name that ``parse_zone`` reads back to the same zone."""
    if isinstance(zone, zoneinfo.ZoneInfo):
        return zone.key
    return zone.tzname(None) or "UTC"
