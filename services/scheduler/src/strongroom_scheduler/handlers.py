"""All scheduler logic: operator operations and event handlers, over the ``SchedulerStore`` port.

Each function runs in one transaction: the state change and the events it
produces (through the outbox) commit together. Errors are raised as
``errors.NotFound`` / ``InvalidArgument`` / ``FailedPrecondition`` with a
message meant for the operator.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import random
import secrets
import uuid
from dataclasses import dataclass, field

from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform import audit, paging
from strongroom_platform.alerts import account_alert
from strongroom_platform.auth import CallAuth, authorize, choose_account
from strongroom_platform.clock import Clock
from strongroom_platform.events import (
    ALERT_RAISED,
    INSTANCE_ACTIVATED,
    INSTANCE_DEACTIVATED,
    INSTANCE_SETTINGS_CHANGED,
    JOB_CANCEL_REQUESTED,
    from_timestamp,
    new_meta,
    to_timestamp,
)
from strongroom_platform.paging import token_position
from strongroom_platform.telemetry import Metrics, instruments
from strongroom_platform.zones import DEFAULT_ZONE

from strongroom_scheduler import inventory, schedule, status
from strongroom_scheduler.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from strongroom_scheduler.inventory import DEFAULT_PREPARATION_TIMEOUT
from strongroom_scheduler.jobs import PRODUCER, start_job
from strongroom_scheduler.models import (
    FINISHED_JOB_STATUSES,
    PRIORITIES,
    SUCCESSFUL_JOB_STATUSES,
    TRIGGER_MANUAL,
    UNFINISHED_JOB_STATUSES,
    Instance,
    Job,
    job_status_name,
)
from strongroom_scheduler.ports import AuditQuery, SchedulerStore, SchedulerTx

log = logging.getLogger(__name__)

CONSUMER = "scheduler"
AUDIT_CONSUMER = "scheduler.audit-recorded"
TOKEN_VALIDITY = dt.timedelta(hours=24)
DEFAULT_JOB_LIMIT = 50
DEFAULT_INSTANCE_PAGE = 100
MAX_INSTANCE_PAGE = 1000
MAX_JOB_LIMIT = 1000
DEFAULT_AUDIT_PAGE = 100
MAX_AUDIT_PAGE = 1000
SETTINGS_FIELDS = ("priority", "daily_start_minute", "keep_latest_version", "roots")


ENROLLMENT_TOKEN_PREFIX = "sre_"


def new_enrollment_token() -> str:
    """A one-time enrollment token: ``sre_`` + 43 URL-safe characters (256 random bits).

    The prefix names what it is in logs and secret scanners, and keeps the token from starting
    with ``-``, which a command line (``strongroom-agent enroll --token -x...``) would read as an
    option: a bare ``token_urlsafe`` does so once in 64 activations.
    """
    return ENROLLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass
class Deps:
    """What the handlers need; ``rng`` picks default start times (seeded in tests)."""

    store: SchedulerStore
    clock: Clock
    rng: random.Random = field(default_factory=random.Random)
    # The zone whose midnights daily start minutes count from (STRONGROOM_ZONE, default UTC+8).
    zone: dt.tzinfo = DEFAULT_ZONE
    # How long an activated instance's agent has to enroll before PREPARATION_FAILED (ADR 0040).
    preparation_timeout: dt.timedelta = DEFAULT_PREPARATION_TIMEOUT
    # Jobs, bytes and last successes (ADR 0039); the process's meter provider unless a test gives one.
    metrics: Metrics = field(default_factory=instruments)


@dataclass(frozen=True, slots=True)
class SettingsInput:
    """Backup settings to apply; ``None`` = keep the current value (or take the default)."""

    priority: int | None = None
    daily_start_minute: int | None = None
    keep_latest_version: bool | None = None
    roots: list[str] | None = None


def token_sha256(token: str) -> str:
    """Hex SHA-256 of an enrollment token (the only form that is stored or published)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _validate_settings(settings: SettingsInput) -> None:
    if settings.priority is not None and settings.priority not in PRIORITIES:
        raise InvalidArgument(f"priority must be BACKUP_PRIORITY_LOW or BACKUP_PRIORITY_HIGH, got {settings.priority}")
    if settings.daily_start_minute is not None:
        try:
            schedule.validate_minute(settings.daily_start_minute)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
    for root in settings.roots or []:
        if not root or root != root.strip():
            raise InvalidArgument(f"backup roots must be non-empty paths without surrounding spaces, got {root!r}")
    if settings.roots is not None and len(set(settings.roots)) != len(settings.roots):
        raise InvalidArgument("backup roots must not repeat")


def _require_id(value: str, what: str) -> str:
    if not value.strip():
        raise InvalidArgument(f"{what} is required")
    return value.strip()


async def _instance(
    tx: SchedulerTx,
    instance_id: str,
    *,
    call: CallAuth,
    for_update: bool = False,
    etag: str = "",
    now: dt.datetime | None = None,
) -> Instance:
    """The instance, if the caller may perform ``call`` on it; an instance of another account is
    refused exactly like an unknown id. With ``etag`` (read locked, ``for_update``) it must still be
    the instance the caller read at ``now`` (``Aborted`` otherwise): the check and the write that
    follows are one transaction, so no other change slips in between."""

    def not_found() -> NotFound:
        return NotFound(f"instance {instance_id} not found")

    instance = await tx.get_instance(_require_id(instance_id, "instance_id"), for_update=for_update)
    if instance is None:
        raise not_found()
    authorize(instance.account_id, not_found, call=call)
    if etag:
        assert for_update and now is not None, "an etag is checked on the locked row, at the handler's now"
        current = instance.etag(now)
        if etag != current:
            raise Aborted(
                f"instance {instance_id} changed since etag {etag} was read (now {current}); nothing was changed: "
                "read it again and retry"
            )
    return instance


async def _active_instance(
    tx: SchedulerTx, instance_id: str, *, call: CallAuth, etag: str = "", now: dt.datetime | None = None
) -> Instance:
    instance = await _instance(tx, instance_id, call=call, for_update=True, etag=etag, now=now)
    if instance.canceled:
        raise FailedPrecondition(f"backup of instance {instance_id} was canceled; activate it again to back it up")
    return instance


def _require_activated(instance: Instance) -> None:
    if not instance.activated:
        raise FailedPrecondition(f"backup of instance {instance.instance_id} is not activated; activate it first")
    if instance.released:
        raise FailedPrecondition(f"the inventory says instance {instance.instance_id} is gone; its backups stopped")


async def _enqueue_settings(tx: SchedulerTx, instance: Instance, now: dt.datetime) -> None:
    """Publish the instance's settings as they are now (the catalog's retention reads
    ``keep_latest_version``); every change sends all of them, so the newest event is the truth."""
    event = events_pb2.InstanceSettingsChanged(
        meta=new_meta(PRODUCER, now),
        account_id=instance.account_id,
        instance_id=instance.instance_id,
        keep_latest_version=instance.keep_latest_version,
        priority=instance.priority,  # type: ignore[arg-type]  # a BackupPriority value
        daily_start_minute=instance.daily_start_minute,
    )
    await tx.enqueue(INSTANCE_SETTINGS_CHANGED, instance.instance_id, event)


async def _job(tx: SchedulerTx, job_id: str, *, call: CallAuth, for_update: bool = False) -> Job:
    """The job, if the caller may perform ``call`` on it; a job of another account is refused
    exactly like an unknown id."""

    def not_found() -> NotFound:
        return NotFound(f"backup job {job_id} not found")

    job = await tx.get_job(_require_id(job_id, "job_id"), for_update=for_update)
    if job is None:
        raise not_found()
    authorize(job.account_id, not_found, call=call)
    return job


# --- operator operations ---------------------------------------------------------------
# Each takes the ``CallAuth`` of the RPC (``call=``, ADR 0024 addendum): account-keyed calls pick
# their account with ``choose_account``; calls by id load the resource and ``authorize`` its account.


async def activate_backup(
    deps: Deps,
    *,
    account_id: str,
    name: str,
    region: str,
    settings: SettingsInput | None,
    call: CallAuth,
    instance_id: str = "",
    host_id: str = "",
) -> tuple[Instance, str]:
    """Activate backup and return the instance (PREPARING) and its one-time enrollment token.

    ``instance_id`` activates an instance registered in the inventory; ``host_id`` activates the
    registered instance of that host, or registers a new one with it; neither: a new instance whose
    host identity its agent reports at enrollment. A host already activated is refused (the seed:
    one backup method per instance). The instance belongs to ``choose_account(account_id)``.
    """
    account = choose_account(account_id.strip(), call=call)
    settings = settings or SettingsInput()
    _validate_settings(settings)
    host = inventory.check_host_id(host_id, "activation") if host_id.strip() else ""
    now = deps.clock.now()
    minute = settings.daily_start_minute
    if minute is None:
        minute = deps.rng.randrange(schedule.DEFAULT_WINDOW_MINUTES)
    token = new_enrollment_token()
    async with deps.store.transaction() as tx:
        known: Instance | None = None
        if instance_id.strip():
            known = await _instance(tx, instance_id, call=call, for_update=True)
            if known.account_id != account:
                raise InvalidArgument(
                    f"instance {known.instance_id} belongs to account {known.account_id}, not {account}"
                )
            if host and known.host_id and host != known.host_id:
                raise InvalidArgument(f"instance {known.instance_id} is host {known.host_id}, not {host}")
        elif host:
            known = await tx.instance_of_host(account, host, for_update=True)
        if known is not None:
            instance = known
            if instance.canceled:
                raise FailedPrecondition(
                    f"backup of instance {instance.instance_id} was canceled; activate the host again"
                )
            if instance.activated:
                raise AlreadyExists(
                    f"instance {instance.instance_id} (host {instance.host_id or instance.hostname or '?'}) is"
                    " already activated: one backup per host"
                )
            if instance.released:
                raise FailedPrecondition(
                    f"the inventory says instance {instance.instance_id} is gone; it cannot be activated"
                )
            before = instance.status(now)
            instance.host_id = instance.host_id or host
        else:
            if not name.strip():
                raise InvalidArgument("name is required")
            if not region.strip():
                raise InvalidArgument("region is required")
            before = status.NEW
            instance = Instance(
                instance_id=str(uuid.uuid4()),
                account_id=account,
                name=name.strip(),
                region=region.strip(),
                priority=common_pb2.BACKUP_PRIORITY_LOW,
                daily_start_minute=minute,
                keep_latest_version=True,
                roots=[],
                activated_at=now,
                token_sha256="",
                token_expires_at=now,
                next_backup_at=now,
                host_id=host,
            )
        instance.activated = True
        instance.activated_at = now
        if settings.priority is not None:
            instance.priority = settings.priority
        instance.daily_start_minute = minute
        instance.keep_latest_version = True if settings.keep_latest_version is None else settings.keep_latest_version
        instance.roots = list(settings.roots or [])
        instance.token_sha256 = token_sha256(token)
        instance.token_expires_at = now + TOKEN_VALIDITY
        instance.prepare_by = now + deps.preparation_timeout
        instance.preparation_failure_noted = False
        instance.next_backup_at = schedule.next_run(minute, now, None, deps.zone)
        if before == status.NEW:
            await status.insert(tx, instance, now)
        else:
            await status.save(tx, instance, before, now)
        audit.note(instance_id=instance.instance_id)
        await tx.enqueue(INSTANCE_ACTIVATED, instance.instance_id, _activated_event(instance, now))
        await _enqueue_settings(tx, instance, now)
    log.info("activated backup of instance %s (%s) in %s", instance.instance_id, instance.name, instance.region)
    return instance, token


def _activated_event(instance: Instance, now: dt.datetime) -> events_pb2.InstanceActivated:
    return events_pb2.InstanceActivated(
        meta=new_meta(PRODUCER, now),
        account_id=instance.account_id,
        instance_id=instance.instance_id,
        region=instance.region,
        enrollment_token_sha256=instance.token_sha256,
        token_expires_at=to_timestamp(instance.token_expires_at),
        name=instance.name,
    )


async def issue_enrollment_token(
    deps: Deps, instance_id: str, *, call: CallAuth, etag: str = ""
) -> tuple[Instance, str]:
    """A new one-time enrollment token for an existing, not canceled instance (ADR 0032).

    Its agent enrolls with it to the **same** instance id: after a rebuild from the bucket (the
    agents' credentials were lost with the database), or on a reinstalled server. The gateway
    learns the token from ``instance-activated`` as for a new instance; a credential the agent
    already holds stays valid until the new token is used.
    """
    now = deps.clock.now()
    token = new_enrollment_token()
    audit.note(instance_id=instance_id)
    async with deps.store.transaction() as tx:
        instance = await _active_instance(tx, instance_id, call=call, etag=etag, now=now)
        if not instance.activated:
            raise FailedPrecondition(f"backup of instance {instance_id} is not activated; activate it instead")
        if instance.released:
            raise FailedPrecondition(f"the inventory says instance {instance_id} is gone")
        before = instance.status(now)
        instance.token_sha256 = token_sha256(token)
        instance.token_expires_at = now + TOKEN_VALIDITY
        if not instance.enrolled:
            # A new preparation: the agent has the timeout again (PREPARATION_FAILED -> PREPARING).
            instance.prepare_by = now + deps.preparation_timeout
            instance.preparation_failure_noted = False
        await status.save(tx, instance, before, now)
        await tx.enqueue(INSTANCE_ACTIVATED, instance.instance_id, _activated_event(instance, now))
    log.info("issued a new enrollment token for instance %s", instance_id)
    return instance, token


async def get_instance(deps: Deps, instance_id: str, *, call: CallAuth) -> Instance:
    async with deps.store.transaction() as tx:
        return await _instance(tx, instance_id, call=call)


@dataclass(frozen=True, slots=True)
class InstancePage:
    instances: list[Instance]
    next_page_token: str  # empty on the last page


async def list_instances(
    deps: Deps, account_id: str, region: str, *, page_size: int = 0, page_token: str = "", call: CallAuth
) -> InstancePage:
    """One page of the instances of ``choose_account(account_id)`` with backup activated, oldest
    activation first (canceled ones are removed from the list, as in the seed)."""
    account = choose_account(account_id.strip(), call=call)
    size = paging.page_size(page_size, DEFAULT_INSTANCE_PAGE, MAX_INSTANCE_PAGE)
    after = token_position(page_token)
    async with deps.store.transaction() as tx:
        found = await tx.list_instances(account, region.strip(), include_canceled=False, after=after, limit=size + 1)
    return InstancePage(*paging.keyset_page(found, size, lambda i: (i.activated_at, i.instance_id)))


async def run_backup_now(deps: Deps, instance_id: str, *, call: CallAuth) -> Job:
    """Start a manual backup job; the instance must be enrolled, active and idle."""
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        instance = await _active_instance(tx, instance_id, call=call)
        if not instance.activated:
            raise FailedPrecondition(f"backup of instance {instance_id} is not activated; activate it first")
        if instance.released:
            raise FailedPrecondition(f"the inventory says instance {instance_id} is gone; its backups stopped")
        if instance.paused:
            raise FailedPrecondition(f"backup of instance {instance_id} is paused; resume it first")
        if not instance.enrolled:
            raise FailedPrecondition(
                f"the agent of instance {instance_id} has not enrolled yet; install and enroll it first"
            )
        unfinished = await tx.unfinished_jobs(instance.instance_id)
        if unfinished:
            job = unfinished[0]
            raise FailedPrecondition(
                f"backup job {job.job_id} of instance {instance_id} is still {job_status_name(job.status)}; "
                "wait for it to finish or cancel it"
            )
        job = await start_job(tx, instance, TRIGGER_MANUAL, now)
        audit.note(job_id=job.job_id)
        return job


async def pause_backup(deps: Deps, instance_id: str, *, call: CallAuth, etag: str = "") -> Instance:
    """Stop scheduling jobs (a running job finishes); idempotent."""
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        instance = await _active_instance(tx, instance_id, call=call, etag=etag, now=now)
        _require_activated(instance)
        if not instance.paused:
            before = instance.status(now)
            instance.paused = True
            await status.save(tx, instance, before, now)
        return instance


async def resume_backup(deps: Deps, instance_id: str, *, call: CallAuth, etag: str = "") -> Instance:
    """Schedule again from the next daily slot after now; idempotent."""
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        instance = await _active_instance(tx, instance_id, call=call, etag=etag, now=now)
        _require_activated(instance)
        if instance.paused:
            before = instance.status(now)
            instance.paused = False
            instance.next_backup_at = schedule.next_run(
                instance.daily_start_minute, now, instance.last_scheduled_on, deps.zone
            )
            await status.save(tx, instance, before, now)
        return instance


async def cancel_backup(deps: Deps, instance_id: str, *, call: CallAuth, etag: str = "") -> Instance:
    """Cancel backup (the seed: deletes every point, stops billing, removes the instance from the
    list, uninstalls the client): ``instance-deactivated`` revokes the agent and tells it to
    uninstall (gateway), hides the versions at once and deletes them when their locks pass
    (catalog; an admin may reinstate them until then, ADR 0040), stops billing; unfinished jobs are
    canceled. The inventory keeps the host: it may be activated again."""
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        instance = await _active_instance(tx, instance_id, call=call, etag=etag, now=now)
        before = instance.status(now)
        for job in await tx.unfinished_jobs(instance.instance_id):
            job.status = common_pb2.JOB_STATUS_CANCELED
            job.error = "backup of the instance was canceled"
            job.finished_at = now
            await tx.update_job(job)
        instance.canceled = True
        instance.backing_up = False
        await status.save(tx, instance, before, now)
        event = events_pb2.InstanceDeactivated(
            meta=new_meta(PRODUCER, now), account_id=instance.account_id, instance_id=instance.instance_id
        )
        await tx.enqueue(INSTANCE_DEACTIVATED, instance.instance_id, event)
    log.info("canceled backup of instance %s", instance.instance_id)
    return instance


async def update_settings(
    deps: Deps, instance_id: str, settings: SettingsInput, mask: list[str], *, call: CallAuth, etag: str = ""
) -> Instance:
    """Change the fields named in ``mask``.

    A new priority applies from the next job. A new start time follows the
    seed's "modify next backup time" rules (see ``schedule.next_run``).
    """
    if not mask:
        raise InvalidArgument(f"update_mask is empty; name the fields to change: {', '.join(SETTINGS_FIELDS)}")
    unknown = sorted(set(mask) - set(SETTINGS_FIELDS))
    if unknown:
        raise InvalidArgument(f"unknown update_mask field(s) {', '.join(unknown)}; valid: {', '.join(SETTINGS_FIELDS)}")
    _validate_settings(settings)
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        instance = await _active_instance(tx, instance_id, call=call, etag=etag, now=now)
        if "priority" in mask:
            assert settings.priority is not None
            instance.priority = settings.priority
        if "keep_latest_version" in mask:
            assert settings.keep_latest_version is not None
            instance.keep_latest_version = settings.keep_latest_version
        if "roots" in mask:
            instance.roots = list(settings.roots or [])
        if "daily_start_minute" in mask:
            assert settings.daily_start_minute is not None
            instance.daily_start_minute = settings.daily_start_minute
            instance.next_backup_at = schedule.next_run(
                instance.daily_start_minute, now, instance.last_scheduled_on, deps.zone
            )
        await tx.update_instance(instance)
        await _enqueue_settings(tx, instance, now)
        return instance


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[Job]
    next_page_token: str  # empty on the last page


async def list_jobs(
    deps: Deps, instance_id: str, page_size: int = 0, *, page_token: str = "", call: CallAuth
) -> JobPage:
    """One page of the instance's jobs, newest first; ``page_size`` 0 = the default (50)."""
    size = paging.page_size(page_size, DEFAULT_JOB_LIMIT, MAX_JOB_LIMIT)
    after = token_position(page_token)
    async with deps.store.transaction() as tx:
        instance = await _instance(tx, instance_id, call=call)
        found = await tx.list_jobs(instance.instance_id, size + 1, after=after)
    return JobPage(*paging.keyset_page(found, size, lambda j: (j.created_at, j.job_id)))


async def get_job(deps: Deps, job_id: str, *, call: CallAuth) -> Job:
    async with deps.store.transaction() as tx:
        return await _job(tx, job_id, call=call)


async def cancel_job(deps: Deps, job_id: str, *, call: CallAuth) -> Job:
    """Cancel an unfinished job.

    A queued job is canceled at once; a running one becomes CANCELING until
    the agent confirms. Both ask the gateway to stop it (``job-cancel-requested``).
    Canceling a CANCELING job again changes nothing.
    """
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        job = await _job(tx, job_id, call=call, for_update=True)
        if job.finished:
            raise FailedPrecondition(f"backup job {job_id} already finished ({job_status_name(job.status)})")
        if job.status == common_pb2.JOB_STATUS_CANCELING:
            return job
        if job.status == common_pb2.JOB_STATUS_RUNNING:
            job.status = common_pb2.JOB_STATUS_CANCELING
        else:
            job.status = common_pb2.JOB_STATUS_CANCELED
            job.error = "canceled by the operator before it started"
            job.finished_at = now
        await tx.update_job(job)
        event = events_pb2.JobCancelRequested(
            meta=new_meta(PRODUCER, now), account_id=job.account_id, instance_id=job.instance_id, job_id=job.job_id
        )
        await tx.enqueue(JOB_CANCEL_REQUESTED, job.instance_id, event)
        return job


# --- the audit trail (ADR 0027) --------------------------------------------------------------


async def list_audit_events(
    deps: Deps,
    account_id: str,
    *,
    page_size: int,
    page_token: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    subject: str,
    call: CallAuth,
) -> tuple[list[events_pb2.AuditRecorded], str]:
    """One page of the audit trail of ``choose_account(account_id)`` (admins), newest first, and the
    token of the next page ("" on the last)."""
    account = choose_account(account_id.strip(), call=call)
    limit = paging.page_size(page_size, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE)
    if since is not None and until is not None and since >= until:
        raise InvalidArgument("since must be before until")
    query = AuditQuery(
        account_id=account,
        limit=limit + 1,
        since=since,
        until=until,
        subject=subject.strip(),
        after=token_position(page_token),
    )
    async with deps.store.transaction() as tx:
        events = await tx.list_audit_events(query)
    return paging.keyset_page(events, limit, lambda e: (from_timestamp(e.meta.occurred_at), e.meta.event_id))


async def handle_audit_recorded(event: events_pb2.AuditRecorded, deps: Deps) -> None:
    """Keep one audit record (any service's) in the append-only table. Idempotent by event id."""
    if not event.method or not event.subject or not event.result_code:
        raise InvalidArgument(f"audit record {event.meta.event_id} lacks its method, subject or result")
    async with deps.store.transaction() as tx:
        if not await tx.claim_event(AUDIT_CONSUMER, event.meta.event_id):
            return
        await tx.insert_audit_event(event)


# --- event handlers ----------------------------------------------------------------------


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
    instance_id = _require_id(event.instance_id, "instance_id")
    account_id = _require_id(event.account_id, "account_id")
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
        await _enqueue_settings(tx, instance, now)
    log.info("instance %s of account %s recovered from the bucket", instance_id, account_id)


async def handle_job_updated(event: events_pb2.JobUpdated, deps: Deps) -> None:
    """Apply a job's progress or result, and the instance's running status. Idempotent.

    A finished job never changes again, and a CANCELING job is not moved back
    to RUNNING. A FAILED result records the instance's last error; FAILED and
    PARTIAL_COMPLETE raise an alert (``alert-raised``, in the same transaction).
    """
    ended: Job | None = None
    async with deps.store.transaction() as tx:
        if not await tx.claim_event(CONSUMER, event.meta.event_id):
            return
        job = await tx.get_job(event.job_id, for_update=True)
        if job is None:
            log.warning("job-updated for unknown job %s ignored", event.job_id)
            return
        new_status = int(event.status)
        if job.finished:
            log.info(
                "job-updated %s for finished job %s (%s) ignored",
                job_status_name(new_status),
                job.job_id,
                job_status_name(job.status),
            )
            return
        if new_status not in UNFINISHED_JOB_STATUSES | FINISHED_JOB_STATUSES:
            log.warning("job-updated for job %s with invalid status %d ignored", job.job_id, new_status)
            return
        finished = new_status not in UNFINISHED_JOB_STATUSES
        if finished or not _is_backwards(job.status, new_status):
            job.status = new_status
        job.stats.CopyFrom(event.stats)
        if event.error:
            job.error = event.error
        if event.version_id:
            job.version_id = event.version_id
        if event.file_errors:
            job.file_errors = list(event.file_errors)
        if finished:
            has_time = event.meta.HasField("occurred_at")
            job.finished_at = from_timestamp(event.meta.occurred_at) if has_time else deps.clock.now()
        await tx.update_job(job)
        instance = await tx.get_instance(job.instance_id, for_update=True)
        if instance is not None:
            now = deps.clock.now()
            before = instance.status(now)
            instance.backing_up = job.status in (common_pb2.JOB_STATUS_RUNNING, common_pb2.JOB_STATUS_CANCELING)
            if event.agent_version:
                instance.agent_version = event.agent_version
            if job.status in SUCCESSFUL_JOB_STATUSES:
                instance.succeeded_once = True
                instance.last_error = ""
            elif job.status == common_pb2.JOB_STATUS_FAILED:
                instance.last_error = job.error or "backup job failed"
            await status.save(tx, instance, before, now)
            await _alert_finished_job(tx, instance, job, now)
        ended = job if finished else None
    if ended is not None:
        record_finished_backup(deps.metrics, ended)


MAX_ALERT_FILE_ERRORS = 5


async def _alert_finished_job(tx: SchedulerTx, instance: Instance, job: Job, now: dt.datetime) -> None:
    """Raise the alert of a failed or partially completed backup job (ADR 0037)."""
    if job.status == common_pb2.JOB_STATUS_FAILED:
        kind = events_pb2.ALERT_KIND_BACKUP_FAILED
        reason = job.error or "backup job failed"
    elif job.status == common_pb2.JOB_STATUS_PARTIAL_COMPLETE:
        kind = events_pb2.ALERT_KIND_BACKUP_PARTIAL
        failed = job.stats.files_failed or len(job.file_errors)
        reason = f"{failed} file(s) could not be backed up; version {job.version_id or '(none)'} lacks them"
        if job.file_errors:
            shown = "; ".join(job.file_errors[:MAX_ALERT_FILE_ERRORS])
            more = len(job.file_errors) - MAX_ALERT_FILE_ERRORS
            reason += f": {shown}" + (f"; and {more} more (strongroom jobs get {job.job_id})" if more > 0 else "")
    else:
        return
    alert = account_alert(
        kind,
        producer=PRODUCER,
        now=now,
        account_id=instance.account_id,
        instance_id=instance.instance_id,
        instance_name=instance.name,
        job_id=job.job_id,
        reason=reason,
    )
    await tx.enqueue(ALERT_RAISED, instance.instance_id, alert)


def record_finished_backup(metrics: Metrics, job: Job) -> None:
    """Count a finished backup: its status and duration, its bytes, its instance's last success."""
    duration = (job.finished_at - job.created_at).total_seconds() if job.finished_at is not None else None
    metrics.job_finished("backup", job_status_name(job.status), duration)
    succeeded = job.status in SUCCESSFUL_JOB_STATUSES
    stats = job.stats
    metrics.backup_bytes(
        read=stats.bytes_read, unchanged=stats.bytes_unchanged, uploaded=stats.bytes_uploaded, ratio=succeeded
    )
    if succeeded and job.finished_at is not None:
        metrics.last_success.set(job.finished_at.timestamp(), {"instance_id": job.instance_id})


_PROGRESS_ORDER: dict[int, int] = {
    common_pb2.JOB_STATUS_CREATED: 0,
    common_pb2.JOB_STATUS_QUEUED: 1,
    common_pb2.JOB_STATUS_RUNNING: 2,
    common_pb2.JOB_STATUS_CANCELING: 3,
}


def _is_backwards(current: int, new: int) -> bool:
    """True if an unfinished status would move the job back (e.g. CANCELING -> RUNNING)."""
    return _PROGRESS_ORDER.get(new, 0) < _PROGRESS_ORDER.get(current, 0)


# --- the inventory and the lifecycle (ADR 0040) -------------------------------------------------


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
        instance = await _instance(tx, instance_id, call=call, for_update=True, etag=etag, now=now)
        return await inventory.release(tx, instance, now)


async def handle_instance_reinstated(event: events_pb2.InstanceReinstated, deps: Deps) -> None:
    """An admin reinstated a canceled instance's versions (catalog, ADR 0040): the instance is
    listed again, PAUSED, with its agent not enrolled (it uninstalled itself at the cancel): an
    operator issues a new enrollment token, installs the agent and resumes. Idempotent."""
    instance_id = _require_id(event.instance_id, "instance_id")
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
