from __future__ import annotations

import datetime as dt

import pytest
from strongroom_platform.settings import SettingsError
from strongroom_scheduler.schedule import Admission
from strongroom_scheduler.settings import Settings

BASE = {
    "STRONGROOM_PG_DSN": "postgresql://x",
    "STRONGROOM_INSECURE_PLAINTEXT": "1",  # what is tested here is not the transport
    "STRONGROOM_KAFKA_BOOTSTRAP": "k:9092",
    "STRONGROOM_OBJECT_STORE": "file:/unused",
}


def test_defaults() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.grpc_listen, settings.schedule_interval, settings.platform.kafka_idempotent) == (
        "127.0.0.1:0",
        30.0,
        True,
    )


def test_the_schedule_zone_defaults_to_utc_plus_8_and_can_be_set() -> None:
    assert str(Settings.from_env(BASE).zone) == "UTC+08:00"
    assert str(Settings.from_env({**BASE, "STRONGROOM_ZONE": "Asia/Kolkata"}).zone) == "Asia/Kolkata"
    assert str(Settings.from_env({**BASE, "STRONGROOM_ZONE": "UTC-3"}).zone) == "UTC-03:00"


def test_overrides() -> None:
    settings = Settings.from_env(
        {**BASE, "STRONGROOM_SCHEDULE_INTERVAL": "0.5", "STRONGROOM_OUTBOX_REPLAY": "1", "STRONGROOM_GRPC_LISTEN": ":7"}
    )
    assert (settings.schedule_interval, settings.platform.outbox_replay, settings.grpc_listen) == (0.5, True, ":7")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STRONGROOM_KAFKA_BOOTSTRAP": "k", "STRONGROOM_OBJECT_STORE": "file:/x"}, "STRONGROOM_PG_DSN is required"),
        ({**BASE, "STRONGROOM_SCHEDULE_INTERVAL": "soon"}, "must be a number"),
        ({**BASE, "STRONGROOM_SCHEDULE_INTERVAL": "0"}, "must be positive"),
        ({**BASE, "STRONGROOM_ZONE": "Mars/Olympus"}, "STRONGROOM_ZONE: unknown zone 'Mars/Olympus'"),
        ({**BASE, "STRONGROOM_ZONE": "UTC+25"}, "STRONGROOM_ZONE: zone offset out of range"),
    ],
)
def test_invalid(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_the_admission_cap_and_window_are_settings() -> None:
    assert Settings.from_env(BASE).admission == Admission()  # no cap, a six-hour window
    tuned = Settings.from_env(
        {**BASE, "STRONGROOM_MAX_CONCURRENT_BACKUPS": "500", "STRONGROOM_ADMISSION_WINDOW": "7200"}
    )
    assert tuned.admission == Admission(max_concurrent=500, window=dt.timedelta(hours=2))
    with pytest.raises(SettingsError, match="STRONGROOM_MAX_CONCURRENT_BACKUPS"):
        Settings.from_env({**BASE, "STRONGROOM_MAX_CONCURRENT_BACKUPS": "-1"})
    with pytest.raises(SettingsError, match="STRONGROOM_ADMISSION_WINDOW"):
        Settings.from_env({**BASE, "STRONGROOM_ADMISSION_WINDOW": "0"})
