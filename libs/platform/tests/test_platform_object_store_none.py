"""STRONGROOM_OBJECT_STORE=none: a service that never opens the object store needs no S3 settings."""

from __future__ import annotations

import pytest
from strongroom_platform.clock import SystemClock
from strongroom_platform.objectstore_factory import open_object_store
from strongroom_platform.settings import PlatformSettings, SettingsError

BASE = {
    "STRONGROOM_PG_DSN": "postgresql://strongroom_catalog@db/strongroom",
    "STRONGROOM_KAFKA_BOOTSTRAP": "kafka:9092",
    "STRONGROOM_INSECURE_PLAINTEXT": "1",
}


def test_none_needs_no_s3_settings() -> None:
    settings = PlatformSettings.from_env({**BASE, "STRONGROOM_OBJECT_STORE": "none"})
    assert settings.object_store == "none" and settings.s3 is None


def test_s3_without_its_settings_is_still_refused() -> None:
    with pytest.raises(SettingsError, match="STRONGROOM_S3_ENDPOINT"):
        PlatformSettings.from_env({**BASE, "STRONGROOM_OBJECT_STORE": "s3"})


def test_unknown_kind_names_the_choices() -> None:
    with pytest.raises(SettingsError, match="'s3', 'file:<dir>' or 'none'"):
        PlatformSettings.from_env({**BASE, "STRONGROOM_OBJECT_STORE": "gcs"})


async def test_opening_the_store_with_none_is_refused() -> None:
    settings = PlatformSettings.from_env({**BASE, "STRONGROOM_OBJECT_STORE": "none"})
    with pytest.raises(SettingsError, match="STRONGROOM_OBJECT_STORE=none"):
        await open_object_store(settings, SystemClock())
