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
import contextlib
import functools
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Sequence
from typing import TypeVar, cast

from strongroom.common.v1 import common_pb2
from strongroom_platform.manifest import MAGIC as MANIFEST_MAGIC
from strongroom_platform.manifest import (
    SEGMENTED_VERSION,
    ManifestFormatError,
    SegmentRef,
    decode_segment_list,
    manifest_records,
    manifest_version,
    record_path,
    segment_records,
    selected,
)
from strongroom_platform.manifest import under as under  # re-exported: the restore filter's rule lives in the platform
from strongroom_platform.objectstore import ObjectStore

from strongroom_gateway import segments
from strongroom_gateway.crypto import DataKey, DecryptionError, manifest_aad
from strongroom_gateway.keys import AccountKeys
from strongroom_gateway.ports import GatewayStore, Point

_T = TypeVar("_T")

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
    return list(filter_records(manifest_records(data), include, exclude))


def filter_records(
    records: Iterable[bytes], include: Sequence[str], exclude: Sequence[str]
) -> Iterator[common_pb2.FileEntry]:
    """``filter_entries`` of a record stream in path order, parsed as it is pulled (pure CPU)."""
    if not include or "" in include:
        include = ()
    starts = [p.encode() for p in include]
    stop = _stop(starts)
    for record in records:
        path = record_path(record)
        if path is not None and starts:
            if stop is not None and path >= stop:
                return
            if not any(path == p or path.startswith(p + b"/") for p in starts):
                continue
        entry = common_pb2.FileEntry.FromString(record)
        if selected(entry.path, include, exclude):
            yield entry


def _stop(starts: Sequence[bytes]) -> bytes | None:
    """The first path after every include path's range (None: no include paths, read to the end)."""
    return max((p + b"0" for p in starts), default=None)


def batched(entries: Iterable[common_pb2.FileEntry], size: int) -> Iterator[list[common_pb2.FileEntry]]:
    """``entries`` in lists of ``size`` (the last one shorter, none empty)."""
    batch: list[common_pb2.FileEntry] = []
    for entry in entries:
        batch.append(entry)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def stream_point_entries(
    object_store: ObjectStore,
    keys: AccountKeys,
    point: Point,
    include: Sequence[str],
    exclude: Sequence[str],
    *,
    store: GatewayStore,
    batch: int,
) -> AsyncGenerator[list[common_pb2.FileEntry]]:
    """``filter_entries`` of ``point``'s manifest in lists of ``batch`` entries, each sent on as soon as it is parsed.

    The whole manifest was read, expanded and filtered before its first entry went out (~2 s on the
    benchmark tree while the agent waited, ADR 0067). A version 1 manifest is read and opened (its
    AES-GCM tag authenticates all of it before a record is parsed), then parsed and filtered a
    batch at a time in a worker thread, the next batch while the previous one is sent. A version 2
    manifest's segments are read in groups (``SEGMENT_GROUPS``: a small first one, so the first
    entries go out early), verified against their ids and list entries, and their records filtered
    straight from the segment contents (no version 1 stream is rebuilt); with include paths only the
    segments whose path range meets one are read. Memory: the stored manifest, one group of
    segments and two batches of entries. Errors as ``read_point_manifest`` and ``filter_entries``;
    a record that fails to parse is found when its batch is, after the batches before it were sent.
    """
    data = await read_stored_manifest(object_store, keys, point)
    if manifest_version(data) != SEGMENTED_VERSION:
        parsed = _pulled_in_thread(batched(filter_records(manifest_records(data), include, exclude), batch))
        async with contextlib.aclosing(parsed):
            async for entries in parsed:
                yield entries
        return
    refs = await asyncio.to_thread(decode_segment_list, data)
    del data
    starts = [] if not include or "" in include else [p.encode() for p in include]
    refs = _segments_in_range(refs, starts)
    key = await keys.data_key(point.account_id)
    records = _segment_records(store, object_store, key, point.account_id, refs)
    groups = _parsed_groups(records, include, exclude, batch)
    async with contextlib.aclosing(records), contextlib.aclosing(groups):
        async for entries in groups:
            yield entries


# Segments read per group of a version 2 manifest: the first group small so the first entries go out
# early (~16 records a segment), then larger ones (fewer chunk-table queries and ranged reads).
SEGMENT_GROUPS = (64, 256, 1024)


def _segments_in_range(refs: Sequence[SegmentRef], starts: Sequence[bytes]) -> list[SegmentRef]:
    """The segments whose path range (from their first path to the next segment's) meets an include
    path's range ``[p, p + "0")``; all of them without include paths."""
    if not starts:
        return list(refs)
    kept: list[SegmentRef] = []
    for n, ref in enumerate(refs):
        after = refs[n + 1].first_path if n + 1 < len(refs) else None
        if any(ref.first_path < p + b"0" and (after is None or after > p) for p in starts):
            kept.append(ref)
    return kept


async def _segment_records(
    store: GatewayStore,
    object_store: ObjectStore,
    key: DataKey,
    account_id: str,
    refs: Sequence[SegmentRef],
) -> AsyncGenerator[list[list[bytes]]]:
    """The records of ``refs``'s segments, a group of segments at a time (the next group read while the
    caller handles this one), each checked against its list entry and the path order across segments."""
    groups: list[Sequence[SegmentRef]] = []
    position = 0
    for n in itertools.count():
        if position >= len(refs):
            break
        size = SEGMENT_GROUPS[min(n, len(SEGMENT_GROUPS) - 1)]
        groups.append(refs[position : position + size])
        position += size

    async def read(group: Sequence[SegmentRef]) -> list[list[bytes]]:
        contents = await segments.read_segments(store, object_store, key, account_id, [r.segment_id for r in group])
        return await asyncio.to_thread(functools.partial(_checked, group, contents))

    previous_last: bytes | None = None
    ahead = asyncio.ensure_future(read(groups[0])) if groups else None
    try:
        for n, group in enumerate(groups):
            assert ahead is not None
            records = await ahead
            ahead = asyncio.ensure_future(read(groups[n + 1])) if n + 1 < len(groups) else None
            for ref, segment in zip(group, records, strict=True):
                if previous_last is not None and ref.first_path <= previous_last:
                    raise ManifestFormatError(f"segment {ref.segment_id.hex()} is out of path order")
                previous_last = _path_of(segment[-1])
            yield records
    finally:
        if ahead is not None:
            ahead.cancel()
            await asyncio.gather(ahead, return_exceptions=True)


def _checked(group: Sequence[SegmentRef], contents: dict[bytes, bytes]) -> list[list[bytes]]:
    return [segment_records(r, contents[r.segment_id]) for r in group]


def _path_of(record: bytes) -> bytes:
    path = record_path(record)
    return path if path is not None else common_pb2.FileEntry.FromString(record).path.encode()


async def _parsed_groups(
    groups: AsyncIterator[list[list[bytes]]], include: Sequence[str], exclude: Sequence[str], batch: int
) -> AsyncGenerator[list[common_pb2.FileEntry]]:
    """Filter groups of segment records into lists of ``batch`` entries (parsed in a worker thread)."""
    pending: list[common_pb2.FileEntry] = []
    async for group in groups:
        pending += await asyncio.to_thread(_filter_group, group, include, exclude)
        while len(pending) >= batch:
            yield pending[:batch]
            del pending[:batch]
    if pending:
        yield pending


def _filter_group(
    group: list[list[bytes]], include: Sequence[str], exclude: Sequence[str]
) -> list[common_pb2.FileEntry]:
    return list(filter_records(itertools.chain.from_iterable(group), include, exclude))


async def _pulled_in_thread(items: Iterator[_T]) -> AsyncGenerator[_T]:
    """The items of a CPU-bound iterator, each pulled in a worker thread, the next while this one is used."""
    ahead = asyncio.ensure_future(asyncio.to_thread(next, items, _DONE))
    try:
        while (item := await ahead) is not _DONE:
            ahead = asyncio.ensure_future(asyncio.to_thread(next, items, _DONE))
            yield cast(_T, item)
    finally:
        ahead.cancel()  # a pull already running in its thread ends on its own; nothing waits for it


_DONE = object()
