"""Master key configuration, the key file of standalone mode, data-key wrapping and master key rotation."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from strongroom.events.v1 import events_pb2
from strongroom_gateway import vault_format
from strongroom_gateway.crypto import DataKey
from strongroom_gateway.keys import (
    AccountKeys,
    DataKeyMissing,
    MasterKey,
    MasterKeyConfig,
    MasterKeyError,
    MasterKeyring,
    fingerprint,
    read_or_create_key_file,
)
from strongroom_gateway.ports import Account
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform import events
from strongroom_platform.settings import SettingsError
from strongroom_platform.testing import FakeClock, InMemoryObjectStore

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
    objects = InMemoryObjectStore()
    ring = MasterKeyring(MasterKey("m1", KEY))
    replica_1, replica_2 = (
        AccountKeys(store, ring, FakeClock(), objects=objects),
        AccountKeys(store, ring, FakeClock(), objects=objects),
    )
    keys = await asyncio.gather(*(r.data_key("acct-a") for r in (replica_1, replica_2, replica_1)))
    sealed = keys[0].seal(b"x", b"aad")
    assert all(k.open(sealed, b"aad") == b"x" for k in keys)
    assert len(store.state.data_keys) == 1


async def test_rotation_rewraps_with_the_new_master_key_and_keeps_the_data_key() -> None:
    store = await _store_with_accounts("acct-a")
    objects = InMemoryObjectStore()
    old = MasterKeyring(MasterKey("m1", KEY))
    sealed = (await AccountKeys(store, old, FakeClock(), objects=objects).data_key("acct-a")).seal(b"backup", b"aad")

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
    assert (await AccountKeys(store, rotated, FakeClock(), objects=objects).data_key("acct-a")).open(
        sealed, b"aad"
    ) == b"backup"
    assert store.state.data_keys["acct-a"].master_key_id == "m2"
    # From now on the new master key alone is enough.
    only_new = MasterKeyring(MasterKey("m2", new_key))
    assert (await AccountKeys(store, only_new, FakeClock(), objects=objects).data_key("acct-a")).open(
        sealed, b"aad"
    ) == b"backup"


async def test_unknown_or_wrong_master_key_is_a_clear_error() -> None:
    store = await _store_with_accounts("acct-a")
    objects = InMemoryObjectStore()
    await AccountKeys(store, MasterKeyring(MasterKey("m1", KEY)), FakeClock(), objects=objects).data_key("acct-a")
    with pytest.raises(MasterKeyError, match="wrapped by master key 'm1', which is not configured"):
        await AccountKeys(store, MasterKeyring(MasterKey("m2", os.urandom(32))), FakeClock(), objects=objects).data_key(
            "acct-a"
        )
    with pytest.raises(MasterKeyError, match="does not unwrap with the configured master key 'm1'"):
        await AccountKeys(store, MasterKeyring(MasterKey("m1", os.urandom(32))), FakeClock(), objects=objects).data_key(
            "acct-a"
        )


async def test_accounts_get_different_data_keys() -> None:
    store = await _store_with_accounts("acct-a", "acct-b")
    objects = InMemoryObjectStore()
    keys = AccountKeys(store, MasterKeyring(MasterKey("m1", KEY)), FakeClock(), objects=objects)
    sealed = (await keys.data_key("acct-a")).seal(b"x", b"aad")
    with pytest.raises(ValueError, match="authentication failed"):
        (await keys.data_key("acct-b")).open(sealed, b"aad")


# -- keys in the vault (ADR 0032) ---------------------------------------------------------------


async def test_the_first_use_writes_a_locked_key_record_to_the_bucket() -> None:
    store = await _store_with_accounts("acct-a")
    objects = InMemoryObjectStore()
    clock = FakeClock()
    ring = MasterKeyring(MasterKey("m1", KEY))
    key = await AccountKeys(store, ring, clock, objects=objects).data_key("acct-a")

    object_key = vault_format.key_record_key("acct-a", "m1")
    assert [k async for k in objects.list("vault/")] == [object_key]
    record = vault_format.decode_key_record(await objects.get(object_key))
    row = store.state.data_keys["acct-a"]
    assert vault_format.key_row(record) == row
    assert ring.unwrap("acct-a", record.master_key_id, record.wrapped_key)  # the master key opens it
    secrets_ = vault_format.open_account_secrets(record, key)
    assert secrets_ == store.state.accounts["acct-a"]
    assert (await objects.stat(object_key)).retain_until == clock.now() + dt.timedelta(days=31)


async def test_a_key_deleted_from_the_database_is_not_minted_again_and_raises_an_alert() -> None:
    objects = InMemoryObjectStore()
    ring = MasterKeyring(MasterKey("m1", KEY))
    sealed = (
        await AccountKeys(await _store_with_accounts("acct-a"), ring, FakeClock(), objects=objects).data_key("acct-a")
    ).seal(b"backup", b"aad")

    # The attacker: DELETE FROM gateway.account_keys (here: a database without the row), a gateway
    # restart, and a plain S3 DELETE (delete marker) on the key record.
    objects.add_delete_marker(vault_format.key_record_key("acct-a", "m1"))
    emptied = await _store_with_accounts("acct-a")
    with pytest.raises(DataKeyMissing, match="no new key is generated"):
        await AccountKeys(emptied, ring, FakeClock(), objects=objects).data_key("acct-a")
    assert "acct-a" not in emptied.state.data_keys
    [alert] = emptied.events(events.ALERT_RAISED)
    assert alert.kind == events_pb2.ALERT_KIND_DATA_KEY_MISSING
    assert alert.record_key == b"acct-a" and "rebuild --from-bucket" in alert.reason
    # The locked record still holds the key: the account's data opens with it.
    [version] = [v async for v in objects.list_versions("vault/keys/acct-a/")]
    record = vault_format.decode_key_record(await objects.get(version.key, version_id=version.version_id))
    restored = ring.unwrap("acct-a", record.master_key_id, record.wrapped_key)
    assert DataKey("acct-a", restored).open(sealed, b"aad") == b"backup"


async def test_rotation_writes_the_rewrapped_key_to_the_bucket_too() -> None:
    store = await _store_with_accounts("acct-a")
    objects = InMemoryObjectStore()
    await AccountKeys(store, MasterKeyring(MasterKey("m1", KEY)), FakeClock(), objects=objects).data_key("acct-a")
    rotated = MasterKeyring(MasterKey("m2", os.urandom(32)), [MasterKey("m1", KEY)])
    await AccountKeys(store, rotated, FakeClock(), objects=objects).data_key("acct-a")
    assert [k async for k in objects.list("vault/keys/")] == ["vault/keys/acct-a/m1", "vault/keys/acct-a/m2"]
    record = vault_format.decode_key_record(await objects.get("vault/keys/acct-a/m2"))
    assert vault_format.key_row(record) == store.state.data_keys["acct-a"]


async def test_keep_locked_extends_the_key_record_past_every_object_sealed_with_it() -> None:
    store = await _store_with_accounts("acct-a")
    objects = InMemoryObjectStore()
    clock = FakeClock()
    keys = AccountKeys(store, MasterKeyring(MasterKey("m1", KEY)), clock, objects=objects)
    await keys.data_key("acct-a")
    object_key = vault_format.key_record_key("acct-a", "m1")
    first = (await objects.stat(object_key)).retain_until
    assert first is not None
    await keys.keep_locked("acct-a", first - dt.timedelta(hours=1))
    assert (await objects.stat(object_key)).retain_until == first  # already long enough: no call
    later = first + dt.timedelta(days=3)
    await keys.keep_locked("acct-a", later)
    assert (await objects.stat(object_key)).retain_until == later + dt.timedelta(days=1)
