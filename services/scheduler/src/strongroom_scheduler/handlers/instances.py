"""Operator operations on an activated instance: read, list, pause, resume, cancel, change settings.

Contract: each call picks its account with ``choose_account`` or authorizes the instance's account
(ADR 0024 addendum); writes take the instance's etag when given. Canceling publishes
``instance-deactivated`` and cancels unfinished jobs; a settings change publishes the settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform import paging
from strongroom_platform.auth import CallAuth, choose_account
from strongroom_platform.events import INSTANCE_DEACTIVATED, new_meta
from strongroom_platform.paging import token_position

from strongroom_scheduler import schedule, status
from strongroom_scheduler.errors import InvalidArgument
from strongroom_scheduler.handlers.common import (
    Deps,
    SettingsInput,
    active_instance,
    authorized_instance,
    enqueue_settings,
    require_activated,
    validate_settings,
)
from strongroom_scheduler.jobs import PRODUCER
from strongroom_scheduler.models import Instance

log = logging.getLogger(__name__)

DEFAULT_INSTANCE_PAGE = 100
MAX_INSTANCE_PAGE = 1000
SETTINGS_FIELDS = ("priority", "daily_start_minute", "keep_latest_version", "roots")


async def get_instance(deps: Deps, instance_id: str, *, call: CallAuth) -> Instance:
    async with deps.store.transaction() as tx:
        return await authorized_instance(tx, instance_id, call=call)


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


async def pause_backup(deps: Deps, instance_id: str, *, call: CallAuth, etag: str = "") -> Instance:
    """Stop scheduling jobs (a running job finishes); idempotent."""
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        instance = await active_instance(tx, instance_id, call=call, etag=etag, now=now)
        require_activated(instance)
        if not instance.paused:
            before = instance.status(now)
            instance.paused = True
            await status.save(tx, instance, before, now)
        return instance


async def resume_backup(deps: Deps, instance_id: str, *, call: CallAuth, etag: str = "") -> Instance:
    """Schedule again from the next daily slot after now; idempotent."""
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        instance = await active_instance(tx, instance_id, call=call, etag=etag, now=now)
        require_activated(instance)
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
        instance = await active_instance(tx, instance_id, call=call, etag=etag, now=now)
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
    validate_settings(settings)
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        instance = await active_instance(tx, instance_id, call=call, etag=etag, now=now)
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
        await enqueue_settings(tx, instance, now)
        return instance
