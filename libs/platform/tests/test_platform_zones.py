from __future__ import annotations

import datetime as dt

import pytest
from strongroom_platform.settings import SettingsError
from strongroom_platform.zones import DEFAULT_ZONE, parse_zone, zone_from_env


def test_the_default_is_the_seeds_utc_plus_8() -> None:
    assert zone_from_env({}) is DEFAULT_ZONE or zone_from_env({}).utcoffset(None) == dt.timedelta(hours=8)
    assert zone_from_env({"STRONGROOM_ZONE": "Asia/Tokyo"}) == parse_zone("Asia/Tokyo")
    with pytest.raises(SettingsError, match="STRONGROOM_ZONE"):
        zone_from_env({"STRONGROOM_ZONE": "nowhere"})
