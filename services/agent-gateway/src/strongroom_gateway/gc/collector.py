"""Garbage collection: reclaim the packs no live point references, in two phases (ADR 0041).

One run (:func:`collect`), every step in bounded memory (batches of rows; the reference set lives
in PostgreSQL as ``point_packs``, never in this process):

1. **References.** A point committed before migration 11 has no ``point_packs`` rows: its
   manifest is read once and its packs recorded (batches of chunk ids). Until every live point of
   an account has its references, nothing of that account is condemned or reclaimed.
2. **Mark.** Packs created before ``now - safety`` (and before any running backup of the account
   started: the packs it uploaded are not referenced until it commits) that no live point
   references are *condemned*, at the trusted time.
3. **Sweep.** Condemned packs whose condemnation is ``safety`` old and whose Object Lock has
   passed by the trusted time are *reclaimed* by ``gateway.reclaim_pack``, which checks all of it
   again under the account's collection lock and drops the pack's chunk rows; then the object is
   deleted with the **reclaimer** identity (ADR 0035), which the server refuses while locked.
   A commit holds that lock shared while it records its packs and fails if one was reclaimed, so
   a point never references a deleted pack, whatever the timing (the safety interval only makes
   that failure rare: kopia's ``MinContentAgeSubjectToGC``, PBS's grace period).
   Before the mark, the chunks the newest points use leave packs mostly used by older points
   (``gc.generations``) and packs left mostly dead are **repacked** (``gc.repack``, ADR 0042):
   their live chunks are copied into a new pack and the sources become unreferenced.
4. **Expired points.** Once an expired point's lock has passed, its manifest and its point record
   (ADR 0032) are deleted too, so a rebuild from the bucket does not bring it back.

A failed deletion (lock, outage) is retried at the next run: the reclaim row stays pending.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Iterator

from strongroom.common.v1 import common_pb2
from strongroom_platform.clock import Clock
from strongroom_platform.manifest import ManifestFormatError, decode_manifest
from strongroom_platform.objectstore import ObjectLocked, ObjectNotFound, ObjectStore, ObjectStoreError

from strongroom_gateway import manifests
from strongroom_gateway.gc.generations import move_hot
from strongroom_gateway.gc.repack import RepackPolicy, repack
from strongroom_gateway.keys import AccountKeys
from strongroom_gateway.ports import GatewayStore, Point
from strongroom_gateway.vault_format import point_record_key

log = logging.getLogger(__name__)

# Chunk ids looked up per query while a manifest's references are recorded.
LOOKUP_BATCH = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """``safety``: the least age of a pack before it is condemned, and of a condemnation before the
    pack is reclaimed. ``batch``: rows per transaction."""

    safety: dt.timedelta = dt.timedelta(hours=1)
    batch: int = 100
    repack: RepackPolicy = RepackPolicy()


@dataclasses.dataclass(slots=True)
class Report:
    """What one run did."""

    points_referenced: int = 0
    packs_condemned: int = 0
    packs_reclaimed: int = 0
    objects_deleted: int = 0
    bytes_freed: int = 0
    points_reclaimed: int = 0
    packs_measured: int = 0
    packs_repacked: int = 0
    packs_moved: int = 0
    repacks_refused: int = 0
    bytes_copied: int = 0
    failures: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Deps:
    """``objects``: the gateway's store (reads manifests); ``reclaimer``: the identity that deletes."""

    store: GatewayStore
    objects: ObjectStore
    reclaimer: ObjectStore
    keys: AccountKeys
    clock: Clock
    policy: Policy = Policy()


async def collect(deps: Deps) -> Report:
    """One collection run over every account (see the module's docstring)."""
    report = Report()
    await _record_references(deps, report)
    await move_hot(deps, report)
    await repack(deps, report)
    await _condemn(deps, report)
    await _reclaim(deps, report)
    await _delete_objects(deps, report)
    await _reclaim_points(deps, report)
    done = (
        report.packs_condemned,
        report.objects_deleted,
        report.points_reclaimed,
        report.packs_repacked,
        report.packs_moved,
    )
    if any(done) or report.failures or report.repacks_refused:
        log.info("garbage collection: %s", report)
    return report


async def _record_references(deps: Deps, report: Report) -> None:
    skipped: set[str] = set()
    while True:
        async with deps.store.transaction() as tx:
            points = [p for p in await tx.unreferenced_points(deps.policy.batch + len(skipped))]
        todo = [p for p in points if p.point_id not in skipped]
        if not todo:
            return
        for point in todo:
            try:
                await record_point_references(deps, point)
                report.points_referenced += 1
            except (ObjectNotFound, ManifestFormatError) as exc:
                # Its account stays blocked from collection: nothing is deleted on a guess.
                log.warning("point %s: references not recorded (%s); its account is not collected", point.point_id, exc)
                skipped.add(point.point_id)
                report.failures += 1


async def record_point_references(deps: Deps, point: Point) -> None:
    """Read the point's manifest and record the packs its chunks are in (batches of chunk ids), and
    those holding its manifest's segments (format version 2, ADR 0065)."""
    data, segment_ids = await manifests.read_point_blobs(deps.objects, deps.keys, point, store=deps.store)
    entries = decode_manifest(data)
    packs: set[str] = set()
    for start in range(0, len(segment_ids), LOOKUP_BATCH):
        async with deps.store.transaction() as tx:
            found, _ = await tx.chunk_packs(point.account_id, segment_ids[start : start + LOOKUP_BATCH])
        packs |= found  # every segment was just read through the chunk table

    def next_batch(entries: Iterator[common_pb2.FileEntry]) -> list[bytes]:
        ids: list[bytes] = []
        for entry in entries:
            ids.extend(bytes(c) for c in entry.chunk_ids)
            if len(ids) >= LOOKUP_BATCH:
                break
        return ids

    while batch := await asyncio.to_thread(next_batch, entries):
        async with deps.store.transaction() as tx:
            found, missing = await tx.chunk_packs(point.account_id, batch)
        packs |= found
        if missing:
            log.warning("point %s references %d chunks that are not stored", point.point_id, len(missing))
    async with deps.store.transaction() as tx:
        await tx.record_point_packs(point.point_id, sorted(packs))


async def _condemn(deps: Deps, report: Report) -> None:
    before = deps.clock.now() - deps.policy.safety
    while True:
        async with deps.store.transaction() as tx:
            count = await tx.condemn_unreferenced_packs(before, deps.policy.batch)
        report.packs_condemned += count
        if count < deps.policy.batch:
            return


async def _reclaim(deps: Deps, report: Report) -> None:
    refused: set[str] = set()
    while True:
        async with deps.store.transaction() as tx:
            candidates = await tx.reclaim_candidates(deps.policy.safety, deps.policy.batch + len(refused))
        todo = [p for p in candidates if p.pack_id not in refused]
        if not todo:
            return
        for pack in todo:
            # One transaction per pack: the account's lock is held only while its rows go.
            async with deps.store.transaction() as tx:
                if await tx.reclaim_pack(pack.pack_id, deps.policy.safety):
                    report.packs_reclaimed += 1
                else:
                    refused.add(pack.pack_id)  # referenced again, a backup running: a later run


async def _delete_objects(deps: Deps, report: Report) -> None:
    failed: set[str] = set()
    while True:
        async with deps.store.transaction() as tx:
            pending = await tx.reclaimed_objects(deps.policy.batch + len(failed))
        todo = [p for p in pending if p.pack_id not in failed]
        if not todo:
            return
        for pack in todo:
            try:
                await deps.reclaimer.delete(pack.object_key)
            except (ObjectLocked, ObjectStoreError) as exc:
                log.warning("pack %s: object not deleted yet (%s); retried at the next run", pack.pack_id, exc)
                failed.add(pack.pack_id)
                report.failures += 1
                continue
            async with deps.store.transaction() as tx:
                await tx.pack_object_deleted(pack.pack_id, deps.clock.now())
            report.objects_deleted += 1
            report.bytes_freed += pack.size


async def _reclaim_points(deps: Deps, report: Report) -> None:
    failed: set[str] = set()
    while True:
        async with deps.store.transaction() as tx:
            points = await tx.reclaimable_points(deps.policy.batch + len(failed))
        todo = [p for p in points if p.point_id not in failed]
        if not todo:
            return
        for point in todo:
            try:
                await deps.reclaimer.delete(point.manifest_key)
                await deps.reclaimer.delete(point_record_key(point.account_id, point.point_id))
            except (ObjectLocked, ObjectStoreError) as exc:
                log.warning("expired point %s: not deleted yet (%s)", point.point_id, exc)
                failed.add(point.point_id)
                report.failures += 1
                continue
            async with deps.store.transaction() as tx:
                await tx.point_reclaimed(point.point_id, deps.clock.now())
            report.points_reclaimed += 1


class Collector:
    """Runs :func:`collect` every ``interval`` seconds until cancelled; a failed run is retried then."""

    def __init__(self, deps: Deps, *, interval: float) -> None:
        self._deps = deps
        self._interval = interval

    async def run(self) -> None:
        while True:
            try:
                await collect(self._deps)
            except Exception:
                log.exception("garbage collection failed; retried in %.0f s", self._interval)
            await self._deps.clock.sleep(self._interval)
