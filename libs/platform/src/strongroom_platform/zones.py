"""The zone whose midnights end schedule and billing days: a setting, default UTC+8 (the seed's).

Zone names are read by ``strongroom_zones`` (shared with the operator CLI); this module adds the
setting, ``STRONGROOM_ZONE``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from strongroom_zones import DEFAULT_ZONE, parse_zone, zone_name

from strongroom_platform.settings import SettingsError

__all__ = ["DEFAULT_ZONE", "ZONE_ENV", "parse_zone", "zone_from_env", "zone_name"]

ZONE_ENV = "STRONGROOM_ZONE"


def zone_from_env(environ: Mapping[str, str]) -> dt.tzinfo:
    """``STRONGROOM_ZONE`` (default UTC+8); SettingsError naming the variable when it is not a zone."""
    try:
        return parse_zone(environ.get(ZONE_ENV, "") or "UTC+8")
    except ValueError as exc:
        raise SettingsError(f"{ZONE_ENV}: {exc}") from None
