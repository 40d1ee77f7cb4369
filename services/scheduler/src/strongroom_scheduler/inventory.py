"""The inventory (ADR 0040): instances known before activation, their host identity, OS and block
devices; release (STOPPED); the preparation timeout (PREPARATION_FAILED).

Plain functions over the ``SchedulerStore`` port, like ``handlers``; every status change is
published by ``status.save``/``status.insert`` in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_platform import audit
from strongroom_platform.auth import CallAuth, choose_account
from strongroom_platform.clock import Clock
from strongroom_platform.events import JOB_CANCEL_REQUESTED, new_meta

from strongroom_scheduler import schedule, status
from strongroom_scheduler.errors import FailedPrecondition, InvalidArgument
from strongroom_scheduler.jobs import PRODUCER
from strongroom_scheduler.models import BlockDevice, Instance
from strongroom_scheduler.ports import SchedulerStore, SchedulerTx

log = logging.getLogger(__name__)

MAX_REGISTER = 1000
MAX_DEVICES = 64
_MAX_LABEL = 255
DEFAULT_PREPARATION_TIMEOUT = dt.timedelta(minutes=30)


@dataclass(frozen=True, slots=True)
class InventoryInput:
    """One record to register: a host and what is attached to it."""

    host_id: str
    name: str
    region: str
    os: str = ""
    block_devices: Sequence[BlockDevice] = field(default_factory=tuple)
    released: bool = False


def _label(value: str, what: str, where: str, *, required: bool) -> str:
    value = value.strip()
    if required and not value:
        raise InvalidArgument(f"{where}: {what} is required")
    if len(value.encode()) > _MAX_LABEL or "\x00" in value or any(c in value for c in "\r\n"):
        raise InvalidArgument(f"{where}: {what} must be one line of at most {_MAX_LABEL} bytes without NUL")
    return value


def check_devices(devices: Sequence[BlockDevice], where: str) -> list[BlockDevice]:
    """The devices, validated: named once each, sizes within int64, at most 64."""
    if len(devices) > MAX_DEVICES:
        raise InvalidArgument(f"{where}: at most {MAX_DEVICES} block devices, got {len(devices)}")
    seen: set[str] = set()
    checked: list[BlockDevice] = []
    for d in devices:
        name = _label(d.device, "block device name", where, required=True)
        if name in seen:
            raise InvalidArgument(f"{where}: block device {name} is listed twice")
        if not 0 <= d.size_bytes < 1 << 63:
            raise InvalidArgument(f"{where}: block device {name} has an impossible size {d.size_bytes}")
        seen.add(name)
        checked.append(BlockDevice(name, d.size_bytes))
    return checked


def check_host_id(host_id: str, where: str) -> str:
    return _label(host_id, "host_id", where, required=True)


@dataclass(frozen=True, slots=True)
class _Checked:
    host_id: str
    name: str
    region: str
    os: str
    devices: list[BlockDevice]
    released: bool


def _check(record: InventoryInput, n: int) -> _Checked:
    where = f"instance {n + 1}"
    host_id = check_host_id(record.host_id, where)
    return _Checked(
        host_id=host_id,
        name=_label(record.name, "name", where, required=False) or host_id,
        region=_label(record.region, "region", where, required=True),
        os=_label(record.os, "os", where, required=False),
        devices=check_devices(record.block_devices, where),
        released=record.released,
    )


async def _stop_jobs(tx: SchedulerTx, instance: Instance, now: dt.datetime, reason: str) -> None:
    """Finish every unfinished job of the instance as CANCELED and ask the gateway to drop them."""
    for job in await tx.unfinished_jobs(instance.instance_id):
        job.status = common_pb2.JOB_STATUS_CANCELED
        job.error = reason
        job.finished_at = now
        await tx.update_job(job)
        await tx.enqueue(
            JOB_CANCEL_REQUESTED,
            instance.instance_id,
            events_pb2.JobCancelRequested(
                meta=new_meta(PRODUCER, now),
                account_id=instance.account_id,
                instance_id=instance.instance_id,
                job_id=job.job_id,
            ),
        )
    instance.backing_up = False


async def _release(tx: SchedulerTx, instance: Instance, now: dt.datetime) -> None:
    """The host is gone: STOPPED, its jobs stop; nothing is scheduled for it any more."""
    instance.released = True
    await _stop_jobs(tx, instance, now, "the instance is gone (released in the inventory)")


async def register_instances(
    store: SchedulerStore,
    clock: Clock,
    account_id: str,
    records: Sequence[InventoryInput],
    *,
    call: CallAuth,
    zone: dt.tzinfo,
) -> list[Instance]:
    """Register hosts in the inventory (NOT_ACTIVATED) or update the record of known ones (same
    ``host_id`` in the account); a record with ``released`` stops its instance. All or nothing."""
    account = choose_account(account_id.strip(), call=call)
    if not records:
        raise InvalidArgument("instances is empty: give at least one inventory record")
    if len(records) > MAX_REGISTER:
        raise InvalidArgument(f"at most {MAX_REGISTER} instances per call, got {len(records)}; send them in batches")
    checked = [_check(r, n) for n, r in enumerate(records)]
    hosts = [c.host_id for c in checked]
    repeated = sorted({h for h in hosts if hosts.count(h) > 1})
    if repeated:
        raise InvalidArgument(f"host_id {', '.join(repeated)} appears more than once in the request")
    now = clock.now()
    result: list[Instance] = []
    async with store.transaction() as tx:
        for record in checked:
            known = await tx.instance_of_host(account, record.host_id, for_update=True)
            if known is None:
                instance = Instance(
                    instance_id=str(uuid.uuid4()),
                    account_id=account,
                    name=record.name,
                    region=record.region,
                    priority=common_pb2.BACKUP_PRIORITY_LOW,
                    daily_start_minute=0,
                    keep_latest_version=True,
                    roots=[],
                    activated_at=now,
                    token_sha256="",
                    token_expires_at=now,
                    next_backup_at=schedule.next_run(0, now, None, zone),
                    host_id=record.host_id,
                    os=record.os,
                    block_devices=record.devices,
                    activated=False,
                    prepare_by=now,
                )
                if record.released:
                    instance.released = True
                await status.insert(tx, instance, now)
                audit.note(instance_id=instance.instance_id)
            else:
                instance = known
                before = instance.status(now)
                instance.name, instance.region, instance.os = record.name, record.region, record.os
                instance.block_devices = record.devices
                if record.released and not instance.released:
                    await _release(tx, instance, now)
                await status.save(tx, instance, before, now, inventory=True)
            result.append(instance)
    log.info("inventory: %d instance(s) of account %s registered or updated", len(result), account)
    return result


async def release(tx: SchedulerTx, instance: Instance, now: dt.datetime) -> Instance:
    """Release one instance (the caller has loaded and authorized it, locked)."""
    if instance.canceled:
        raise FailedPrecondition(f"backup of instance {instance.instance_id} was canceled; nothing to stop")
    if instance.released:
        return instance
    before = instance.status(now)
    await _release(tx, instance, now)
    await status.save(tx, instance, before, now)
    log.info("instance %s released: backups stopped", instance.instance_id)
    return instance


def merge_enrolled_inventory(instance: Instance, event: events_pb2.AgentEnrolled) -> list[str]:
    """Fill the inventory record of a host the agent enrolled from (ADR 0040): a host activated
    without a record gets the agent's host identity, OS and block devices. A record the inventory
    already has wins over the agent's report; a mismatch is returned as messages for the operator."""
    problems: list[str] = []
    reported = [BlockDevice(d.device, d.size_bytes) for d in event.block_devices if d.device]
    if not instance.host_id and event.host_id.strip():
        instance.host_id = event.host_id.strip()
    elif event.host_id.strip() and event.host_id.strip() != instance.host_id:
        problems.append(
            f"the agent reported host identity {event.host_id.strip()}, the inventory has {instance.host_id}"
        )
    if not instance.os and event.os:
        instance.os = event.os
    if reported:
        instance.reported_capacity_bytes = sum(d.size_bytes for d in reported)
    if not instance.block_devices:
        instance.block_devices = reported[:MAX_DEVICES]
    elif reported:
        inventory_total = instance.inventory_capacity_bytes
        reported_total = sum(d.size_bytes for d in reported)
        if inventory_total != reported_total:
            problems.append(
                f"the agent reports {reported_total} bytes of block devices, the inventory {inventory_total};"
                " billing uses the inventory's"
            )
    return problems


@dataclass
class PreparationSweep:
    failed: list[str] = field(default_factory=list)


async def note_preparation_failures(store: SchedulerStore, clock: Clock, *, batch_size: int = 100) -> PreparationSweep:
    """Publish PREPARATION_FAILED for every instance whose agent did not enroll by its deadline
    (activation + the preparation timeout, default 30 minutes), once per preparation."""
    result = PreparationSweep()
    while True:
        now = clock.now()
        async with store.transaction() as tx:
            overdue = await tx.preparation_overdue(now, batch_size)
            for instance in overdue:
                # The status already reads PREPARATION_FAILED (it is derived from the deadline);
                # what was published last is PREPARING.
                instance.preparation_failure_noted = True
                await tx.update_instance(instance)
                await status.publish(tx, instance, scheduler_pb2.RUNNING_STATUS_PREPARING, now)
                result.failed.append(instance.instance_id)
                log.warning("instance %s: %s", instance.instance_id, instance.status_error(now))
        if len(overdue) < batch_size:
            return result
