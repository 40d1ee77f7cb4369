"""Settings from the environment."""

from __future__ import annotations

import pytest
from strongroom_platform.settings import SettingsError
from strongroom_restore.settings import Settings

BASE = {
    "STRONGROOM_PG_DSN": "postgresql://db/strongroom",
    "STRONGROOM_KAFKA_BOOTSTRAP": "broker:9092",
    "STRONGROOM_OBJECT_STORE": "file:/var/lib/strongroom/objects",
    "STRONGROOM_CATALOG_ADDR": "catalog:7000",
}


def test_defaults_and_overrides() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.grpc_listen, settings.catalog_addr) == ("127.0.0.1:0", "catalog:7000")
    assert Settings.from_env(BASE | {"STRONGROOM_GRPC_LISTEN": "0.0.0.0:7004"}).grpc_listen == "0.0.0.0:7004"


@pytest.mark.parametrize("missing", ["STRONGROOM_CATALOG_ADDR", "STRONGROOM_PG_DSN", "STRONGROOM_KAFKA_BOOTSTRAP"])
def test_required(missing: str) -> None:
    with pytest.raises(SettingsError, match=f"{missing} is required"):
        Settings.from_env({k: v for k, v in BASE.items() if k != missing})
