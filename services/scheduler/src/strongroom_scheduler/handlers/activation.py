"""Activating backup of an instance and issuing its one-time enrollment tokens.

Contract: ``activate_backup`` activates a registered instance, the registered instance of a host,
or a new one (one backup per host), PREPARING until its agent enrolls, and publishes
``instance-activated`` and its settings; ``issue_enrollment_token`` gives an existing instance a new
token (ADR 0032). Only the token's SHA-256 is stored or published.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import uuid

from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform import audit
from strongroom_platform.auth import CallAuth, choose_account
from strongroom_platform.events import INSTANCE_ACTIVATED, new_meta, to_timestamp

from strongroom_scheduler import inventory, schedule, status
from strongroom_scheduler.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from strongroom_scheduler.handlers.common import (
    Deps,
    SettingsInput,
    active_instance,
    authorized_instance,
    enqueue_settings,
    validate_settings,
)
from strongroom_scheduler.jobs import PRODUCER
from strongroom_scheduler.models import Instance

log = logging.getLogger(__name__)

TOKEN_VALIDITY = dt.timedelta(hours=24)

ENROLLMENT_TOKEN_PREFIX = "sre_"


def new_enrollment_token() -> str:
    """A one-time enrollment token: ``sre_`` + 43 URL-safe characters (256 random bits).

    The prefix names what it is in logs and secret scanners, and keeps the token from starting
    with ``-``, which a command line (``strongroom-agent enroll --token -x...``) would read as an
    option: a bare ``token_urlsafe`` does so once in 64 activations.
    """
    return ENROLLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    """Hex SHA-256 of an enrollment token (the only form that is stored or published)."""
    return hashlib.sha256(token.encode()).hexdigest()


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
    validate_settings(settings)
    host = inventory.check_host_id(host_id, "activation") if host_id.strip() else ""
    now = deps.clock.now()
    minute = settings.daily_start_minute
    if minute is None:
        minute = deps.rng.randrange(schedule.DEFAULT_WINDOW_MINUTES)
    token = new_enrollment_token()
    async with deps.store.transaction() as tx:
        known: Instance | None = None
        if instance_id.strip():
            known = await authorized_instance(tx, instance_id, call=call, for_update=True)
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
        await enqueue_settings(tx, instance, now)
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
        instance = await active_instance(tx, instance_id, call=call, etag=etag, now=now)
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
