"""A synthesized point's chunk references per pack counted from its base point's while no move
touched the base's packs (ADR 0034, update of session 5).

Contract: ``inheritance`` (in the commit's transaction, after ``gc_epoch``) returns the base point's
references per pack (``gc.point_refs``, gateway migration 20) when they still hold: no move or
repack of a later epoch than the one they were recorded at took chunks out of any of those packs
(``pack_successors``, ADR 0057) and none is reclaimed. A chunk has one row, which only a move or a
reclaim changes, so each of the base's chunks is still where it was counted. Otherwise None, and
the commit locates every chunk as before.

``build_inherited`` then writes the new manifest from the base's serialized entries (unchanged
entries are copied: neither parsed nor encoded again), locates the chunks of the sent entries (every
chunk id the gateway has not seen is still checked) and of the dropped ones (deleted, or replaced by
a sent entry), and counts: base references - dropped + sent, per pack. The point references exactly
the packs left with references, as if every chunk had been located. More than
``INHERIT_CHUNK_LIMIT`` distinct dropped chunk ids, a dropped chunk not stored or a pack whose count
would fall below zero (the counts do not match the manifest) locate every chunk of the new manifest
instead (``relocate``). File count and bytes are the base's, minus the dropped entries', plus the
sent ones'. With nothing sent nor deleted, the manifest and references are the base's as they are.
A move after the commit read its epoch is caught when the point is recorded (``packs.refuse_moved``),
which locates every chunk again.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from strongroom.common.v1 import common_pb2
from strongroom_platform.manifest import ManifestEncoder, decode_manifest, manifest_records

from strongroom_gateway.errors import InvalidArgument
from strongroom_gateway.ports import GatewayTx, Point
from strongroom_gateway.synthesis import (
    DROPPED,
    KEPT,
    BuiltManifest,
    ChunkCheck,
    Locate,
    SortedSpool,
    add_refs,
    build_manifest,
    merge_records,
)

# Distinct chunk ids of dropped entries held in memory at most; past it every chunk is located.
INHERIT_CHUNK_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class Inheritance:
    """The base point's chunk references per pack, still exact, and its counts."""

    refs: dict[str, int]
    file_count: int
    total_bytes: int


async def inheritance(tx: GatewayTx, account_id: str, base: Point, epoch: int) -> Inheritance | None:
    """The base's references if they still hold (see the module); ``epoch`` is the account's now."""
    recorded = await tx.point_refs(base.point_id)
    if recorded is None:
        return None
    base_epoch, refs = recorded
    packs = sorted(refs)
    if base_epoch > epoch:
        return None  # cannot happen (the base was recorded before), never trusted
    if base_epoch != epoch and await tx.pack_successors(account_id, packs, base_epoch):
        return None
    if await tx.hold_packs(account_id, packs):
        return None
    return Inheritance(refs, base.file_count, base.total_bytes)


def relocate(built: BuiltManifest, locate: Locate) -> dict[str, int]:
    """The references per pack of the built manifest's chunks now, located from all its entries."""
    return build_manifest(decode_manifest(built.data), locate, encoded=built.data).refs


def _parse(record: bytes) -> common_pb2.FileEntry:
    entry = common_pb2.FileEntry()
    entry.ParseFromString(record)
    return entry


def build_inherited(
    base_manifest: bytes,
    changes: SortedSpool,
    deleted: SortedSpool,
    locate: Locate,
    inherited: Inheritance,
) -> BuiltManifest:
    """The point's manifest merged from the base's records, and its references (see the module)."""
    built = BuiltManifest(b"", file_count=inherited.file_count, total_bytes=inherited.total_bytes)
    if not changes.count and not deleted.count:
        # Nothing changed (the daily case of an idle server): the base's manifest and references.
        built.data = base_manifest
        built.entry_count = sum(1 for _ in manifest_records(base_manifest))
        built.refs = dict(inherited.refs)
        built.from_base = True
        return built
    encoder = ManifestEncoder()
    out = io.BytesIO()
    sent = ChunkCheck(locate)
    dropped: dict[bytes, int] | None = {}
    for kind, path, record in merge_records(manifest_records(base_manifest), changes.sorted(), deleted.sorted()):
        if kind == KEPT:
            out.write(encoder.add_record(record, path))
            built.entry_count += 1
            continue
        entry = _parse(record)
        sign = -1 if kind == DROPPED else 1
        if entry.type == common_pb2.ENTRY_TYPE_FILE:
            built.file_count += sign
            built.total_bytes += sign * entry.size
        if kind == DROPPED:
            if dropped is not None:
                for cid in entry.chunk_ids:
                    dropped[cid] = dropped.get(cid, 0) + 1
                if len(dropped) > INHERIT_CHUNK_LIMIT:
                    dropped = None
            continue
        try:
            out.write(encoder.add_record(record, path))
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        built.entry_count += 1
        sent.add(entry.chunk_ids)
    sent_refs = sent.finish()
    out.write(encoder.finish())
    built.data = out.getvalue()
    refs = _counted(inherited.refs, dropped, locate)
    if refs is None:
        built.refs = relocate(built, locate)
    else:
        add_refs(refs, sent_refs)
        built.refs = refs
        built.from_base = True
    return built


def _counted(base_refs: dict[str, int], dropped: dict[bytes, int] | None, locate: Locate) -> dict[str, int] | None:
    """The base's references minus the dropped entries'; None when they cannot be counted."""
    if dropped is None:
        return None
    refs = dict(base_refs)
    if not dropped:
        return refs
    check = ChunkCheck(locate, missing_ok=True)
    check.add_counts(dropped)
    counts = check.finish()
    if check.missing:
        return None  # a chunk of the base gone without a move: never trusted
    for pack, n in counts.items():
        if refs.get(pack, 0) < n:
            return None  # the recorded counts do not match the base's manifest: never trusted
    add_refs(refs, counts, -1)
    return refs
