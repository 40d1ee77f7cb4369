"""Shared steps of the scheduler tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform.auth import CallAuth, Principal, Role, operator
from strongroom_platform.events import new_meta
from strongroom_platform.testing import call_for
from strongroom_scheduler import handlers
from strongroom_scheduler.handlers import Deps, SettingsInput
from strongroom_scheduler.models import Instance

SERVICE = "/strongroom.scheduler.v1.SchedulerService/"


def admin(account: str = "acme") -> Principal:
    """An admin of ``account`` only."""
    return operator(f"token:admin-of-{account}", {account: Role.ADMIN})


def call(method: str, principal: Principal | None = None) -> CallAuth:
    """The ``CallAuth`` of ``principal`` (default: an admin of acme) calling the scheduler's ``method``."""
    return call_for(SERVICE + method, principal or admin())


def meta(deps: Deps) -> common_pb2.EventMeta:
    return new_meta("agent-gateway", deps.clock.now())


async def activate(deps: Deps, minute: int | None = None, **kwargs: object) -> Instance:
    settings = SettingsInput(daily_start_minute=minute) if minute is not None else None
    instance, _ = await handlers.activate_backup(
        deps,
        account_id=str(kwargs.get("account_id", "acme")),
        name=str(kwargs.get("name", "web-1")),
        region=str(kwargs.get("region", "cn-hangzhou")),
        settings=settings,
        call=call("ActivateBackup", admin(str(kwargs.get("account_id", "acme")))),
    )
    return instance


async def enroll(deps: Deps, instance_id: str, hostname: str = "web-1.example") -> events_pb2.AgentEnrolled:
    event = events_pb2.AgentEnrolled(meta=meta(deps), account_id="acme", instance_id=instance_id, hostname=hostname)
    await handlers.handle_agent_enrolled(event, deps)
    return event


async def active_instance(deps: Deps, minute: int | None = None) -> Instance:
    instance = await activate(deps, minute)
    await enroll(deps, instance.instance_id)
    return await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))


def job_update(
    deps: Deps, job_id: str, instance_id: str, status: int, *, error: str = "", version_id: str = "", files: int = 0
) -> events_pb2.JobUpdated:
    return events_pb2.JobUpdated(
        meta=meta(deps),
        account_id="acme",
        instance_id=instance_id,
        job_id=job_id,
        status=status,  # type: ignore[arg-type]
        error=error,
        version_id=version_id,
        stats=common_pb2.JobStats(files_scanned=files),
    )


async def update_job(deps: Deps, job_id: str, instance_id: str, status: int, **kwargs: object) -> None:
    await handlers.handle_job_updated(job_update(deps, job_id, instance_id, status, **kwargs), deps)  # type: ignore[arg-type]


def random_id() -> str:
    return str(uuid.uuid4())


async def finished_jobs(deps: Deps, advance: Callable[[int], object], instance_id: str, count: int) -> list[str]:
    """``count`` completed jobs of the instance, oldest first; pairs share a creation time (``advance``
    moves the test clock by seconds after every second job), so the order's tie-breaker is exercised."""
    ids = []
    for n in range(count):
        job = await handlers.run_backup_now(deps, instance_id, call=call("RunBackupNow"))
        await update_job(deps, job.job_id, instance_id, common_pb2.JOB_STATUS_COMPLETE)
        ids.append(job.job_id)
        if n % 2:
            advance(1)
    return ids


async def every_job_page(deps: Deps, instance_id: str, page_size: int) -> list[list[str]]:
    """The job ids of every page of ``ListJobs``, following the tokens to the last page."""
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await handlers.list_jobs(deps, instance_id, page_size, page_token=token, call=call("ListJobs"))
        pages.append([j.job_id for j in page.jobs])
        if not page.next_page_token:
            return pages
        token = page.next_page_token
