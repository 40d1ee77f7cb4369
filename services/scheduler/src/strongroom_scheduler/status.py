"""Publishing the running status: every change of an instance's status, by its real trigger, is an
``instance-status-changed`` event in the transaction that made it (ADR 0040).

The status is derived from facts (``Instance.status``); a handler takes the status before its
change (``before = instance.status(now)``) and saves through :func:`save`, which writes the row and
publishes the event when the status moved. Consumers (billing's inventory counts, alerts) keep the
newest event per instance: each carries the inventory record as it is now.
"""

from __future__ import annotations

import datetime as dt

from strongroom.events.v1 import events_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_platform.alerts import account_alert
from strongroom_platform.events import ALERT_RAISED, INSTANCE_STATUS_CHANGED, new_meta

from strongroom_scheduler.jobs import PRODUCER
from strongroom_scheduler.models import Instance
from strongroom_scheduler.ports import SchedulerTx

GIB = 1 << 30
NEW = 0  # previous status of an instance that did not exist (RUNNING_STATUS_UNSPECIFIED)


def status_event(instance: Instance, previous: int, now: dt.datetime) -> events_pb2.InstanceStatusChanged:
    return events_pb2.InstanceStatusChanged(
        meta=new_meta(PRODUCER, now),
        account_id=instance.account_id,
        instance_id=instance.instance_id,
        region=instance.region,
        name=instance.name,
        host_id=instance.host_id,
        previous_status=previous,
        status=instance.status(now),
        error=instance.status_error(now),
        activated=instance.activated,
        released=instance.released,
        inventory_capacity_bytes=instance.inventory_capacity_bytes,
    )


# Statuses the account is alerted of when an instance enters them (ADR 0037), and the text used
# when the instance carries no error of its own.
_ALERTED: dict[int, tuple[events_pb2.AlertKind.ValueType, str]] = {
    scheduler_pb2.RUNNING_STATUS_PREPARATION_FAILED: (
        events_pb2.ALERT_KIND_PREPARATION_FAILED,
        "the backup client did not enroll in time; see the instance's error and install it again",
    ),
    scheduler_pb2.RUNNING_STATUS_STOPPED: (
        events_pb2.ALERT_KIND_INSTANCE_STOPPED,
        "the inventory says the instance is gone: its backups stopped, its versions stay restorable until they expire",
    ),
}


async def publish(tx: SchedulerTx, instance: Instance, previous: int, now: dt.datetime) -> None:
    """Enqueue the instance's status (and inventory) as it is now; ``previous`` = NEW for a new one.

    Entering PREPARATION_FAILED or STOPPED also raises the account's alert, in the same transaction.
    """
    event = status_event(instance, previous, now)
    await tx.enqueue(INSTANCE_STATUS_CHANGED, instance.instance_id, event)
    alerted = _ALERTED.get(event.status)
    if alerted is not None and previous != event.status:
        kind, default = alerted
        alert = account_alert(
            kind,
            producer=PRODUCER,
            now=now,
            account_id=instance.account_id,
            instance_id=instance.instance_id,
            instance_name=instance.name,
            reason=event.error or default,
        )
        await tx.enqueue(ALERT_RAISED, instance.instance_id, alert)


def capacity_mismatch(instance: Instance) -> str:
    """Why the inventory's and the agent's block devices disagree ("" when they agree or either is unknown)."""
    inventory, reported = instance.inventory_capacity_bytes, instance.reported_capacity_bytes
    if not inventory or not reported or inventory == reported:
        return ""
    return (
        f"the inventory gives the instance {inventory} bytes of block devices ({inventory / GIB:.1f} GiB), its agent"
        f" reports {reported} bytes ({reported / GIB:.1f} GiB): billing uses the inventory's; correct the inventory"
        " (strongroom inventory register) if it is out of date"
    )


async def note_capacity_mismatch(tx: SchedulerTx, instance: Instance, now: dt.datetime) -> None:
    """Raise ALERT_KIND_CAPACITY_MISMATCH when the instance's totals differ, once per differing pair:
    the same mismatch seen again (every enrollment, every inventory sync) raises nothing, a new one
    does, and agreement clears it. The caller writes the row."""
    reason = capacity_mismatch(instance)
    key = f"{instance.inventory_capacity_bytes}:{instance.reported_capacity_bytes}" if reason else ""
    if key == instance.capacity_mismatch_noted:
        return
    instance.capacity_mismatch_noted = key
    if reason:
        alert = account_alert(
            events_pb2.ALERT_KIND_CAPACITY_MISMATCH,
            producer=PRODUCER,
            now=now,
            account_id=instance.account_id,
            instance_id=instance.instance_id,
            instance_name=instance.name,
            reason=reason,
        )
        await tx.enqueue(ALERT_RAISED, instance.instance_id, alert)


async def insert(tx: SchedulerTx, instance: Instance, now: dt.datetime) -> None:
    """Insert a new instance and publish its first status."""
    await tx.insert_instance(instance)
    await publish(tx, instance, NEW, now)


async def save(tx: SchedulerTx, instance: Instance, before: int, now: dt.datetime, *, inventory: bool = False) -> None:
    """Update the row; publish when the status moved from ``before`` (or, with ``inventory``, when
    the inventory record changed, so that billing's capacity follows it, and alert a new capacity
    mismatch)."""
    if inventory:
        await note_capacity_mismatch(tx, instance, now)
    await tx.update_instance(instance)
    if instance.status(now) != before or inventory:
        await publish(tx, instance, before, now)
