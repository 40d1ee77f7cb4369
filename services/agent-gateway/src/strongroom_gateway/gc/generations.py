"""Generational moves: the chunks the newest points still use leave packs the older points keep
(ADR 0042, update of 2026-12-06).

A daily pack mixes chunks replaced the next day with chunks that stay for weeks. Every point that
uses a pack extends its Object Lock to the point's own 31 days (ADR 0010), so a pack the newest
point uses stays stored until 31 days after the last backup that used it — even when most of it
was dead for weeks (ADR 0042's measured overhead). One step of a collection run (:func:`move_hot`),
before repacking, in bounded memory:

1. **Candidates.** Packs referenced both by an older live point and by the newest live point of a
   lineage (instance and mount point), newer than the one they were last measured against, and not
   measured within ``heat_every`` (the first measure comes the day after the pack was written).
2. **Measure.** The chunk ids of a batch of candidates (at most ``scan_chunks``) are held in memory;
   the manifests of the newest points referencing any of them are read one at a time and mark the
   ids they name: those chunks are *hot*. The measure is recorded.
3. **Move.** Packs whose hot bytes are below ``hot_below`` of their size are grouped (hot bytes up to
   ``pack_bytes`` per group); each group's hot blobs are copied, verified, into one new pack locked
   until the latest lock of the live points referencing the group, and ``gateway.move_chunks``
   moves those rows only. Every live point that referenced a source references the new pack too;
   the other rows stay in the sources, which the older points still read. New points find the hot
   chunks in the new pack, so nothing extends the sources' locks any more: they are condemned when
   their last older point expires and reclaimed when their lock (the move's day + 31 days at most)
   has passed — one lock period after the move instead of after the chunks' last use.

Safety (ADR 0041's argument, unchanged): no chunk row leaves the index here; a moved row points to a
pack that every live point referencing the source references too, locked at least as long as them
(the function checks it); a commit that located a chunk in a source before a move sees the move's
later epoch under the shared lock and locates its chunks again (ADR 0057), so it never records a
point whose chunks lie in a pack it does not reference; a restore that located a chunk in a source
before the move reads the source by its pinned version, and the source is not reclaimed while such a
restore runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from strongroom_platform.objectstore import ObjectNotFound, ObjectStoreError

from strongroom_gateway import packfile
from strongroom_gateway.chunks import ChunkRejected
from strongroom_gateway.gc.moves_store import HeatCandidate
from strongroom_gateway.gc.repack import bounded_batch, groups, measure, rewrite
from strongroom_gateway.ports import ChunkLocation, Point

if TYPE_CHECKING:
    from strongroom_gateway.gc.collector import Deps, Report

log = logging.getLogger(__name__)


async def move_hot(deps: Deps, report: Report) -> None:
    """Measure the candidates against the newest points and move the hot chunks of the packs that
    are mostly used by older points only (see the module's docstring)."""
    policy = deps.policy.repack
    if policy.hot_below <= 0:
        return
    now = deps.clock.now()
    while True:
        async with deps.store.transaction() as tx:
            candidates = await tx.heat_candidates(now - deps.policy.safety, now - policy.heat_every, deps.policy.batch)
        if not candidates:
            return
        batch, chunks = await bounded_batch(deps, candidates, policy.scan_chunks)
        if not await _measure_and_move(deps, report, batch, chunks):
            return  # a manifest could not be read: nothing is decided on a guess, a later run


async def _measure_and_move(
    deps: Deps, report: Report, batch: Sequence[HeatCandidate], chunks: Sequence[ChunkLocation]
) -> bool:
    policy = deps.policy.repack
    located = {c.chunk_id: c for c in chunks}
    pack_ids = [c.pack.pack_id for c in batch]
    async with deps.store.transaction() as tx:
        newest = await tx.newest_references(pack_ids)
    measured = await measure(
        deps, report, [c.pack for c in batch], {p.point_id: p for _, p in newest}.values(), located
    )
    if measured is None:
        return False
    async with deps.store.transaction() as tx:
        for candidate in batch:
            hot_bytes = measured[candidate.pack.pack_id].live_bytes
            await tx.record_heat(candidate.pack.pack_id, candidate.newest_at, hot_bytes)
    report.packs_measured += len(batch)
    chosen = [m for m in measured.values() if m.live and m.live_bytes < policy.hot_below * m.pack.size]
    for group in groups(chosen, policy.pack_bytes):
        async with deps.store.transaction() as tx:
            references = await tx.live_references([m.pack.pack_id for m in group])
        points: dict[str, Point] = {p.point_id: p for _, p in references}
        try:
            await rewrite(deps, report, group, list(points.values()), partial=True)
        except (ObjectNotFound, ObjectStoreError, ChunkRejected, packfile.PackFormatError) as exc:
            log.warning("packs %s not moved: %s", ", ".join(m.pack.pack_id for m in group), exc)
            report.failures += 1
    return True
