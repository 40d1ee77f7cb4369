"""An instance's lifecycle outside the operator's backup settings: enrollment, recovery from the
bucket, the inventory (register, release) and reinstatement (ADR 0032, 0040).

Contract: the event handlers are idempotent by event id and ignore events for unknown (or, as
stated, canceled) instances; a host is backed up by one instance at most.
"""

from __future__ import annotations

import logging

from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform.auth import CallAuth
from strongroom_platform.events import from_timestamp

from strongroom_scheduler import inventory, schedule, status
from strongroom_scheduler.handlers.common import CONSUMER, Deps, authorized_instance, enqueue_settings, require_id
from strongroom_scheduler.models import Instance

log = logging.getLogger(__name__)


async def handle_agent_enrolled(event: events_pb2.AgentEnrolled, deps: Deps) -> None:
    """The instance's agent enrolled: it is READY for its first backup. Idempotent."""
    async with deps.store.transaction() as tx:
        if not await tx.claim_event(CONSUMER, event.meta.event_id):
            return
        instance = await tx.get_instance(event.instance_id, for_update=True)
        if instance is None:
            log.warning("agent-enrolled for unknown instance %s ignored", event.instance_id)
            return
        if instance.canceled:
            log.warning("agent-enrolled for canceled instance %s ignored", event.instance_id)
            return
        now = deps.clock.now()
        before = instance.status(now)
        instance.enrolled = True
        instance.hostname = event.hostname
        instance.agent_version = event.agent_version
        problems = inventory.merge_enrolled_inventory(instance, event)
        if instance.host_id:
            other = await tx.instance_of_host(instance.account_id, instance.host_id)
            if other is not None and other.instance_id != instance.instance_id:
                # Activated twice without a host identity: the second one stays unenrolled.
                problems.append(f"host {instance.host_id} is backed up by instance {other.instance_id} already")
                instance.host_id = ""
                instance.enrolled = False
        if problems:
            instance.last_error = "; ".join(problems)
            log.warning("instance %s enrollment: %s", instance.instance_id, instance.last_error)
        await status.save(tx, instance, before, now, inventory=True)
    log.info("agent of instance %s enrolled (host %s)", event.instance_id, event.hostname)


async def handle_instance_recovered(event: events_pb2.InstanceRecovered, deps: Deps) -> None:
    """An instance rebuilt from the bucket (ADR 0032): known again, with default settings, its agent
    not enrolled and no valid token (an operator issues one). An instance already known stays as it is."""
    instance_id = require_id(event.instance_id, "instance_id")
    account_id = require_id(event.account_id, "account_id")
    now = deps.clock.now()
    minute = deps.rng.randrange(schedule.DEFAULT_WINDOW_MINUTES)
    async with deps.store.transaction() as tx:
        if not await tx.claim_event(CONSUMER, event.meta.event_id):
            return
        if await tx.get_instance(instance_id) is not None:
            log.info("instance-recovered for known instance %s ignored", instance_id)
            return
        instance = Instance(
            instance_id=instance_id,
            account_id=account_id,
            name=event.name.strip() or event.hostname.strip() or instance_id,
            region=event.region.strip() or "unknown",
            priority=common_pb2.BACKUP_PRIORITY_LOW,
            daily_start_minute=minute,
            keep_latest_version=True,
            roots=[],
            activated_at=from_timestamp(event.meta.occurred_at),
            # No token: nothing hashes to "", and it has expired; IssueEnrollmentToken gives one.
            token_sha256="",
            token_expires_at=now,
            next_backup_at=schedule.next_run(minute, now, None),
            hostname=event.hostname,
            preparation_failure_noted=True,
        )
        await status.insert(tx, instance, now)
        await enqueue_settings(tx, instance, now)
    log.info("instance %s of account %s recovered from the bucket", instance_id, account_id)


async def register_instances(
    deps: Deps, account_id: str, records: list[inventory.InventoryInput], *, call: CallAuth
) -> list[Instance]:
    """Register hosts before activation, or update the inventory record of known ones (``inventory``)."""
    return await inventory.register_instances(deps.store, deps.clock, account_id, records, call=call, zone=deps.zone)


async def release_instance(deps: Deps, instance_id: str, *, call: CallAuth, etag: str = "") -> Instance:
    """The inventory says the instance is gone: STOPPED, its jobs stop, its versions stay
    restorable until they expire. Idempotent."""
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        instance = await authorized_instance(tx, instance_id, call=call, for_update=True, etag=etag, now=now)
        return await inventory.release(tx, instance, now)


async def handle_instance_reinstated(event: events_pb2.InstanceReinstated, deps: Deps) -> None:
    """An admin reinstated a canceled instance's versions (catalog, ADR 0040): the instance is
    listed again, PAUSED, with its agent not enrolled (it uninstalled itself at the cancel): an
    operator issues a new enrollment token, installs the agent and resumes. Idempotent."""
    instance_id = require_id(event.instance_id, "instance_id")
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        if not await tx.claim_event(CONSUMER, event.meta.event_id):
            return
        instance = await tx.get_instance(instance_id, for_update=True)
        if instance is None or not instance.canceled:
            log.info("instance-reinstated for %s ignored: not a canceled instance here", instance_id)
            return
        before = instance.status(now)
        notes = ["backup reinstated: issue a new enrollment token, install the agent, then resume"]
        if instance.host_id:
            other = await tx.instance_of_host(instance.account_id, instance.host_id)
            if other is not None:
                notes.append(f"host {instance.host_id} now belongs to instance {other.instance_id}")
                instance.host_id = ""
        instance.canceled = False
        instance.paused = True
        instance.enrolled = False
        instance.backing_up = False
        instance.token_sha256 = ""
        instance.token_expires_at = now
        instance.prepare_by = now
        instance.preparation_failure_noted = True
        instance.last_error = "; ".join(notes)
        await status.save(tx, instance, before, now)
    log.info("instance %s reinstated (%d versions)", instance_id, len(event.version_ids))
