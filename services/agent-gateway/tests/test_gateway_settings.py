from __future__ import annotations

import base64

import pytest
from strongroom_gateway import __main__ as gateway_main
from strongroom_gateway.settings import Settings
from strongroom_platform.settings import SettingsError

BASE = {
    "STRONGROOM_PG_DSN": "postgresql://u@localhost/db",
    "STRONGROOM_INSECURE_PLAINTEXT": "1",  # what is tested here is not the transport
    "STRONGROOM_KAFKA_BOOTSTRAP": "localhost:9092",
    "STRONGROOM_OBJECT_STORE": "file:/tmp/objects",
    "STRONGROOM_MASTER_KEY": base64.b64encode(bytes(range(32))).decode(),
}


def test_defaults() -> None:
    settings = Settings.from_env(BASE)
    assert settings.grpc_listen == "127.0.0.1:0"
    assert settings.pack_target_bytes == 16 << 20
    assert settings.platform.object_store == "file:/tmp/objects"
    assert settings.manifest_segments  # manifest format version 2 (ADR 0065)


def test_manifest_segments_can_be_turned_off() -> None:
    assert not Settings.from_env(BASE | {"STRONGROOM_GATEWAY_MANIFEST_SEGMENTS": "0"}).manifest_segments
    assert Settings.from_env(BASE | {"STRONGROOM_GATEWAY_MANIFEST_SEGMENTS": "1"}).manifest_segments


def test_overrides() -> None:
    settings = Settings.from_env(
        BASE | {"STRONGROOM_GRPC_LISTEN": "0.0.0.0:7443", "STRONGROOM_GATEWAY_PACK_BYTES": str(4 << 20)}
    )
    assert (settings.grpc_listen, settings.pack_target_bytes) == ("0.0.0.0:7443", 4 << 20)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STRONGROOM_GATEWAY_PACK_BYTES", "10"),
        ("STRONGROOM_GATEWAY_MAX_WRITES", "0"),
        ("STRONGROOM_GATEWAY_MAX_RUNNING_BACKUPS", "-1"),
        ("STRONGROOM_GATEWAY_MAX_RUNNING_BACKUPS", "many"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(BASE | {name: value})


def test_database_is_required() -> None:
    with pytest.raises(SettingsError, match="STRONGROOM_PG_DSN"):
        Settings.from_env({k: v for k, v in BASE.items() if k != "STRONGROOM_PG_DSN"})


def test_the_running_backups_cap_is_off_unless_set() -> None:
    assert Settings.from_env(BASE).max_running_backups == 0
    assert Settings.from_env(BASE | {"STRONGROOM_GATEWAY_MAX_RUNNING_BACKUPS": "40"}).max_running_backups == 40


def test_unthrottled_is_off_unless_asked_for() -> None:
    assert Settings.from_env(BASE).unthrottled is False
    assert Settings.from_env(BASE | {"STRONGROOM_GATEWAY_UNTHROTTLED": "1"}).unthrottled is True
    with pytest.raises(SettingsError, match="STRONGROOM_GATEWAY_UNTHROTTLED"):
        Settings.from_env(BASE | {"STRONGROOM_GATEWAY_UNTHROTTLED": "maybe"})


def test_main_exits_2_naming_the_bad_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STRONGROOM_GATEWAY_MAX_WRITES", "0")
    with pytest.raises(SystemExit) as exited:
        gateway_main.main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err == "strongroom-gateway: STRONGROOM_GATEWAY_MAX_WRITES must be at least 1\n"
