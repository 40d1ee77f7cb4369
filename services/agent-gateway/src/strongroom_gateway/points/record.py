"""Recording a committed point: the job's row held, the vault record, the point row and PointCreated.

Contract: ``record_point`` runs inside the commit's transaction. It fails the commit when the
backup job finished or was canceled, returns the point a concurrent commit of the same job and
filesystem recorded first (a retry), gives the job its version on the first point, and, while
collection cannot reclaim the point's packs, raises ``Moved`` or fails on moved or reclaimed packs
(``packs``). Then it writes the point's disaster-recovery record (``vault``, ADR 0032), inserts the
point, its packs, and its chunk references per pack with the move epoch they are exact at
(``gc.point_refs``), and enqueues ``PointCreated`` in the same transaction (outbox).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping

from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform.events import POINT_CREATED, new_meta, to_timestamp

from strongroom_gateway.errors import FailedPrecondition
from strongroom_gateway.jobs import PRODUCER
from strongroom_gateway.points.packs import refuse_moved, refuse_reclaimed
from strongroom_gateway.ports import GatewayTx, Point
from strongroom_gateway.vault import Vault


async def record_point(
    tx: GatewayTx,
    draft: Point,
    filesystem: common_pb2.Filesystem,
    refs: Mapping[str, int],
    epoch: int,
    *,
    vault: Vault,
) -> Point:
    """Record ``draft`` (its ``version_id`` is the job's, set here) referencing the packs of ``refs``
    (its chunk references per pack, located at ``epoch``).

    The point returned is ``draft``'s, or the one recorded first for the same job and filesystem.
    """
    now = draft.created_at
    current = await tx.get_job(draft.job_id, for_update=True)
    if current is None or current.state == "finished" or current.cancel_requested:
        raise FailedPrecondition(f"backup job {draft.job_id!r} finished or was canceled during the commit")
    raced = await tx.find_point(draft.job_id, filesystem.mount_point)
    if raced is not None:
        return raced
    if current.version_id is None:
        current = dataclasses.replace(current, version_id=str(uuid.uuid4()), version_created_at=now)
        await tx.update_job(current)
    assert current.version_id is not None and current.version_created_at is not None
    instance = await tx.get_instance(draft.instance_id)
    # Held until commit: collection cannot reclaim these packs now; one reclaimed since the
    # chunks were located fails the commit rather than record a point missing data (ADR 0041).
    packs = set(refs)
    exact_at = await refuse_moved(tx, draft.account_id, packs, epoch)
    await refuse_reclaimed(tx, draft.account_id, packs)
    point = dataclasses.replace(draft, version_id=current.version_id)
    # Inside the transaction, holding the job's row: a record whose transaction then fails
    # names a complete, readable point (a rebuild restores it; ADR 0032).
    await vault.write_point(point, current.version_created_at)
    await tx.insert_point(point)
    await tx.record_point_packs(point.point_id, sorted(packs))
    # A commit based on this point counts from these while no move touches its packs (ADR 0034).
    await tx.record_point_refs(point.point_id, exact_at, refs)
    await tx.enqueue(
        POINT_CREATED,
        point.instance_id,
        events_pb2.PointCreated(
            meta=new_meta(PRODUCER, now),
            account_id=point.account_id,
            instance_id=point.instance_id,
            job_id=point.job_id,
            version_id=point.version_id,
            point_id=point.point_id,
            filesystem=filesystem,
            version_created_at=to_timestamp(current.version_created_at),
            manifest_key=point.manifest_key,
            file_count=point.file_count,
            total_bytes=point.total_bytes,
            retain_until=to_timestamp(point.retain_until),
            instance_capacity_bytes=instance.capacity_bytes if instance is not None else 0,
        ),
    )
    return point
