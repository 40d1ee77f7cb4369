"""Handlers of the events the gateway consumes. Each runs inside the consumer's
transaction, after the event id was claimed, and returns what the live agent
sessions must learn after commit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import secrets
from collections.abc import Sequence

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import Clock
from strongroom_platform.eventbus import PoisonRecord
from strongroom_platform.events import from_timestamp
from strongroom_telemetry.propagation import current_traceparent

from strongroom_gateway.jobs import emit_job_status, finish_job, run_backup_command
from strongroom_gateway.ports import Account, GatewayTx, Instance, Job, JobKind

log = logging.getLogger(__name__)

CONSUMER = "agent-gateway"

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Ids end up in object keys and the credential ("<instance_id>.<secret>").
_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.:-]{0,127}")
# Region and name of an instance, kept for its disaster-recovery record.
_MAX_LABEL = 256


@dataclasses.dataclass(frozen=True, slots=True)
class SessionEffect:
    """After commit: wake the instance's session (new commands), or disconnect it (revoked)."""

    instance_id: str
    disconnect: bool = False


def _require_id(value: str, what: str) -> None:
    if not _ID.fullmatch(value):
        raise PoisonRecord(f"invalid {what} {value!r}")


async def _check_instance_account(
    tx: GatewayTx, instance_id: str, account_id: str, *, for_update: bool = False
) -> Instance | None:
    """The instance (None if unknown here); PoisonRecord if it belongs to another account."""
    instance = await tx.get_instance(instance_id, for_update=for_update)
    if instance is not None and instance.account_id != account_id:
        raise PoisonRecord(f"instance {instance_id} belongs to another account than {account_id!r}")
    return instance


async def handle_instance_activated(
    event: events_pb2.InstanceActivated, *, tx: GatewayTx, clock: Clock
) -> SessionEffect | None:
    """Create the account (with its chunk-id key) if new, and store the token hash."""
    _require_id(event.account_id, "account_id")
    _require_id(event.instance_id, "instance_id")
    token_hash = event.enrollment_token_sha256.lower()
    if not _SHA256_HEX.fullmatch(token_hash):
        raise PoisonRecord("enrollment_token_sha256 is not a SHA-256 hex digest")
    if not event.HasField("token_expires_at"):
        raise PoisonRecord("token_expires_at missing")
    for field, value in (("region", event.region), ("name", event.name)):
        if len(value.encode()) > _MAX_LABEL or "\x00" in value:
            raise PoisonRecord(f"{field} is longer than {_MAX_LABEL} bytes or contains NUL")
    await _check_instance_account(tx, event.instance_id, event.account_id)
    await tx.ensure_account(
        Account(event.account_id, chunk_id_key=secrets.token_bytes(32), chunker_seed=secrets.randbits(32))
    )
    await tx.activate_instance(
        event.instance_id,
        event.account_id,
        token_hash,
        from_timestamp(event.token_expires_at),
        region=event.region,
        name=event.name,
    )
    return None


async def handle_instance_deactivated(
    event: events_pb2.InstanceDeactivated, *, tx: GatewayTx, clock: Clock
) -> SessionEffect | None:
    """Revoke the credential and drop every unfinished job of the instance (reported CANCELED)."""
    instance = await tx.get_instance(event.instance_id, for_update=True)
    if instance is not None and instance.account_id != event.account_id:
        raise PoisonRecord(f"instance {event.instance_id} belongs to another account than {event.account_id!r}")
    await tx.revoke_instance(event.instance_id)
    await tx.revoke_certificates(event.instance_id, now=clock.now(), reason="backup canceled")
    for job in await tx.unfinished_jobs(event.instance_id):
        await finish_job(tx, job, common_pb2.JOB_STATUS_CANCELED, clock, error="backup of the instance was canceled")
    return SessionEffect(event.instance_id, disconnect=True)


@dataclasses.dataclass(frozen=True, slots=True)
class NewJob:
    """A job a request event asks to queue, checked and with its command built (no I/O yet)."""

    job_id: str
    instance_id: str
    account_id: str
    kind: JobKind
    command: gateway_pb2.AgentCommand
    point_id: str | None = None
    start_before: dt.datetime | None = None


def _new_job(
    *,
    job_id: str,
    instance_id: str,
    account_id: str,
    kind: JobKind,
    command: gateway_pb2.AgentCommand,
    point_id: str | None = None,
    start_before: dt.datetime | None = None,
) -> NewJob:
    _require_id(job_id, "job id")
    _require_id(instance_id, "instance_id")
    return NewJob(job_id, instance_id, account_id, kind, command, point_id, start_before)


async def queue_jobs(jobs: Sequence[NewJob], *, tx: GatewayTx, clock: Clock) -> list[SessionEffect]:
    """Queue ``jobs`` in order, as one request at a time would, in a few statements for all of them.

    The instances are read once, locked (in id order): a deactivation of one of them (which locks the
    row too) either committed before — its job is refused below — or waits for this commit and then
    cancels the job. A job id already known (cancelled before it was requested, or a duplicate) is
    left alone. An instance of another account than its request says is a PoisonRecord.
    """
    if not jobs:
        return []
    instances = await tx.get_instances([job.instance_id for job in jobs], for_update=True)
    for new in jobs:
        instance = instances.get(new.instance_id)
        if instance is not None and instance.account_id != new.account_id:
            raise PoisonRecord(f"instance {new.instance_id} belongs to another account than {new.account_id!r}")
    rows = [
        Job(
            job_id=new.job_id,
            instance_id=new.instance_id,
            account_id=new.account_id,
            kind=new.kind,
            command=new.command.SerializeToString(),
            state="queued",
            cancel_requested=False,
            created_at=clock.now(),
            point_id=new.point_id,
            start_before=new.start_before,
        )
        for new in jobs
    ]
    inserted = await tx.insert_jobs(rows)
    effects: list[SessionEffect] = []
    for job in rows:
        if job.job_id not in inserted:
            log.info("job %s already known (cancelled before it was requested, or a duplicate)", job.job_id)
            continue
        inserted.discard(job.job_id)  # a second request of the same id in this batch is a duplicate
        instance = instances.get(job.instance_id)
        if instance is not None and instance.revoked:
            error = "backup is deactivated for the instance"
            await finish_job(tx, job, common_pb2.JOB_STATUS_FAILED, clock, error=error)
            continue
        effects.append(SessionEffect(job.instance_id))
    return effects


def job_requested(event: events_pb2.JobRequested) -> NewJob:
    """The backup job a job-requested event asks for (call it with the event's consumer span current)."""
    command = run_backup_command(event.job_id, event.priority, event.roots)
    # The consumer's span continues the trace of the call that requested the job (ADR 0039); the
    # agent's job span continues it in turn.
    command.run_backup.traceparent = current_traceparent() or ""
    start_before = from_timestamp(event.start_before) if event.HasField("start_before") else None
    return _new_job(
        job_id=event.job_id,
        instance_id=event.instance_id,
        account_id=event.account_id,
        kind="backup",
        command=command,
        start_before=start_before,
    )


def restore_requested(event: events_pb2.RestoreRequested) -> NewJob:
    """The restore job on the target instance a restore-requested event asks for."""
    _require_id(event.point_id, "point_id")
    policy = event.conflict_policy
    if policy not in gateway_pb2.ConflictPolicy.values():
        raise PoisonRecord(f"unknown conflict policy {policy}")
    command = gateway_pb2.AgentCommand(
        run_restore=gateway_pb2.RunRestore(
            restore_job_id=event.restore_job_id,
            point_id=event.point_id,
            include_paths=list(event.include_paths),
            exclude_paths=list(event.exclude_paths),
            target_path=event.target_path,
            conflict_policy=gateway_pb2.ConflictPolicy.ValueType(policy),
            source_mount_point=event.source_mount_point,
            traceparent=current_traceparent() or "",
        )
    )
    return _new_job(
        job_id=event.restore_job_id,
        instance_id=event.target_instance_id,
        account_id=event.account_id,
        kind="restore",
        command=command,
        point_id=event.point_id,
    )


async def handle_job_requested(event: events_pb2.JobRequested, *, tx: GatewayTx, clock: Clock) -> SessionEffect | None:
    """Queue a backup job; the session delivers it now if the agent is connected, else on connect."""
    effects = await queue_jobs([job_requested(event)], tx=tx, clock=clock)
    return effects[0] if effects else None


async def handle_restore_requested(
    event: events_pb2.RestoreRequested, *, tx: GatewayTx, clock: Clock
) -> SessionEffect | None:
    """Queue a restore job on the target instance."""
    effects = await queue_jobs([restore_requested(event)], tx=tx, clock=clock)
    return effects[0] if effects else None


async def _cancel(
    tx: GatewayTx, clock: Clock, *, job_id: str, instance_id: str, account_id: str, kind: JobKind
) -> SessionEffect | None:
    job = await tx.get_job(job_id, for_update=True)
    if job is None:
        # The cancel overtook the request (different topics): leave a finished
        # tombstone so the request, when it arrives, is ignored.
        _require_id(job_id, "job id")
        tombstone = Job(job_id, instance_id, account_id, kind, b"", "finished", True, clock.now())
        await tx.insert_job(tombstone)
        await emit_job_status(tx, tombstone, common_pb2.JOB_STATUS_CANCELED, clock)
        return None
    if job.instance_id != instance_id or job.account_id != account_id or job.kind != kind:
        raise PoisonRecord(f"cancel of job {job_id} names another instance, account or kind")
    if job.state == "finished" or job.cancel_requested:
        return None
    if job.state == "queued":
        await finish_job(tx, dataclasses.replace(job, cancel_requested=True), common_pb2.JOB_STATUS_CANCELED, clock)
        return SessionEffect(instance_id)
    # Delivered: the agent gets a CancelJob and reports the final status itself.
    await tx.update_job(dataclasses.replace(job, cancel_requested=True))
    await emit_job_status(tx, job, common_pb2.JOB_STATUS_CANCELING, clock)
    return SessionEffect(instance_id)


async def handle_job_cancel_requested(
    event: events_pb2.JobCancelRequested, *, tx: GatewayTx, clock: Clock
) -> SessionEffect | None:
    return await _cancel(
        tx, clock, job_id=event.job_id, instance_id=event.instance_id, account_id=event.account_id, kind="backup"
    )


async def handle_restore_cancel_requested(
    event: events_pb2.RestoreCancelRequested, *, tx: GatewayTx, clock: Clock
) -> SessionEffect | None:
    return await _cancel(
        tx,
        clock,
        job_id=event.restore_job_id,
        instance_id=event.target_instance_id,
        account_id=event.account_id,
        kind="restore",
    )


async def handle_version_expired(
    event: events_pb2.VersionExpired, *, tx: GatewayTx, clock: Clock
) -> SessionEffect | None:
    """Record that the version's points expired: from now on they keep no pack (ADR 0041).

    A point the gateway never recorded holds no storage and is skipped; a point of another account
    or version is a forged or corrupt event (dead-lettered, nothing recorded).
    """
    _require_id(event.account_id, "account_id")
    _require_id(event.version_id, "version_id")
    expired_at = from_timestamp(event.meta.occurred_at) if event.meta.HasField("occurred_at") else clock.now()
    for point_id in event.point_ids:
        _require_id(point_id, "point_id")
        point = await tx.get_point(point_id)
        if point is None:
            log.warning("version-expired names point %s, which the gateway has not recorded", point_id)
            continue
        if point.account_id != event.account_id or point.version_id != event.version_id:
            raise PoisonRecord(f"point {point_id} is not a point of version {event.version_id} of {event.account_id}")
        await tx.expire_point(point_id, event.version_id, expired_at)
    return None
