"""The zone whose midnights end schedule and billing days: a setting, default UTC+8 (the seed's).

``parse_zone`` accepts a fixed offset (``UTC+8``, ``UTC+08:00``, ``+05:30``, ``UTC``) or an IANA
name (``Asia/Shanghai``, ``Europe/Berlin``; the system's time zone database).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Mapping

from strongroom_platform.settings import SettingsError

__all__ = ["DEFAULT_ZONE", "ZONE_ENV", "parse_zone", "zone_from_env", "zone_name"]

ZONE_ENV = "STRONGROOM_ZONE"

DEFAULT_ZONE = dt.timezone(dt.timedelta(hours=8), "UTC+08:00")

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


def zone_from_env(environ: Mapping[str, str]) -> dt.tzinfo:
    """``STRONGROOM_ZONE`` (default UTC+8); SettingsError naming the variable when it is not a zone."""
    try:
        return parse_zone(environ.get(ZONE_ENV, "") or "UTC+8")
    except ValueError as exc:
        raise SettingsError(f"{ZONE_ENV}: {exc}") from None
