"""The disaster-recovery records in the bucket, byte for byte (docs/formats/vault-records.md, ADR 0032).

Every record is ``magic (4) | version u8 | body``; the body is a ``strongroom.vault.v1`` message,
sealed with the account's data key for instance and point records (``nonce | AES-256-GCM | tag``,
AAD ``crypto.record_aad``). The key record is not sealed: its data key is wrapped by the master
key exactly as in ``gateway.account_keys``, and the account's chunking secrets inside it are
sealed with that data key.

Pure functions, no I/O.
"""

from __future__ import annotations

import datetime as dt
import secrets

from google.protobuf.message import DecodeError, Message
from strongroom.common.v1 import common_pb2
from strongroom.vault.v1 import vault_pb2
from strongroom_platform.events import from_timestamp, to_timestamp

from strongroom_gateway.crypto import DataKey, DecryptionError, record_aad
from strongroom_gateway.ports import Account, AccountDataKey, Instance, InstanceFilesystem, Point

VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
KEY_MAGIC = b"SRAK"
SECRETS_MAGIC = b"SRAS"
INSTANCE_MAGIC = b"SRIR"
POINT_MAGIC = b"SRPR"

PREFIX = "vault/"
KEYS_PREFIX = "vault/keys/"
INSTANCES_PREFIX = "vault/instances/"
POINTS_PREFIX = "vault/points/"


class VaultFormatError(ValueError):
    """Not a readable vault record: bad magic, unsupported version, undecodable, or it does not authenticate."""


def key_record_key(account_id: str, master_key_id: str) -> str:
    """One object per account and master key: a re-wrap after a rotation is a new object."""
    return f"{KEYS_PREFIX}{account_id}/{master_key_id}"


def keys_of_account(account_id: str) -> str:
    """The prefix holding every key record of the account."""
    return f"{KEYS_PREFIX}{account_id}/"


def instance_record_key(account_id: str, instance_id: str, written_at: dt.datetime) -> str:
    """A new object per change (locked objects cannot be replaced); names sort by time of writing."""
    stamp = written_at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{INSTANCES_PREFIX}{account_id}/{instance_id}/{stamp}-{secrets.token_hex(4)}"


def point_record_key(account_id: str, point_id: str) -> str:
    return f"{POINTS_PREFIX}{account_id}/{point_id}"


def parse_key(key: str, prefix: str, parts: int) -> list[str] | None:
    """The ``parts`` '/'-separated ids after ``prefix`` in an object key; None when it has another shape."""
    if not key.startswith(prefix):
        return None
    ids = key[len(prefix) :].split("/")
    return ids if len(ids) == parts and all(ids) else None


def _frame(magic: bytes, body: bytes) -> bytes:
    return magic + bytes([VERSION]) + body


def _unframe(magic: bytes, data: bytes, what: str) -> tuple[int, memoryview]:
    if len(data) < 5 or data[:4] != magic:
        raise VaultFormatError(f"not a {what} (bad magic)")
    version = data[4]
    if version not in SUPPORTED_VERSIONS:
        raise VaultFormatError(f"unsupported {what} version {version} (this gateway reads 1)")
    return version, memoryview(data)[5:]


def _parse(message: Message, body: bytes, what: str) -> None:
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise VaultFormatError(f"{what} cannot be decoded: {exc}") from None


def _ts(when: dt.datetime | None, out: Message, field: str) -> None:
    if when is not None:
        getattr(out, field).CopyFrom(to_timestamp(when))


# -- key records ------------------------------------------------------------------------------


def encode_key_record(stored: AccountDataKey, account: Account | None, data_key: DataKey, now: dt.datetime) -> bytes:
    """The key record of ``stored`` (the wrapped data key as in the database) and the account's secrets."""
    record = vault_pb2.AccountKeyRecord(
        account_id=stored.account_id, master_key_id=stored.master_key_id, wrapped_key=stored.wrapped_key
    )
    _ts(stored.created_at, record, "created_at")
    _ts(now, record, "written_at")
    if account is not None:
        plain = vault_pb2.AccountSecrets(chunk_id_key=account.chunk_id_key, chunker_seed=account.chunker_seed)
        aad = record_aad(SECRETS_MAGIC, VERSION, stored.account_id)
        record.sealed_secrets = data_key.seal(plain.SerializeToString(), aad)
    return _frame(KEY_MAGIC, record.SerializeToString())


def decode_key_record(data: bytes) -> vault_pb2.AccountKeyRecord:
    """The record (its wrapped key still wrapped); VaultFormatError when it is not one."""
    _, body = _unframe(KEY_MAGIC, data, "key record")
    record = vault_pb2.AccountKeyRecord()
    _parse(record, bytes(body), "key record")
    if not record.account_id or not record.master_key_id or len(record.wrapped_key) != 60:
        raise VaultFormatError("key record without account, master key id or a 60-byte wrapped key")
    return record


def key_row(record: vault_pb2.AccountKeyRecord) -> AccountDataKey:
    """The ``gateway.account_keys`` row a key record stands for."""
    return AccountDataKey(
        record.account_id, record.master_key_id, bytes(record.wrapped_key), from_timestamp(record.created_at)
    )


def open_account_secrets(record: vault_pb2.AccountKeyRecord, data_key: DataKey) -> Account | None:
    """The account's chunking secrets; None when the record has none; VaultFormatError when they do not open."""
    if not record.sealed_secrets:
        return None
    try:
        plain = data_key.open(record.sealed_secrets, record_aad(SECRETS_MAGIC, VERSION, record.account_id))
    except DecryptionError as exc:
        raise VaultFormatError(f"the secrets of account {record.account_id!r}: {exc}") from None
    secrets_ = vault_pb2.AccountSecrets()
    _parse(secrets_, plain, "account secrets")
    if len(secrets_.chunk_id_key) != 32:
        raise VaultFormatError(f"the chunk-id key of account {record.account_id!r} is not 32 bytes")
    return Account(record.account_id, bytes(secrets_.chunk_id_key), secrets_.chunker_seed)


# -- sealed records ---------------------------------------------------------------------------


def _seal(magic: bytes, data_key: DataKey, record_id: str, record: Message) -> bytes:
    aad = record_aad(magic, VERSION, data_key.account_id, record_id)
    return _frame(magic, data_key.seal(record.SerializeToString(), aad))


def _open(magic: bytes, data_key: DataKey, record_id: str, data: bytes, what: str) -> bytes:
    version, body = _unframe(magic, data, what)
    try:
        return data_key.open(body, record_aad(magic, version, data_key.account_id, record_id))
    except DecryptionError as exc:
        raise VaultFormatError(f"{what} {record_id!r}: {exc}") from None


def seal_instance_record(
    data_key: DataKey, instance: Instance, filesystems: list[InstanceFilesystem], now: dt.datetime
) -> bytes:
    """The instance record: identity, region, name, host and its recorded filesystems."""
    record = vault_pb2.InstanceRecord(
        instance_id=instance.instance_id,
        account_id=instance.account_id,
        region=instance.region,
        name=instance.name,
        hostname=instance.hostname,
    )
    _ts(instance.enrolled_at, record, "enrolled_at")
    _ts(now, record, "written_at")
    for fs in filesystems:
        recorded = record.filesystems.add(
            filesystem=common_pb2.Filesystem.FromString(fs.filesystem), approved=fs.approved
        )
        _ts(fs.first_seen_at, recorded, "first_seen_at")
        _ts(fs.approved_at, recorded, "approved_at")
    return _seal(INSTANCE_MAGIC, data_key, instance.instance_id, record)


def open_instance_record(data_key: DataKey, instance_id: str, data: bytes) -> vault_pb2.InstanceRecord:
    record = vault_pb2.InstanceRecord()
    _parse(record, _open(INSTANCE_MAGIC, data_key, instance_id, data, "instance record"), "instance record")
    if record.instance_id != instance_id or record.account_id != data_key.account_id:
        raise VaultFormatError(f"instance record {instance_id!r} names another instance or account")
    return record


def seal_point_record(data_key: DataKey, point: Point, version_created_at: dt.datetime) -> bytes:
    """The point record: every fact of ``gateway.points`` the manifest object does not carry."""
    record = vault_pb2.PointRecord(
        point_id=point.point_id,
        account_id=point.account_id,
        instance_id=point.instance_id,
        job_id=point.job_id,
        version_id=point.version_id,
        filesystem=common_pb2.Filesystem.FromString(point.filesystem),
        manifest_key=point.manifest_key,
        manifest_version_id=point.manifest_version_id or "",
        file_count=point.file_count,
        total_bytes=point.total_bytes,
    )
    _ts(version_created_at, record, "version_created_at")
    _ts(point.created_at, record, "created_at")
    _ts(point.retain_until, record, "retain_until")
    return _seal(POINT_MAGIC, data_key, point.point_id, record)


def open_point_record(data_key: DataKey, point_id: str, data: bytes) -> vault_pb2.PointRecord:
    record = vault_pb2.PointRecord()
    _parse(record, _open(POINT_MAGIC, data_key, point_id, data, "point record"), "point record")
    if record.point_id != point_id or record.account_id != data_key.account_id:
        raise VaultFormatError(f"point record {point_id!r} names another point or account")
    return record


def point_row(record: vault_pb2.PointRecord) -> Point:
    """The ``gateway.points`` row a point record stands for."""
    return Point(
        point_id=record.point_id,
        account_id=record.account_id,
        instance_id=record.instance_id,
        job_id=record.job_id,
        version_id=record.version_id,
        mount_point=record.filesystem.mount_point,
        filesystem=record.filesystem.SerializeToString(),
        manifest_key=record.manifest_key,
        file_count=record.file_count,
        total_bytes=record.total_bytes,
        created_at=from_timestamp(record.created_at),
        retain_until=from_timestamp(record.retain_until),
        manifest_version_id=record.manifest_version_id or None,
    )
