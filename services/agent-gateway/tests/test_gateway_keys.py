"""Master key configuration, the key file of standalone mode, data-key wrapping and master key rotation."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
from pathlib import Path

import pytest
from strongroom_gateway.keys import (
    AccountKeys,
    MasterKey,
    MasterKeyConfig,
    MasterKeyError,
    MasterKeyring,
    fingerprint,
    read_or_create_key_file,
)
from strongroom_gateway.ports import Account
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform.settings import SettingsError
from strongroom_platform.testing import FakeClock

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()


def test_missing_master_key_is_refused_with_instructions() -> None:
    with pytest.raises(SettingsError, match="STRONGROOM_MASTER_KEY is required") as err:
        MasterKeyConfig.from_env({})
    assert "STRONGROOM_MASTER_KEY_FILE" in str(err.value) and "base64" in str(err.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STRONGROOM_MASTER_KEY": "not base64!"}, "not valid base64"),
        ({"STRONGROOM_MASTER_KEY": base64.b64encode(b"short").decode()}, "exactly 32 bytes, got 5"),
        ({"STRONGROOM_MASTER_KEY": KEY_B64, "STRONGROOM_MASTER_KEY_FILE": "/k"}, "not both"),
        ({"STRONGROOM_MASTER_KEY": KEY_B64, "STRONGROOM_MASTER_KEY_ID": "no spaces"}, "STRONGROOM_MASTER_KEY_ID"),
        ({"STRONGROOM_MASTER_KEY": KEY_B64, "STRONGROOM_MASTER_KEYS_RETIRED": "nocolon"}, "<id>:<base64>"),
    ],
)
def test_bad_master_key_settings_name_the_problem(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        MasterKeyConfig.from_env(env)


def test_key_id_defaults_to_a_fingerprint_and_can_be_set() -> None:
    default = MasterKeyring.load(MasterKeyConfig.from_env({"STRONGROOM_MASTER_KEY": KEY_B64}))
    assert default.current.key_id == fingerprint(KEY) and default.current.key_id.startswith("fp-")
    assert KEY.hex()[:16] not in default.current.key_id
    named = MasterKeyring.load(
        MasterKeyConfig.from_env({"STRONGROOM_MASTER_KEY": KEY_B64, "STRONGROOM_MASTER_KEY_ID": "2026-11"})
    )
    assert named.current.key_id == "2026-11"
    assert "AAEC" not in repr(MasterKeyConfig.from_env({"STRONGROOM_MASTER_KEY": KEY_B64}))  # no key in reprs


def test_key_file_is_created_0600_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "master.key"
    config = MasterKeyConfig.from_env({"STRONGROOM_MASTER_KEY_FILE": str(path)})
    first = MasterKeyring.load(config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.b64decode(path.read_text()) == first.current.key
    assert MasterKeyring.load(config).current == first.current
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temporary file left


def test_key_file_readable_by_others_or_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(KEY_B64 + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(SettingsError, match="accessible by group or others"):
        read_or_create_key_file(path)
    os.chmod(path, 0o600)
    assert read_or_create_key_file(path) == KEY
    path.write_text("garbage")
    with pytest.raises(SettingsError, match="master key in"):
        read_or_create_key_file(path)


async def _store_with_accounts(*accounts: str) -> InMemoryGatewayStore:
    store = InMemoryGatewayStore()
    async with store.transaction() as tx:
        for account_id in accounts:
            await tx.ensure_account(Account(account_id, os.urandom(32), 1))
    return store


async def test_concurrent_first_use_by_two_replicas_agrees_on_one_data_key() -> None:
    store = await _store_with_accounts("acct-a")
    ring = MasterKeyring(MasterKey("m1", KEY))
    replica_1, replica_2 = AccountKeys(store, ring, FakeClock()), AccountKeys(store, ring, FakeClock())
    keys = await asyncio.gather(*(r.data_key("acct-a") for r in (replica_1, replica_2, replica_1)))
    sealed = keys[0].seal(b"x", b"aad")
    assert all(k.open(sealed, b"aad") == b"x" for k in keys)
    assert len(store.state.data_keys) == 1


async def test_rotation_rewraps_with_the_new_master_key_and_keeps_the_data_key() -> None:
    store = await _store_with_accounts("acct-a")
    old = MasterKeyring(MasterKey("m1", KEY))
    sealed = (await AccountKeys(store, old, FakeClock()).data_key("acct-a")).seal(b"backup", b"aad")

    new_key = os.urandom(32)
    rotated = MasterKeyring.load(
        MasterKeyConfig.from_env(
            {
                "STRONGROOM_MASTER_KEY": base64.b64encode(new_key).decode(),
                "STRONGROOM_MASTER_KEY_ID": "m2",
                "STRONGROOM_MASTER_KEYS_RETIRED": f"m1:{KEY_B64}",
            }
        )
    )
    assert (await AccountKeys(store, rotated, FakeClock()).data_key("acct-a")).open(sealed, b"aad") == b"backup"
    assert store.state.data_keys["acct-a"].master_key_id == "m2"
    # From now on the new master key alone is enough.
    only_new = MasterKeyring(MasterKey("m2", new_key))
    assert (await AccountKeys(store, only_new, FakeClock()).data_key("acct-a")).open(sealed, b"aad") == b"backup"


async def test_unknown_or_wrong_master_key_is_a_clear_error() -> None:
    store = await _store_with_accounts("acct-a")
    await AccountKeys(store, MasterKeyring(MasterKey("m1", KEY)), FakeClock()).data_key("acct-a")
    with pytest.raises(MasterKeyError, match="wrapped by master key 'm1', which is not configured"):
        await AccountKeys(store, MasterKeyring(MasterKey("m2", os.urandom(32))), FakeClock()).data_key("acct-a")
    with pytest.raises(MasterKeyError, match="does not unwrap with the configured master key 'm1'"):
        await AccountKeys(store, MasterKeyring(MasterKey("m1", os.urandom(32))), FakeClock()).data_key("acct-a")


async def test_accounts_get_different_data_keys() -> None:
    store = await _store_with_accounts("acct-a", "acct-b")
    keys = AccountKeys(store, MasterKeyring(MasterKey("m1", KEY)), FakeClock())
    sealed = (await keys.data_key("acct-a")).seal(b"x", b"aad")
    with pytest.raises(ValueError, match="authentication failed"):
        (await keys.data_key("acct-b")).open(sealed, b"aad")
