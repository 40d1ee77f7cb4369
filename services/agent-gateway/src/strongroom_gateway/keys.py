"""Master keys from configuration and per-account data keys (ADR 0015).

- The **master key** (32 bytes) comes from ``STRONGROOM_MASTER_KEY`` (base64),
  or from the file named by ``STRONGROOM_MASTER_KEY_FILE`` (created with mode
  0600 when missing: standalone mode). It only wraps data keys; nothing in the
  object store is encrypted with it directly.
- Its **id** is ``STRONGROOM_MASTER_KEY_ID``, by default a fingerprint of the key
  (``fp-`` + 16 hex digits of a domain-separated SHA-256), so a wrong key is
  reported as such instead of as corrupt data.
- ``STRONGROOM_MASTER_KEYS_RETIRED`` (``id:base64,id:base64``) lists previous
  master keys: data keys they wrapped are unwrapped with them and re-wrapped with
  the current key on first use (rotation without re-encrypting any object).
- Every account gets a random 256-bit **data key** the first time the gateway
  encrypts or decrypts for it; the database stores it only wrapped
  (AES-256-GCM, AAD = account id and master key id, crypto.wrap_aad), together
  with the id of the master key that wrapped it.
- **Keys in the vault** (ADR 0032): every wrapped data key is also an Object-Locked record in the
  bucket (``vault/keys/<account>/<master key id>``, docs/formats/vault-records.md), written before
  anything is encrypted with the key, and kept locked at least as long as every object sealed with
  it. An account with no key in the database but one in the bucket gets **no new key**: the
  gateway refuses (``DataKeyMissing``) and raises an ``alert-raised`` event, since a new key would
  silently make every stored backup of the account unreadable.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import Clock
from strongroom_platform.events import ALERT_RAISED, new_meta
from strongroom_platform.objectstore import ObjectLocked, ObjectNotFound, ObjectStore
from strongroom_platform.settings import SettingsError

from strongroom_gateway import vault_format
from strongroom_gateway.crypto import KEY_SIZE, DataKey, DecryptionError, open_sealed, seal, wrap_aad
from strongroom_gateway.errors import FailedPrecondition
from strongroom_gateway.ports import Account, AccountDataKey, GatewayStore

log = logging.getLogger(__name__)

# New vault records are locked like packs (ingest.RETENTION + LOCK_MARGIN); a lock that must be
# lengthened is moved this much past what is needed, so it is extended at most about once a day.
VAULT_LOCK = dt.timedelta(days=31)
VAULT_LOCK_STEP = dt.timedelta(days=1)
_PRODUCER = "agent-gateway"

_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_GENERATE_HINT = 'generate one with: python -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())"'


class MasterKeyError(RuntimeError):
    """A data key cannot be unwrapped (unknown master key id, or the configured key is not the one that wrapped it)."""


def decode_key(text: str, what: str) -> bytes:
    """The 32 bytes of a base64 key; SettingsError naming ``what`` otherwise."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(f"{what} is not valid base64; {_GENERATE_HINT}") from None
    if len(key) != KEY_SIZE:
        raise SettingsError(f"{what} must be base64 of exactly {KEY_SIZE} bytes, got {len(key)}; {_GENERATE_HINT}")
    return key


def fingerprint(key: bytes) -> str:
    """The default id of a master key: stable, and reveals nothing usable about the key."""
    return "fp-" + hashlib.sha256(b"strongroom master key id\x00" + key).hexdigest()[:16]


def _check_id(key_id: str, what: str) -> str:
    if not _KEY_ID.fullmatch(key_id):
        raise SettingsError(f"{what} must be 1-64 characters of A-Z a-z 0-9 _ . -, got {key_id!r}")
    return key_id


@dataclass(frozen=True, slots=True)
class MasterKeyConfig:
    """The master key settings, as read from the environment (no file I/O here).

    Exactly one of ``key`` and ``key_file`` is set.
    """

    key: bytes | None = field(default=None, repr=False)
    key_id: str | None = None
    key_file: str | None = None
    retired: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> MasterKeyConfig:
        raw = environ.get("STRONGROOM_MASTER_KEY", "")
        key_file = environ.get("STRONGROOM_MASTER_KEY_FILE", "")
        if raw and key_file:
            raise SettingsError("set STRONGROOM_MASTER_KEY or STRONGROOM_MASTER_KEY_FILE, not both")
        if not raw and not key_file:
            raise SettingsError(
                "STRONGROOM_MASTER_KEY is required: base64 of 32 random bytes that wraps every account's data key "
                f"(keep it safe: without it no backup can be read); {_GENERATE_HINT}. "
                "For a single-machine setup, STRONGROOM_MASTER_KEY_FILE=<path> instead creates the key in that file "
                "(mode 0600) when it does not exist"
            )
        key_id = environ.get("STRONGROOM_MASTER_KEY_ID") or None
        if key_id is not None:
            _check_id(key_id, "STRONGROOM_MASTER_KEY_ID")
        retired: list[tuple[str, bytes]] = []
        for item in filter(None, (s.strip() for s in environ.get("STRONGROOM_MASTER_KEYS_RETIRED", "").split(","))):
            old_id, sep, old_key = item.partition(":")
            if not sep:
                raise SettingsError("STRONGROOM_MASTER_KEYS_RETIRED must be a comma-separated list of <id>:<base64>")
            retired.append(
                (
                    _check_id(old_id, "a STRONGROOM_MASTER_KEYS_RETIRED id"),
                    decode_key(old_key, f"retired master key {old_id!r}"),
                )
            )
        return cls(
            key=decode_key(raw, "STRONGROOM_MASTER_KEY") if raw else None,
            key_id=key_id,
            key_file=key_file or None,
            retired=tuple(retired),
        )


def read_or_create_key_file(path: Path) -> bytes:
    """The key stored in ``path`` (one base64 line); generated and written with mode 0600 if missing.

    Creation is atomic (temporary file, fsync, hard link), so concurrent starts
    agree on one key. An existing file that group or others can access is refused.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode() + "\n")
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise SettingsError(f"master key file {path} is not a regular file")
    if mode & 0o077:
        raise SettingsError(
            f"master key file {path} is accessible by group or others (mode {mode & 0o777:o}); chmod 600 it"
        )
    return decode_key(path.read_text(), f"the master key in {path}")


@dataclass(frozen=True, slots=True)
class MasterKey:
    key_id: str
    key: bytes = field(repr=False)


class MasterKeyring:
    """The current master key (wraps) and retired ones (only unwrap)."""

    def __init__(self, current: MasterKey, retired: Sequence[MasterKey] = ()) -> None:
        self.current = current
        self._keys = {k.key_id: AESGCM(k.key) for k in retired}
        if current.key_id in self._keys:
            raise SettingsError(f"master key id {current.key_id!r} is both current and retired")
        self._keys[current.key_id] = AESGCM(current.key)

    @classmethod
    def load(cls, config: MasterKeyConfig) -> MasterKeyring:
        """Build from the settings; reads (or creates) the key file in key-file mode."""
        if config.key is not None:
            key = config.key
        elif config.key_file is not None:
            key = read_or_create_key_file(Path(config.key_file))
        else:
            raise SettingsError("no master key configured (STRONGROOM_MASTER_KEY or STRONGROOM_MASTER_KEY_FILE)")
        current = MasterKey(config.key_id or fingerprint(key), key)
        return cls(current, [MasterKey(i, k) for i, k in config.retired])

    def wrap(self, account_id: str, data_key: bytes) -> tuple[str, bytes]:
        """(master key id, nonce | AES-256-GCM(data key) | tag) under the current master key."""
        key_id = self.current.key_id
        return key_id, seal(self._keys[key_id], data_key, wrap_aad(account_id, key_id))

    def unwrap(self, account_id: str, key_id: str, wrapped: bytes) -> bytes:
        aead = self._keys.get(key_id)
        if aead is None:
            raise MasterKeyError(
                f"the data key of account {account_id!r} is wrapped by master key {key_id!r}, which is not configured "
                f"(current: {self.current.key_id!r}); add it to STRONGROOM_MASTER_KEYS_RETIRED"
            )
        try:
            return open_sealed(aead, wrapped, wrap_aad(account_id, key_id))
        except DecryptionError:
            raise MasterKeyError(
                f"the data key of account {account_id!r} does not unwrap with the configured master key {key_id!r} "
                "(a different key under the same id, or the row was altered)"
            ) from None


class DataKeyMissing(FailedPrecondition):
    """The database has no data key for an account whose key the bucket holds: nothing is minted."""


@dataclass(slots=True)
class _VaultCopy:
    """Where the account's current key record is and how long it is locked."""

    key: str
    version_id: str | None
    locked_until: dt.datetime | None


class AccountKeys:
    """Per-account data keys: created on first use, cached unwrapped in memory, kept in the vault."""

    def __init__(self, store: GatewayStore, keyring: MasterKeyring, clock: Clock, *, objects: ObjectStore) -> None:
        self._store = store
        self._keyring = keyring
        self._clock = clock
        self._objects = objects
        self._cache: dict[str, DataKey] = {}
        self._vault: dict[str, _VaultCopy] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def data_key(self, account_id: str) -> DataKey:
        """The account's data key; generated, wrapped and stored the first time (first writer wins).

        Before it is returned the first time in this process, its key record is in the bucket.
        Raises DataKeyMissing (and raises an alert) instead of generating a key when the bucket
        holds one for the account.
        """
        cached = self._cache.get(account_id)
        if cached is not None:
            return cached
        async with self._locks.setdefault(account_id, asyncio.Lock()):
            cached = self._cache.get(account_id)
            if cached is not None:
                return cached
            async with self._store.transaction() as tx:
                stored = await tx.get_data_key(account_id)
                account = await tx.get_account(account_id)
            if stored is None:
                await self._refuse_if_in_vault(account_id)
                key_id, wrapped = self._keyring.wrap(account_id, secrets.token_bytes(KEY_SIZE))
                async with self._store.transaction() as tx:
                    stored = await tx.ensure_data_key(AccountDataKey(account_id, key_id, wrapped, self._clock.now()))
            raw = self._keyring.unwrap(account_id, stored.master_key_id, stored.wrapped_key)
            if stored.master_key_id != self._keyring.current.key_id:
                await self._rewrap(stored, raw)
                async with self._store.transaction() as tx:
                    stored = await tx.get_data_key(account_id) or stored
            key = DataKey(account_id, raw)
            await self._keep_in_vault(stored, account, key)
            self._cache[account_id] = key
            return key

    async def keep_locked(self, account_id: str, until: dt.datetime) -> None:
        """Keep the account's key record locked at least until ``until`` (an object sealed with the key
        is about to be locked that long). Extends the lock past ``until`` by a day when it must move."""
        await self.data_key(account_id)
        copy = self._vault[account_id]
        if copy.locked_until is not None and copy.locked_until >= until:
            return
        target = until + VAULT_LOCK_STEP
        await self._objects.extend_retention(copy.key, target, version_id=copy.version_id)
        copy.locked_until = target

    async def _refuse_if_in_vault(self, account_id: str) -> None:
        async for _ in self._objects.list_versions(vault_format.keys_of_account(account_id)):
            break
        else:
            return
        log.error(
            "account %s has no data key in the database but one in the bucket: refusing to generate a new key",
            account_id,
        )
        alert = events_pb2.AlertRaised(
            meta=new_meta(_PRODUCER, self._clock.now()),
            kind=events_pb2.ALERT_KIND_DATA_KEY_MISSING,
            source=_PRODUCER,
            reason=(
                f"account {account_id}: the data key is missing from the gateway database but held in the bucket;"
                " no new key was generated. Restore gateway.account_keys from the database backup or run"
                " strongroom-admin rebuild --from-bucket"
            ),
            record_key=account_id.encode(),
        )
        async with self._store.transaction() as tx:
            await tx.enqueue(ALERT_RAISED, account_id, alert)
        raise DataKeyMissing(
            f"the data key of account {account_id!r} is missing from the gateway's database but the bucket holds one:"
            " no new key is generated (it would make the account's backups unreadable); an operator must restore the"
            " key (strongroom-admin rebuild --from-bucket, or the database backup)"
        )

    async def _keep_in_vault(self, stored: AccountDataKey, account: Account | None, key: DataKey) -> None:
        """Make sure the bucket holds the key record of ``stored``; remember where and how long it is locked."""
        object_key = vault_format.key_record_key(stored.account_id, stored.master_key_id)
        try:
            current = vault_format.decode_key_record(await self._objects.get(object_key))
            held = vault_format.key_row(current)
            if (held.account_id, held.master_key_id, held.wrapped_key) == (
                stored.account_id,
                stored.master_key_id,
                stored.wrapped_key,
            ):
                info = await self._objects.stat(object_key)
                self._vault[stored.account_id] = _VaultCopy(object_key, None, info.retain_until)
                return
            log.warning("the key record %s in the bucket does not match the database; writing it again", object_key)
        except (ObjectNotFound, vault_format.VaultFormatError):
            pass
        now = self._clock.now()
        data = vault_format.encode_key_record(stored, account, key, now)
        try:
            version_id = await self._objects.put(object_key, data, retain_until=now + VAULT_LOCK)
        except ObjectLocked:
            # A store that refuses a new version over a locked one (not S3): the object there is
            # locked anyway, and a rebuild reads every version of the key.
            log.error("the key record %s is locked with other content; not replaced", object_key)
            self._vault[stored.account_id] = _VaultCopy(object_key, None, None)
            return
        self._vault[stored.account_id] = _VaultCopy(object_key, version_id, now + VAULT_LOCK)

    async def _rewrap(self, stored: AccountDataKey, raw: bytes) -> None:
        key_id, wrapped = self._keyring.wrap(stored.account_id, raw)
        async with self._store.transaction() as tx:
            await tx.rewrap_data_key(
                stored.account_id,
                stored.master_key_id,
                AccountDataKey(stored.account_id, key_id, wrapped, stored.created_at),
            )
