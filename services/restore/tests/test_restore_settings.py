"""Settings from the environment."""

from __future__ import annotations

import pytest
from strongroom_platform.settings import SettingsError
from strongroom_restore.settings import Settings

BASE = {
    "STRONGROOM_PG_DSN": "postgresql://db/strongroom",
    "STRONGROOM_INSECURE_PLAINTEXT": "1",  # what is tested here is not the transport
    "STRONGROOM_KAFKA_BOOTSTRAP": "broker:9092",
    "STRONGROOM_OBJECT_STORE": "file:/var/lib/strongroom/objects",
    "STRONGROOM_CATALOG_ADDR": "catalog:7000",
    "STRONGROOM_SCHEDULER_ADDR": "scheduler:7000",
}


def test_defaults_and_overrides() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.grpc_listen, settings.catalog_addr) == ("127.0.0.1:0", "catalog:7000")
    assert Settings.from_env(BASE | {"STRONGROOM_GRPC_LISTEN": "0.0.0.0:7004"}).grpc_listen == "0.0.0.0:7004"


def test_peers_internal_listeners_win() -> None:
    internal = {
        "STRONGROOM_CATALOG_INTERNAL_ADDR": "catalog:7100",
        "STRONGROOM_SCHEDULER_INTERNAL_ADDR": "scheduler:7100",
    }
    settings = Settings.from_env(BASE | internal)
    assert (settings.catalog_addr, settings.scheduler_addr) == ("catalog:7100", "scheduler:7100")


@pytest.mark.parametrize(
    "missing",
    ["STRONGROOM_CATALOG_ADDR", "STRONGROOM_SCHEDULER_ADDR", "STRONGROOM_PG_DSN", "STRONGROOM_KAFKA_BOOTSTRAP"],
)
def test_required(missing: str) -> None:
    with pytest.raises(SettingsError, match=f"{missing} is required"):
        Settings.from_env({k: v for k, v in BASE.items() if k != missing})
