"""Which filesystems an instance may back up (issue 9, "mount points"; ADR 0025 §mount points).

A point's ``mount_point`` decides where a restore to the "original location" writes — on any
server it is restored to. So it must not be whatever a (possibly compromised) agent claims: a
point may only be committed for a filesystem recorded for the instance **at enrollment**
(``EnrollRequest.filesystems``; for agents that send none there, the first hello after
enrollment, while nothing is recorded yet). A filesystem that appears later in a hello is kept
as *pending approval* and refused at commit until an operator approves it (:func:`approve`,
``AgentAdminService.ApproveInstanceFilesystem``).
A job's explicit backup roots, which the operator chose, count as approved for that job.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from strongroom.common.v1 import common_pb2
from strongroom_platform import audit
from strongroom_platform.clock import Clock

from strongroom_gateway.errors import FailedPrecondition, NotFound
from strongroom_gateway.ports import GatewayStore, GatewayTx, InstanceFilesystem

if TYPE_CHECKING:
    from strongroom_gateway.vault import Vault

log = logging.getLogger(__name__)


def _record(instance_id: str, fs: common_pb2.Filesystem, *, approved: bool, now: dt.datetime) -> InstanceFilesystem:
    return InstanceFilesystem(
        instance_id=instance_id,
        mount_point=fs.mount_point,
        filesystem=fs.SerializeToString(),
        approved=approved,
        first_seen_at=now,
        approved_at=now if approved else None,
    )


async def record_enrolled(
    tx: GatewayTx, instance_id: str, filesystems: Iterable[common_pb2.Filesystem], now: dt.datetime
) -> None:
    """At enrollment: the filesystems the agent names are the instance's approved set."""
    for fs in filesystems:
        await tx.add_instance_filesystem(_record(instance_id, fs, approved=True, now=now))


async def note_reported(
    tx: GatewayTx, instance_id: str, filesystems: Iterable[common_pb2.Filesystem], now: dt.datetime
) -> list[str]:
    """A hello's filesystems: unknown ones are recorded pending approval; returns their mount points.

    When the instance has no recorded filesystem at all (it enrolled without naming any, or before
    filesystems were recorded), this first report is the enrollment set and is approved.
    """
    reported = list(filesystems)
    if not await tx.instance_filesystems(instance_id):
        await record_enrolled(tx, instance_id, reported, now)
        return []
    pending = []
    for fs in reported:
        if await tx.add_instance_filesystem(_record(instance_id, fs, approved=False, now=now)):
            pending.append(fs.mount_point)
    if pending:
        log.warning(
            "instance %s reports %d filesystem(s) not recorded at enrollment, pending an operator's approval",
            instance_id,
            len(pending),
        )
    return pending


async def require_approved(
    store: GatewayStore, instance_id: str, mount_point: str, *, job_roots: Iterable[str] = ()
) -> None:
    """FAILED_PRECONDITION unless ``mount_point`` is an approved filesystem of the instance.

    An explicit backup root of the job (``RunBackup.roots``, set by the operator through the
    scheduler, never by the agent) is approved by being in the job: its points carry the root as
    their mount point.
    """
    if mount_point in set(job_roots):
        return
    async with store.transaction() as tx:
        recorded = {f.mount_point: f for f in await tx.instance_filesystems(instance_id)}
    found = recorded.get(mount_point)
    if found is None or not found.approved:
        state = "is pending approval" if found is not None else "was not recorded for this instance at enrollment"
        raise FailedPrecondition(
            f"filesystem {mount_point!r} {state}: an operator must approve the new filesystem before it is backed up"
        )


async def approve(
    store: GatewayStore, instance_id: str, mount_point: str, *, clock: Clock, vault: Vault | None = None
) -> InstanceFilesystem:
    """An operator approves a pending filesystem (``AgentAdminService.ApproveInstanceFilesystem``);
    with ``vault`` the instance's disaster-recovery record is written again once it committed."""
    audit.note(instance_id=instance_id, mount_point=mount_point)
    async with store.transaction() as tx:
        if not await tx.approve_instance_filesystem(instance_id, mount_point, clock.now()):
            raise NotFound(f"instance {instance_id!r} has reported no filesystem {mount_point!r}")
        [approved] = [f for f in await tx.instance_filesystems(instance_id) if f.mount_point == mount_point]
    log.info("instance %s: filesystem %r approved", instance_id, mount_point)
    if vault is not None:
        await vault.record_instance_quietly(instance_id)
    return approved


async def listed(store: GatewayStore, instance_id: str, *, pending_only: bool = False) -> list[InstanceFilesystem]:
    """The instance's recorded filesystems (or only those pending); NOT_FOUND for an unknown instance."""
    async with store.transaction() as tx:
        if await tx.get_instance(instance_id) is None:
            raise NotFound(f"instance {instance_id!r} not found")
        found = await tx.instance_filesystems(instance_id)
    return [f for f in found if not (pending_only and f.approved)]


async def pending(store: GatewayStore, instance_id: str) -> list[InstanceFilesystem]:
    """The filesystems of the instance waiting for an operator's approval."""
    async with store.transaction() as tx:
        return [f for f in await tx.instance_filesystems(instance_id) if not f.approved]
