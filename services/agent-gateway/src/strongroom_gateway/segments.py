"""Manifest segments (manifest format version 2, docs/formats/manifest.md, ADR 0065).

A version 2 manifest stores the version 1 record stream cut into segments at keyed path-hash
boundaries; each segment is a blob of the account's packs (its id is the chunk id of its bytes,
found through the chunk table) and the manifest object lists them. ``cut_segments`` is the cut
rule; ``expand_manifest`` turns a version 2 manifest back into the version 1 stream every reader
gets: the segment blobs are read grouped by pack in coalesced ranges, opened, verified against
their ids and checked against the list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence

import blake3
from strongroom_platform.manifest import (
    ManifestFormatError,
    SegmentRef,
    decode_segment_list,
    encode_uvarint,
    manifest_from_segments,
)
from strongroom_platform.objectstore import ObjectNotFound, ObjectStore

from strongroom_gateway.chunks import chunk_id
from strongroom_gateway.crypto import DataKey
from strongroom_gateway.points.opening import open_range
from strongroom_gateway.points.planning import ReadRange, coalesce
from strongroom_gateway.ports import ChunkLocation, GatewayStore

# A segment ends after a record whose path's cut hash is 0 modulo this (16 records on average) ...
CUT_MODULUS = 16
# ... or once it holds this many bytes of records (a single larger record is a segment of its own).
MAX_SEGMENT_BYTES = 256 << 10
# Domain separation: the cut hash of a path is never the chunk id of some content.
_CUT_CONTEXT = b"strongroom manifest segment cut\x00"
# Segment ids looked up per chunk-table query, and segment ranges fetched at a time.
LOOKUP_BATCH = 10_000
RANGES_IN_FLIGHT = 4


def is_cut(chunk_id_key: bytes, path: bytes) -> bool:
    """Whether a segment ends after the record of ``path`` (keyed, so boundaries do not leak names)."""
    digest = blake3.blake3(_CUT_CONTEXT + path, key=chunk_id_key).digest(length=4)
    return int.from_bytes(digest, "little") % CUT_MODULUS == 0


def cut_segments(chunk_id_key: bytes, records: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[SegmentRef, bytes]]:
    """Cut a sorted stream of ``(path, serialized FileEntry)`` into segments: ``(list entry, blob content)``.

    The content is the version 1 record stream of the segment's records (uvarint length + record);
    its id is the chunk id of the content under the account's chunk-id key.
    """
    content = bytearray()
    count = 0
    first = b""
    for path, record in records:
        if not count:
            first = path
        content += encode_uvarint(len(record))
        content += record
        count += 1
        if is_cut(chunk_id_key, path) or len(content) >= MAX_SEGMENT_BYTES:
            yield _segment(chunk_id_key, bytes(content), count, first)
            content.clear()
            count = 0
    if count:
        yield _segment(chunk_id_key, bytes(content), count, first)


def _segment(chunk_id_key: bytes, content: bytes, count: int, first: bytes) -> tuple[SegmentRef, bytes]:
    return SegmentRef(chunk_id(chunk_id_key, content), count, len(content), first), content


async def read_segments(
    store: GatewayStore,
    object_store: ObjectStore,
    data_key: DataKey,
    account_id: str,
    segment_ids: Sequence[bytes],
) -> dict[bytes, bytes]:
    """The verified contents of the account's segment blobs ``segment_ids``; ManifestFormatError when one
    is not stored for the account, its pack is missing or it does not open or verify."""
    unique = list(dict.fromkeys(segment_ids))
    locations: dict[bytes, ChunkLocation] = {}
    async with store.transaction() as tx:
        account = await tx.get_account(account_id)
        for start in range(0, len(unique), LOOKUP_BATCH):
            locations.update(await tx.find_chunks(account_id, unique[start : start + LOOKUP_BATCH]))
    if account is None:
        raise ManifestFormatError(f"account {account_id!r} of a segmented manifest does not exist")
    chunk_id_key = account.chunk_id_key
    missing = [s for s in unique if s not in locations]
    if missing:
        raise ManifestFormatError(
            f"{len(missing)} segments of the manifest are not stored for the account: {missing[0].hex()}"
        )
    slots = asyncio.Semaphore(RANGES_IN_FLIGHT)
    contents: dict[bytes, bytes] = {}

    async def fetch(read: ReadRange) -> None:
        async with slots:
            try:
                data = await object_store.get(
                    read.object_key, offset=read.offset, length=read.length, version_id=read.version_id
                )
            except ObjectNotFound:
                raise ManifestFormatError(
                    f"the pack {read.object_key} holding manifest segments is missing from storage"
                ) from None
            opened = await asyncio.to_thread(open_range, chunk_id_key, data_key, read, data)
        for segment_id, chunk in opened.items():
            if chunk.damage:
                raise ManifestFormatError(f"manifest segment {segment_id.hex()} cannot be read: {chunk.damage}")
            contents[segment_id] = chunk.data

    await asyncio.gather(*(fetch(read) for read in coalesce(locations.values())))
    return contents


async def expand_manifest(
    store: GatewayStore, object_store: ObjectStore, data_key: DataKey, account_id: str, data: bytes
) -> tuple[bytes, list[bytes]]:
    """The version 1 manifest of the version 2 manifest ``data`` of ``account_id`` (same record stream),
    and the ids of its segments."""
    refs = await asyncio.to_thread(decode_segment_list, data)
    ids = [r.segment_id for r in refs]
    contents = await read_segments(store, object_store, data_key, account_id, ids)
    v1 = await asyncio.to_thread(manifest_from_segments, refs, (contents[r.segment_id] for r in refs))
    return v1, list(dict.fromkeys(ids))
