"""Sealed manifests: the encryption envelope around a point manifest (docs/formats/sealed-manifest.md).

The manifest itself (``SRMF``, ``strongroom_platform.manifest``) lists file names,
so the gateway stores it only inside this envelope:

    magic b"SRME" | envelope version u8 (= 1) | nonce (12) | AES-256-GCM(manifest bytes) | tag (16)

AAD = ``SRME | version | account id | point id`` (crypto.manifest_aad): a
sealed manifest opens only as the manifest of the point it was written for.
Objects that start with ``SRMF`` are manifests written before encryption at
rest (plaintext) and are returned unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from strongroom.common.v1 import common_pb2
from strongroom_platform.manifest import MAGIC as MANIFEST_MAGIC
from strongroom_platform.manifest import (
    SEGMENTED_VERSION,
    ManifestFormatError,
    manifest_records,
    manifest_version,
    record_path,
    selected,
)
from strongroom_platform.manifest import under as under  # re-exported: the restore filter's rule lives in the platform
from strongroom_platform.objectstore import ObjectStore

from strongroom_gateway import segments
from strongroom_gateway.crypto import DataKey, DecryptionError, manifest_aad
from strongroom_gateway.keys import AccountKeys
from strongroom_gateway.ports import GatewayStore, Point

SEALED_MAGIC = b"SRME"
SEALED_VERSION = 1
SUPPORTED_SEALED_VERSIONS = frozenset({1})
_HEADER_SIZE = 5


def seal_manifest(key: DataKey, point_id: str, manifest: bytes) -> bytes:
    """The stored form of ``manifest`` (encoded SRMF bytes) for ``point_id`` of ``key``'s account. Pure CPU."""
    aad = manifest_aad(key.account_id, SEALED_VERSION, point_id)
    return SEALED_MAGIC + bytes([SEALED_VERSION]) + key.seal(manifest, aad)


def open_manifest(key: DataKey, point_id: str, stored: bytes) -> bytes:
    """The manifest bytes (SRMF) of a stored manifest object; ManifestFormatError when unreadable.

    Refuses unknown magics and envelope versions, and a sealed manifest that
    does not authenticate as ``point_id`` of ``key``'s account.
    """
    magic = stored[:4]
    if magic == MANIFEST_MAGIC:
        return stored  # written before encryption at rest
    if magic != SEALED_MAGIC:
        raise ManifestFormatError("not a Strongroom manifest (bad magic)")
    version = stored[4] if len(stored) >= _HEADER_SIZE else None
    if version not in SUPPORTED_SEALED_VERSIONS:
        raise ManifestFormatError(
            f"unsupported sealed manifest version {version} (this gateway reads 1; upgrade it to read newer manifests)"
        )
    try:
        return key.open(memoryview(stored)[_HEADER_SIZE:], manifest_aad(key.account_id, version, point_id))
    except DecryptionError as exc:
        raise ManifestFormatError(f"sealed manifest of point {point_id}: {exc}") from None


async def seal(keys: AccountKeys, *, account_id: str, point_id: str, manifest: bytes) -> bytes:
    """The sealed object to store for a point's manifest (encryption runs in a worker thread)."""
    key = await keys.data_key(account_id)
    return await asyncio.to_thread(seal_manifest, key, point_id, manifest)


async def read_point_manifest(
    object_store: ObjectStore, keys: AccountKeys, point: Point, *, store: GatewayStore
) -> bytes:
    """The manifest bytes (SRMF version 1) of ``point``, read from the object store and opened in a worker thread.

    Reads the version recorded at commit (ADR 0025): a delete marker or a later object on the key
    changes nothing; points recorded before version ids were read the latest version. A version 2
    manifest (segments, ADR 0065) is expanded into the version 1 record stream it stores: its
    segment blobs are found through ``store``'s chunk table, read
    from their packs and verified. Raises ObjectNotFound when the object (version) is missing,
    ManifestFormatError when it (or one of its segments) is unreadable or of an unknown version.
    """
    data, _ = await read_point_blobs(object_store, keys, point, store=store)
    return data


async def read_point_blobs(
    object_store: ObjectStore, keys: AccountKeys, point: Point, *, store: GatewayStore
) -> tuple[bytes, list[bytes]]:
    """``read_point_manifest``'s bytes, and the ids of the segment blobs the point's manifest is stored in
    (none for version 1): the blobs besides its entries' chunks that the point needs (GC, repack)."""
    data = await read_stored_manifest(object_store, keys, point)
    return await expand(object_store, keys, point, data, store=store)


async def read_stored_manifest(object_store: ObjectStore, keys: AccountKeys, point: Point) -> bytes:
    """The point's manifest object opened, as stored: version 1, or a version 2 segment list (not expanded)."""
    stored = await object_store.get(point.manifest_key, version_id=point.manifest_version_id)
    key = await keys.data_key(point.account_id)
    data = await asyncio.to_thread(open_manifest, key, point.point_id, stored)
    manifest_version(data)  # refuses unknown versions here, whatever the caller does next
    return data


async def expand(
    object_store: ObjectStore, keys: AccountKeys, point: Point, data: bytes, *, store: GatewayStore
) -> tuple[bytes, list[bytes]]:
    """``read_point_blobs`` of the already opened manifest ``data`` of ``point``."""
    if manifest_version(data) != SEGMENTED_VERSION:
        return data, []
    key = await keys.data_key(point.account_id)
    return await segments.expand_manifest(store, object_store, key, point.account_id, data)


def filter_entries(data: bytes, include: Sequence[str], exclude: Sequence[str]) -> list[common_pb2.FileEntry]:
    """Decode a manifest and keep the entries below an include path (all when none) and below no exclude path.

    With include paths only their entries are parsed: a record's path is read
    from its bytes (``record_path``) and the others are skipped unparsed. The
    manifest is sorted by path bytes, so everything below ``p`` lies in
    ``[p, p + "0")`` ("0" follows "/"): decoding stops after the last include
    path's range. A single-file restore of a large point read and parsed every
    entry before (~0.6 s for 80k entries).
    """
    if not include or "" in include:
        include = ()
    starts = [p.encode() for p in include]
    stop = max((p + b"0" for p in starts), default=None)
    kept: list[common_pb2.FileEntry] = []
    for record in manifest_records(data):
        path = record_path(record)
        if path is not None and starts:
            if stop is not None and path >= stop:
                break
            if not any(path == p or path.startswith(p + b"/") for p in starts):
                continue
        entry = common_pb2.FileEntry.FromString(record)
        if selected(entry.path, include, exclude):
            kept.append(entry)
    return kept
