"""Settings from the environment."""

from __future__ import annotations

import pytest
from strongroom_catalog.settings import Settings
from strongroom_platform.settings import SettingsError

BASE = {
    "STRONGROOM_PG_DSN": "postgresql://db/strongroom",
    "STRONGROOM_INSECURE_PLAINTEXT": "1",  # what is tested here is not the transport
    "STRONGROOM_KAFKA_BOOTSTRAP": "broker:9092",
    "STRONGROOM_OBJECT_STORE": "file:/var/lib/strongroom/objects",
}


def test_defaults() -> None:
    settings = Settings.from_env(BASE)
    assert settings.grpc_listen == "127.0.0.1:0"
    assert settings.retention_interval == 600
    assert settings.platform.pg_dsn == "postgresql://db/strongroom"
    assert settings.platform.object_store == "file:/var/lib/strongroom/objects"


def test_default_retention_interval_is_at_most_an_hour() -> None:
    # The seed: turning "keep at least one backup version" off takes effect within one hour,
    # so retention must run at least hourly by default.
    assert Settings.from_env(BASE).retention_interval <= 3600


def test_overrides() -> None:
    settings = Settings.from_env(
        BASE | {"STRONGROOM_GRPC_LISTEN": "0.0.0.0:7001", "STRONGROOM_CATALOG_RETENTION_INTERVAL": "60"}
    )
    assert (settings.grpc_listen, settings.retention_interval) == ("0.0.0.0:7001", 60)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({k: v for k, v in BASE.items() if k != "STRONGROOM_PG_DSN"}, "STRONGROOM_PG_DSN is required"),
        (BASE | {"STRONGROOM_CATALOG_RETENTION_INTERVAL": "0"}, "must be positive"),
        (BASE | {"STRONGROOM_CATALOG_RETENTION_INTERVAL": "soon"}, "must be an integer"),
    ],
)
def test_invalid(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
