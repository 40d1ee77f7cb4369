from __future__ import annotations

import datetime as dt

import pytest
from strongroom_zones import parse_zone, zone_name


@pytest.mark.parametrize(
    ("text", "offset_hours", "name"),
    [
        ("UTC+8", 8, "UTC+08:00"),
        ("utc+08:00", 8, "UTC+08:00"),
        ("+05:30", 5.5, "UTC+05:30"),
        ("GMT-3", -3, "UTC-03:00"),
        ("UTC", 0, "UTC"),
    ],
)
def test_fixed_offsets(text: str, offset_hours: float, name: str) -> None:
    zone = parse_zone(text)
    assert zone.utcoffset(None) == dt.timedelta(hours=offset_hours)
    assert zone_name(zone) == name
    assert parse_zone(zone_name(zone)).utcoffset(None) == zone.utcoffset(None)  # reads back


def test_iana_names_follow_daylight_saving() -> None:
    berlin = parse_zone("Europe/Berlin")
    assert zone_name(berlin) == "Europe/Berlin"
    assert dt.datetime(2026, 1, 1, tzinfo=berlin).utcoffset() == dt.timedelta(hours=1)
    assert dt.datetime(2026, 7, 1, tzinfo=berlin).utcoffset() == dt.timedelta(hours=2)


@pytest.mark.parametrize("text", ["", "Mars/Olympus", "UTC+15", "+08:75", "../etc/passwd", "8"])
def test_bad_zones_are_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="zone"):
        parse_zone(text)
