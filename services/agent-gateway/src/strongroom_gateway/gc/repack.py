"""Repacking: copy the live chunks of mostly-dead packs into a new pack (ADR 0042).

Garbage collection (ADR 0041) frees a pack only once no live point references it; a pack with one
live chunk is kept whole, and its Object Lock is extended by every point that deduplicates
against it. One step of a collection run (:func:`repack`), in bounded memory:

1. **Candidates.** Packs that more referencing points expired of since they were last measured
   (a pack loses live data only when a point referencing it expires), oldest first.
2. **Measure.** The chunk ids of a batch of candidates (at most ``scan_chunks`` of them) are held
   in memory; the manifests of the live points referencing any of those packs are read one at a
   time and mark the ids they name. A pack's live bytes are the stored lengths of its marked
   chunks; the measure is recorded, so the pack is measured again only after more expiries.
3. **Rewrite.** Packs whose live bytes are below ``below`` of their size are grouped (live bytes up
   to ``pack_bytes`` per group); each group's live blobs are read (by the sources' pinned versions),
   authenticated and verified against their ids, and written as one new pack, locked until the
   latest lock of the live points referencing the group (ADR 0010), or a day when those passed.
4. **Move.** ``gateway.repack_pack`` moves the chunk rows to the new pack under the account's
   collection lock and re-points the sources' references; the sources keep their dead rows, are
   condemned like any unreferenced pack and reclaimed (dead rows with them) once their own lock
   has passed.

Concurrency (ADR 0057): the function does not wait for running backups. A commit that located a
chunk in a source before the move sees the move's later epoch under the shared lock, locates its
chunks again and records where they are now; a backup told a dead chunk was present finds it still
in the source, which its point then keeps (ADR 0041's rules protect it until then). A restore that
located a chunk before the move reads the source by its pinned version; the source is not
reclaimed while a restore of the account that started before its condemnation runs. A refused move
leaves the new pack unreferenced: the next collection condemns it like a failed backup's pack.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from strongroom_platform.manifest import ManifestFormatError, decode_manifest
from strongroom_platform.objectstore import ObjectNotFound, ObjectStoreError

from strongroom_gateway import manifests, packfile
from strongroom_gateway.chunks import ChunkRejected, verify_payload
from strongroom_gateway.crypto import DataKey
from strongroom_gateway.gc.repack_store import RepackCandidate
from strongroom_gateway.ingest import LOCK_MARGIN, pack_key
from strongroom_gateway.ports import ChunkLocation, Pack, Point

if TYPE_CHECKING:
    from strongroom_gateway.gc.collector import Deps, Report

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class RepackPolicy:
    """``below``: a pack whose live bytes are below this share of its size is rewritten (0: never).
    ``pack_bytes``: live bytes gathered into one new pack. ``scan_chunks``: chunk ids held while
    manifests are scanned (the memory bound of a measure). ``hot_below``: a pack whose chunks used
    by the newest point of each lineage are below this share of its size has those moved to a new
    pack (``gc.generations``; 0: never). ``heat_every``: the least interval between two such
    measures of a pack (its first comes as soon as a newer point uses it)."""

    below: float = 0.6
    pack_bytes: int = 16 << 20
    scan_chunks: int = 100_000
    hot_below: float = 0.6
    heat_every: dt.timedelta = dt.timedelta(days=7)


@dataclasses.dataclass(slots=True)
class Measured:
    """A measured pack and the chunks of it to copy (``live``, ``live_bytes`` of them)."""

    pack: Pack
    live: list[ChunkLocation]
    live_bytes: int


async def repack(deps: Deps, report: Report) -> None:
    """Measure the candidates and rewrite the mostly-dead ones (see the module's docstring)."""
    policy = deps.policy.repack
    if policy.below <= 0:
        return
    before = deps.clock.now() - deps.policy.safety
    while True:
        async with deps.store.transaction() as tx:
            candidates = await tx.repack_candidates(before, deps.policy.batch)
        if not candidates:
            return
        batch, chunks = await bounded_batch(deps, candidates, policy.scan_chunks)
        if not await _measure_and_rewrite(deps, report, batch, chunks):
            return  # a manifest could not be read: nothing is decided on a guess, a later run


class _HasPack(Protocol):
    @property
    def pack(self) -> Pack: ...


CandidateT = TypeVar("CandidateT", bound=_HasPack)


async def bounded_batch(
    deps: Deps, candidates: Sequence[CandidateT], scan_chunks: int
) -> tuple[list[CandidateT], list[ChunkLocation]]:
    """The leading candidates whose packs' chunk rows fit in ``scan_chunks`` (at least one), with
    those rows: the memory bound of one measuring pass (repacking and generational moves alike)."""
    batch: list[CandidateT] = []
    chunks: list[ChunkLocation] = []
    for candidate in candidates:
        async with deps.store.transaction() as tx:
            rows = await tx.chunks_in_packs([candidate.pack.pack_id])
        if batch and len(chunks) + len(rows) > scan_chunks:
            break
        batch.append(candidate)
        chunks.extend(rows)
    return batch, chunks


async def _measure_and_rewrite(
    deps: Deps, report: Report, batch: Sequence[RepackCandidate], chunks: Sequence[ChunkLocation]
) -> bool:
    policy = deps.policy.repack
    located = {c.chunk_id: c for c in chunks}
    async with deps.store.transaction() as tx:
        references = await tx.live_references([c.pack.pack_id for c in batch])
    points: dict[str, Point] = {p.point_id: p for _, p in references}
    measured = await measure(deps, report, [c.pack for c in batch], points.values(), located)
    if measured is None:
        return False
    async with deps.store.transaction() as tx:
        for candidate in batch:
            await tx.record_liveness(
                candidate.pack.pack_id, candidate.expired_references, measured[candidate.pack.pack_id].live_bytes
            )
    report.packs_measured += len(batch)
    chosen = [m for m in measured.values() if m.live and m.live_bytes < policy.below * m.pack.size]
    referencing: dict[str, list[Point]] = {}
    for pack_id, point in references:
        referencing.setdefault(pack_id, []).append(point)
    for group in groups(chosen, policy.pack_bytes):
        group_points = {p.point_id: p for m in group for p in referencing.get(m.pack.pack_id, [])}
        try:
            await rewrite(deps, report, group, list(group_points.values()))
        except (ObjectNotFound, ObjectStoreError, ChunkRejected, packfile.PackFormatError) as exc:
            log.warning("packs %s not repacked: %s", ", ".join(m.pack.pack_id for m in group), exc)
            report.failures += 1
    return True


async def measure(
    deps: Deps, report: Report, packs: Sequence[Pack], points: Iterable[Point], located: dict[bytes, ChunkLocation]
) -> dict[str, Measured] | None:
    """Per pack, its chunks (of ``located``: the packs' chunk rows by id) that the manifests of
    ``points`` name, read one at a time. None when a manifest cannot be read (nothing is decided on
    a guess)."""
    named: set[bytes] = set()
    for point in points:
        try:
            data, segment_ids = await manifests.read_point_blobs(deps.objects, deps.keys, point, store=deps.store)
        except (ObjectNotFound, ManifestFormatError) as exc:
            log.warning("point %s: manifest unreadable (%s); its packs are not moved", point.point_id, exc)
            report.failures += 1
            return None

        # The segment blobs its manifest is stored in are live like its chunks (ADR 0065).
        named.update(s for s in segment_ids if s in located)

        def mark(data: bytes = data) -> None:
            for entry in decode_manifest(data):
                for cid in entry.chunk_ids:
                    if (key := bytes(cid)) in located:
                        named.add(key)

        await asyncio.to_thread(mark)
    measured = {pack.pack_id: Measured(pack, [], 0) for pack in packs}
    for cid in named:
        location = located[cid]
        entry = measured[location.pack_id]
        entry.live.append(location)
        entry.live_bytes += location.length
    return measured


def groups(chosen: Sequence[Measured], pack_bytes: int) -> list[list[Measured]]:
    """Consecutive (oldest first) groups of at most ``pack_bytes`` live bytes, each of one account."""
    groups: list[list[Measured]] = []
    size = 0
    for measured in sorted(chosen, key=lambda m: (m.pack.account_id, m.pack.created_at, m.pack.pack_id)):
        current = groups[-1] if groups else None
        if (
            current is None
            or current[0].pack.account_id != measured.pack.account_id
            or size + measured.live_bytes > pack_bytes
        ):
            groups.append([measured])
            size = measured.live_bytes
        else:
            current.append(measured)
            size += measured.live_bytes
    return groups


async def rewrite(
    deps: Deps, report: Report, group: Sequence[Measured], points: Sequence[Point], *, partial: bool = False
) -> None:
    """Copy the chosen chunks of ``group`` into one new pack locked like the latest of ``points`` (the
    live points referencing the group) and move their rows: ``repack_pack`` (the sources' other rows
    are dead and dropped) or, ``partial``, ``move_chunks`` (the other rows stay)."""
    account_id = group[0].pack.account_id
    async with deps.store.transaction() as tx:
        account = await tx.get_account(account_id)
    assert account is not None  # packs reference their account
    data_key = await deps.keys.data_key(account_id)
    blobs: list[packfile.BlobToPack] = []
    for measured in group:
        pack = measured.pack
        data = await deps.objects.get(pack.object_key, version_id=pack.version_id)
        blobs.extend(await asyncio.to_thread(_extract, account.chunk_id_key, data_key, pack, measured.live, data))
        del data
    encoded = await asyncio.to_thread(packfile.encode_pack, blobs, data_key)
    del blobs
    now = deps.clock.now()
    # The lock of the latest point that references these chunks (ADR 0010); a day when that passed.
    retain_until = max((p.retain_until for p in points), default=now)
    if retain_until <= now:
        retain_until = now + LOCK_MARGIN
    key = pack_key(account_id, encoded.pack_id)
    await deps.keys.keep_locked(account_id, retain_until)
    version_id = await deps.objects.put(key, encoded.data, retain_until=retain_until)
    record = Pack(
        encoded.pack_id, account_id, key, len(encoded.data), now, retain_until, encoded.format_version, version_id
    )
    rows = [
        ChunkLocation(
            e.chunk_id, encoded.pack_id, key, e.offset, e.length, e.raw_length, e.compression, encoded.format_version
        )
        for e in encoded.entries
    ]
    sources = [m.pack.pack_id for m in group]
    async with deps.store.transaction() as tx:
        if partial:
            moved = await tx.move_chunks(record, sources, rows)
        else:
            moved = await tx.repack(record, sources, [p.point_id for p in points], rows)
    if not moved:
        log.info("moving chunks of %s refused (the packs changed since they were measured); retried later", sources)
        report.repacks_refused += 1
        return
    if partial:
        report.packs_moved += len(group)
    else:
        report.packs_repacked += len(group)
    report.bytes_copied += len(encoded.data)


def _extract(
    chunk_id_key: bytes, data_key: DataKey, pack: Pack, live: Sequence[ChunkLocation], data: bytes
) -> list[packfile.BlobToPack]:
    """The live blobs of one source pack, authenticated and verified (as uploaded: compressed)."""
    out: list[packfile.BlobToPack] = []
    for location in sorted(live, key=lambda c: c.offset):
        stored = data[location.offset : location.offset + location.length]
        if len(stored) != location.length:
            raise ChunkRejected(f"chunk {location.chunk_id.hex()} lies beyond the end of pack {pack.pack_id}")
        payload = packfile.open_blob(
            data_key, pack.format_version, location.chunk_id, location.compression, location.raw_length, stored
        )
        verify_payload(chunk_id_key, location.chunk_id, payload, location.compression, location.raw_length)
        out.append(packfile.BlobToPack(location.chunk_id, location.compression, payload, location.raw_length))
    return out
