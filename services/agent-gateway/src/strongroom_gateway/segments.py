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
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import blake3
import zstandard
from strongroom.common.v1 import common_pb2
from strongroom_platform.manifest import (
    ManifestFormatError,
    SegmentRef,
    decode_segment_list,
    encode_segment_list,
    encode_uvarint,
    manifest_from_segments,
    manifest_records,
    record_path,
)
from strongroom_platform.objectstore import ObjectNotFound, ObjectStore

from strongroom_gateway import packfile
from strongroom_gateway.chunks import chunk_id
from strongroom_gateway.crypto import DataKey
from strongroom_gateway.points.opening import open_range
from strongroom_gateway.points.planning import ReadRange, coalesce
from strongroom_gateway.ports import ChunkLocation, GatewayStore

if TYPE_CHECKING:
    from strongroom_gateway.ingest import PackWriter

# A segment ends after a record whose path's cut hash is 0 modulo this (16 records on average) ...
CUT_MODULUS = 16
# ... or once it holds this many bytes of records (a single larger record is a segment of its own).
MAX_SEGMENT_BYTES = 256 << 10
# Domain separation: the cut hash of a path is never the chunk id of some content.
_CUT_CONTEXT = b"strongroom manifest segment cut\x00"
# Segment ids looked up per chunk-table query, and segment ranges fetched at a time.
LOOKUP_BATCH = 10_000
RANGES_IN_FLIGHT = 4
# Segments are compressed like the agent's chunks before they are packed.
SEGMENT_ZSTD_LEVEL = 3


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


def stream_segments(chunk_id_key: bytes, manifest: bytes) -> list[tuple[SegmentRef, bytes]]:
    """The segments of a version 1 manifest's record stream (pure CPU: a worker thread)."""

    def records() -> Iterator[tuple[bytes, bytes]]:
        for record in manifest_records(manifest):
            path = record_path(record)
            yield (path if path is not None else common_pb2.FileEntry.FromString(record).path.encode()), record

    return list(cut_segments(chunk_id_key, records()))


async def segment_pack_refs(store: GatewayStore, account_id: str, segment_ids: Sequence[bytes]) -> dict[str, int]:
    """One reference per distinct segment, in the pack holding it; ManifestFormatError when one is not stored."""
    refs, missing = await _pack_refs(store, account_id, segment_ids)
    if missing:
        raise ManifestFormatError(f"{len(missing)} manifest segments are not stored: {missing[0].hex()}")
    return refs


async def _pack_refs(
    store: GatewayStore, account_id: str, segment_ids: Sequence[bytes]
) -> tuple[dict[str, int], list[bytes]]:
    """One reference per distinct segment the account holds, in the pack holding it; and the ids it does not hold."""
    refs: dict[str, int] = {}
    absent: list[bytes] = []
    unique = list(dict.fromkeys(segment_ids))
    for start in range(0, len(unique), LOOKUP_BATCH):
        async with store.transaction() as tx:
            found, missing = await tx.chunk_pack_refs(
                account_id, dict.fromkeys(unique[start : start + LOOKUP_BATCH], 1)
            )
        absent += missing
        for pack, n in found.items():
            refs[pack] = refs.get(pack, 0) + n
    return refs, absent


def _compress(segments: Sequence[tuple[SegmentRef, bytes]]) -> list[packfile.BlobToPack]:
    compressor = zstandard.ZstdCompressor(level=SEGMENT_ZSTD_LEVEL, write_content_size=True)
    return [
        packfile.BlobToPack(ref.segment_id, packfile.COMPRESSION_ZSTD, compressor.compress(content), len(content))
        for ref, content in segments
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class WrittenSegments:
    """A point's version 2 manifest (unsealed), and its segments' references per pack."""

    manifest: bytes
    segment_ids: list[bytes]
    refs: dict[str, int]
    written: int  # segments this commit stored (the others the account held already)


async def write_segments(
    store: GatewayStore, writer: PackWriter, account_id: str, chunk_id_key: bytes, manifest: bytes
) -> WrittenSegments:
    """Store the record stream of ``manifest`` (version 1 bytes) as segments: those the account does not
    hold yet go into packs through ``writer`` (sealed, locked and recorded like uploaded chunks), and the
    version 2 manifest listing them is returned with one reference per distinct segment in its pack."""
    segments = await asyncio.to_thread(stream_segments, chunk_id_key, manifest)
    # Every id looked up once: the references of the segments the account holds, and the others.
    refs, absent = await _pack_refs(store, account_id, [ref.segment_id for ref, _ in segments])
    missing = set(absent)
    new: dict[bytes, tuple[SegmentRef, bytes]] = {}
    for ref, content in segments:
        if ref.segment_id in missing:
            new.setdefault(ref.segment_id, (ref, content))
    blobs = await asyncio.to_thread(_compress, list(new.values()))
    holders = {blob.chunk_id: (await writer.add(account_id, blob))[0] for blob in blobs}
    await writer.flush(set(holders.values()))
    # The writer tells which pack each written segment was recorded in. A pack some of whose blobs
    # another replica recorded first (between the lookup above and the write) does not say which:
    # those segments alone are located again, in the pack the chunk table names.
    elsewhere = []
    for segment_id, pack in holders.items():
        if pack.placed:
            refs[pack.pack_id] = refs.get(pack.pack_id, 0) + 1
        else:
            elsewhere.append(segment_id)
    if elsewhere:
        for pack_id, n in (await segment_pack_refs(store, account_id, elsewhere)).items():
            refs[pack_id] = refs.get(pack_id, 0) + n
    encoded = await asyncio.to_thread(encode_segment_list, [ref for ref, _ in segments])
    return WrittenSegments(encoded, list(dict.fromkeys(ref.segment_id for ref, _ in segments)), refs, len(new))
