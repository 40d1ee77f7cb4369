"""Restore jobs act only within the caller's accounts, and a job is created only for a target that can
run it (ADR 0024; the issue's rules for restore destinations).

Foreign points, jobs and targets are refused with exactly the NotFound of an unknown id; a target
of the point's account that cannot run the job is FailedPrecondition with the reason, so nothing
stays QUEUED forever.
"""

from __future__ import annotations

import dataclasses

import pytest
from restore_fixtures import INSTANCES, POINT, T0, call, instance, job
from strongroom.restore.v1 import restore_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_platform import audit
from strongroom_platform.auth import Principal, Role, operator
from strongroom_platform.testing import FakeClock, InMemoryAuditSink
from strongroom_restore import handlers
from strongroom_restore.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SchedulerUnavailable,
)
from strongroom_restore.model import CatalogPoint, RestoreJob
from strongroom_restore.testing import FakeCatalogClient, FakeInstanceDirectory, InMemoryRestoreStore

GLOBEX_ADMIN = operator("token:globex", {"globex": Role.ADMIN})
VIEWER = operator("token:viewer", {"acct": Role.VIEWER})
BOTH = operator("token:both", {"acct": Role.ADMIN, "globex": Role.ADMIN})
ACCT_ADMIN = call("CreateRestoreJob").principal
GLOBEX_POINT = CatalogPoint(
    point_id="g1", instance_id="i-g", account_id="globex", mount_point="/", manifest_key="manifests/g1"
)


@pytest.fixture
def repo() -> InMemoryRestoreStore:
    return InMemoryRestoreStore()


@pytest.fixture
def instances() -> FakeInstanceDirectory:
    return FakeInstanceDirectory(*INSTANCES, instance("i-g", account="globex"))


async def create(
    repo: InMemoryRestoreStore,
    instances: FakeInstanceDirectory,
    principal: Principal = ACCT_ADMIN,
    **fields: object,
) -> RestoreJob:
    request = restore_pb2.CreateRestoreJobRequest(**{"point_id": "p1", **fields})  # type: ignore[arg-type]
    return await handlers.create_restore_job(
        request,
        repo=repo,
        catalog=FakeCatalogClient(POINT, GLOBEX_POINT),
        instances=instances,
        clock=FakeClock(T0),
        call=call("CreateRestoreJob", principal),
    )


async def refused(
    kind: type[Exception], repo: InMemoryRestoreStore, instances: FakeInstanceDirectory, **fields: object
) -> str:
    principal = fields.pop("principal", ACCT_ADMIN)
    with pytest.raises(kind) as info:
        await create(repo, instances, principal, **fields)  # type: ignore[arg-type]
    assert repo.outbox == []  # nothing stored, nothing requested
    return str(info.value)


# --- the point and the jobs: of the caller's accounts only ------------------------------------


async def test_a_point_of_another_account_is_not_found_like_a_random_id(
    repo: InMemoryRestoreStore, instances: FakeInstanceDirectory
) -> None:
    foreign = await refused(NotFound, repo, instances, principal=GLOBEX_ADMIN, point_id="p1")
    missing = await refused(NotFound, repo, instances, principal=GLOBEX_ADMIN, point_id="p-random")
    assert foreign == missing.replace("p-random", "p1") == "backup point 'p1' not found (unknown or expired)"


async def test_a_viewer_cannot_restore(repo: InMemoryRestoreStore, instances: FakeInstanceDirectory) -> None:
    message = await refused(PermissionDenied, repo, instances, principal=VIEWER)
    assert message == "role viewer on account acct cannot restore files"


@pytest.mark.parametrize("method", ["GetRestoreJob", "CancelRestoreJob"])
async def test_a_job_of_another_account_is_not_found_like_a_random_id(repo: InMemoryRestoreStore, method: str) -> None:
    async with repo.transaction() as tx:
        await tx.insert_job(job("r1"))

    async def message(restore_job_id: str) -> str:
        with pytest.raises(NotFound) as info:
            if method == "GetRestoreJob":
                await handlers.get_restore_job(repo, restore_job_id, call=call(method, GLOBEX_ADMIN))
            else:
                await handlers.cancel_restore_job(
                    repo, restore_job_id, clock=FakeClock(T0), call=call(method, GLOBEX_ADMIN)
                )
        return str(info.value)

    assert await message("r1") == (await message("r-random")).replace("r-random", "r1") == "restore job 'r1' not found"
    assert repo.outbox == []
    assert (await handlers.get_restore_job(repo, "r1", call=call("GetRestoreJob"))).status == job().status


async def test_a_viewer_reads_but_cannot_cancel_a_job(repo: InMemoryRestoreStore) -> None:
    async with repo.transaction() as tx:
        await tx.insert_job(job("r1"))
    assert (await handlers.get_restore_job(repo, "r1", call=call("GetRestoreJob", VIEWER))).restore_job_id == "r1"
    with pytest.raises(PermissionDenied, match="role viewer on account acct cannot cancel restore jobs"):
        await handlers.cancel_restore_job(repo, "r1", clock=FakeClock(T0), call=call("CancelRestoreJob", VIEWER))
    assert repo.outbox == []


async def test_lists_hold_only_jobs_of_the_callers_accounts(repo: InMemoryRestoreStore) -> None:
    # a job of another account onto the same instance id (as one made before targets were checked)
    async with repo.transaction() as tx:
        await tx.insert_job(job("r-acct", target="i-dst"))
        await tx.insert_job(dataclasses.replace(job("r-globex", target="i-dst"), account_id="globex"))

    async def listed(principal: Principal, instance_id: str = "i-dst") -> list[str]:
        page = await handlers.list_restore_jobs(repo, instance_id, call=call("ListRestoreJobs", principal))
        return sorted(j.restore_job_id for j in page.jobs)

    assert await listed(VIEWER) == ["r-acct"]
    assert await listed(GLOBEX_ADMIN) == ["r-globex"]
    assert await listed(BOTH) == ["r-acct", "r-globex"]  # by instance id no choice is needed
    assert await listed(GLOBEX_ADMIN, "i-unknown") == []


# --- the target -----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["i-g", "i-random"])
async def test_a_target_of_another_account_or_unknown_is_not_found(
    repo: InMemoryRestoreStore, instances: FakeInstanceDirectory, target: str
) -> None:
    # also for a caller holding both accounts: a point restores within its own account
    message = await refused(NotFound, repo, instances, principal=BOTH, target_instance_id=target, target_path="/r")
    assert message == f"instance {target} not found"


async def test_a_target_in_another_region(repo: InMemoryRestoreStore, instances: FakeInstanceDirectory) -> None:
    instances.add(instance("i-far", region="r2"))
    message = await refused(FailedPrecondition, repo, instances, target_instance_id="i-far", target_path="/r")
    assert message == (
        "instance i-far is in region r2, but point 'p1' was backed up in region r1; "
        "restore onto an instance of region r1"
    )


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (scheduler_pb2.RUNNING_STATUS_STOPPED, "instance i-t is stopped; start it and try again"),
        (
            scheduler_pb2.RUNNING_STATUS_CANCELED,
            "backup of instance i-t was canceled and its agent revoked; restore onto an instance with an active agent",
        ),
        (
            scheduler_pb2.RUNNING_STATUS_PREPARING,
            "the agent of instance i-t has not enrolled yet; install and enroll it first",
        ),
        (
            scheduler_pb2.RUNNING_STATUS_PREPARATION_FAILED,
            "the agent of instance i-t has not enrolled yet; install and enroll it first",
        ),
    ],
)
async def test_a_target_that_cannot_run_the_job(
    repo: InMemoryRestoreStore, instances: FakeInstanceDirectory, status: int, message: str
) -> None:
    instances.add(instance("i-t", status=status))
    assert await refused(FailedPrecondition, repo, instances, target_instance_id="i-t", target_path="/r") == message


async def test_the_points_own_instance_is_checked_too(
    repo: InMemoryRestoreStore, instances: FakeInstanceDirectory
) -> None:
    instances.add(instance("i-src", status=scheduler_pb2.RUNNING_STATUS_CANCELED))
    assert "backup of instance i-src was canceled" in await refused(FailedPrecondition, repo, instances)


async def test_a_paused_target_still_restores(repo: InMemoryRestoreStore, instances: FakeInstanceDirectory) -> None:
    instances.add(instance("i-src", status=scheduler_pb2.RUNNING_STATUS_PAUSED))
    assert (await create(repo, instances)).target_instance_id == "i-src"


async def test_an_unknown_source_instance_leaves_the_region_unchecked(
    repo: InMemoryRestoreStore, instances: FakeInstanceDirectory
) -> None:
    del instances.instances["i-src"]
    message = await refused(FailedPrecondition, repo, instances, target_instance_id="i-dst", target_path="/r")
    assert (
        message == "instance i-src of point 'p1' is unknown to the scheduler, so the point's region cannot be checked"
    )


async def test_scheduler_outage_is_unavailable(repo: InMemoryRestoreStore, instances: FakeInstanceDirectory) -> None:
    instances.unavailable = True
    await refused(SchedulerUnavailable, repo, instances)


# --- onto another instance at the original path ------------------------------------------------


async def test_original_path_on_another_instance_needs_confirmation(
    repo: InMemoryRestoreStore, instances: FakeInstanceDirectory
) -> None:
    message = await refused(FailedPrecondition, repo, instances, target_instance_id="i-dst")
    assert message == (
        "without a target_path the files are restored onto instance i-dst at the original paths of instance i-src "
        "(under /data), overwriting what is there by the conflict policy; give a target_path, or confirm with "
        "confirm_original_path_on_other_instance (strongroom restore create --confirm-original-path)"
    )


async def audited_create(
    repo: InMemoryRestoreStore, instances: FakeInstanceDirectory, **fields: object
) -> tuple[RestoreJob, audit.CallAudit]:
    """``create`` as the auth interceptor runs it: inside the call's audit (ADR 0027)."""
    method = call("CreateRestoreJob", ACCT_ADMIN)
    request = restore_pb2.CreateRestoreJobRequest(**{"point_id": "p1", **fields})  # type: ignore[arg-type]
    state, token = audit.begin(InMemoryAuditSink(), method.method, method.verb, request)
    state.call = method
    try:
        created = await create(repo, instances, **fields)
    finally:
        audit.end(token)
    return created, state


async def test_confirmed_original_path_on_another_instance_is_audited(
    repo: InMemoryRestoreStore, instances: FakeInstanceDirectory
) -> None:
    created, state = await audited_create(
        repo, instances, target_instance_id="i-dst", confirm_original_path_on_other_instance=True
    )
    assert (created.target_instance_id, created.target_path) == ("i-dst", "")
    assert state.accounts == ["acct"]
    assert state.resources == {
        "point_id": "p1",
        "target_instance_id": "i-dst",
        "restore_job_id": created.restore_job_id,
        "source_instance_id": "i-src",
        "original_path_on_other_instance": "confirmed",
        "source_mount_point": "/data",
    }
    record = state.event("OK", "")
    assert record.subject == "token:admin-of-acct" and record.verb == "restore files"


async def test_no_confirmation_needed_with_a_target_path_or_onto_the_source(
    repo: InMemoryRestoreStore, instances: FakeInstanceDirectory
) -> None:
    elsewhere, state = await audited_create(repo, instances, target_instance_id="i-dst", target_path="/srv/restore")
    _, onto_source = await audited_create(repo, instances)
    assert "original_path_on_other_instance" not in state.resources
    assert "original_path_on_other_instance" not in onto_source.resources
    assert "/srv/restore" not in str(state.resources)  # paths are not ids: not recorded
    assert state.resources["restore_job_id"] == elsewhere.restore_job_id
    assert len(repo.outbox) == 2


async def test_a_credential_with_several_accounts_restores_each_accounts_points(
    repo: InMemoryRestoreStore, instances: FakeInstanceDirectory
) -> None:
    # the point says its account; no account_id to choose
    assert (await create(repo, instances, BOTH, point_id="g1")).account_id == "globex"
    assert (await create(repo, instances, BOTH, point_id="p1")).account_id == "acct"
    with pytest.raises(InvalidArgument, match="point_id is required"):
        await create(repo, instances, BOTH, point_id="")
