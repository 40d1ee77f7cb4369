"""Every operator operation acts only within the caller's accounts (ADR 0024).

An instance or job of another account is refused with exactly the NotFound of an unknown id (no
oracle); a role too weak for the operation is PermissionDenied; list and create calls act on the
account the credential chooses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from scheduler_helpers import activate, active_instance, admin, call, random_id
from strongroom.common.v1 import common_pb2
from strongroom_platform.auth import Principal, Role, operator, service
from strongroom_platform.events import INSTANCE_ACTIVATED
from strongroom_scheduler import handlers
from strongroom_scheduler.errors import InvalidArgument, NotFound, PermissionDenied
from strongroom_scheduler.handlers import Deps, SettingsInput
from strongroom_scheduler.testing import InMemorySchedulerStore

GLOBEX_ADMIN = admin("globex")
ACME_VIEWER = operator("token:viewer", {"acme": Role.VIEWER})
ACME_OPERATOR = operator("token:operator", {"acme": Role.OPERATOR})
BOTH = operator("token:both", {"acme": Role.ADMIN, "globex": Role.VIEWER})

InstanceOp = Callable[[Deps, str, Principal], Awaitable[object]]

# Every operation addressed by instance id: (rule, the call with that principal).
INSTANCE_OPS: dict[str, InstanceOp] = {
    "GetInstance": lambda d, i, p: handlers.get_instance(d, i, call=call("GetInstance", p)),
    "RunBackupNow": lambda d, i, p: handlers.run_backup_now(d, i, call=call("RunBackupNow", p)),
    "PauseBackup": lambda d, i, p: handlers.pause_backup(d, i, call=call("PauseBackup", p)),
    "ResumeBackup": lambda d, i, p: handlers.resume_backup(d, i, call=call("ResumeBackup", p)),
    "CancelBackup": lambda d, i, p: handlers.cancel_backup(d, i, call=call("CancelBackup", p)),
    "UpdateSettings": lambda d, i, p: handlers.update_settings(
        d, i, SettingsInput(keep_latest_version=False), ["keep_latest_version"], call=call("UpdateSettings", p)
    ),
    "ListJobs": lambda d, i, p: handlers.list_jobs(d, i, 0, call=call("ListJobs", p)),
}
JOB_OPS: dict[str, InstanceOp] = {
    "GetJob": lambda d, j, p: handlers.get_job(d, j, call=call("GetJob", p)),
    "CancelJob": lambda d, j, p: handlers.cancel_job(d, j, call=call("CancelJob", p)),
}
MUTATING_INSTANCE_OPS = ["RunBackupNow", "PauseBackup", "ResumeBackup", "CancelBackup", "UpdateSettings"]


async def refusal(operation: Awaitable[object], kind: type[Exception]) -> str:
    with pytest.raises(kind) as info:
        await operation
    return str(info.value)


@pytest.mark.parametrize("method", sorted(INSTANCE_OPS))
async def test_an_instance_of_another_account_is_not_found_like_a_random_id(
    deps: Deps, store: InMemorySchedulerStore, method: str
) -> None:
    op = INSTANCE_OPS[method]
    instance = await active_instance(deps)
    before = len(store.outbox)
    unknown = random_id()
    foreign = await refusal(op(deps, instance.instance_id, GLOBEX_ADMIN), NotFound)
    missing = await refusal(op(deps, unknown, GLOBEX_ADMIN), NotFound)
    assert foreign == missing.replace(unknown, instance.instance_id) == f"instance {instance.instance_id} not found"
    assert len(store.outbox) == before
    after = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert (after.paused, after.canceled, after.keep_latest_version) == (False, False, True)


async def test_a_canceled_instance_of_another_account_does_not_say_canceled(deps: Deps) -> None:
    instance = await active_instance(deps)
    await handlers.cancel_backup(deps, instance.instance_id, call=call("CancelBackup"))
    for method in MUTATING_INSTANCE_OPS:
        message = await refusal(INSTANCE_OPS[method](deps, instance.instance_id, GLOBEX_ADMIN), NotFound)
        assert message == f"instance {instance.instance_id} not found"


@pytest.mark.parametrize("method", sorted(JOB_OPS))
async def test_a_job_of_another_account_is_not_found_like_a_random_id(
    deps: Deps, store: InMemorySchedulerStore, method: str
) -> None:
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    before = len(store.outbox)
    unknown = random_id()
    foreign = await refusal(JOB_OPS[method](deps, job.job_id, GLOBEX_ADMIN), NotFound)
    missing = await refusal(JOB_OPS[method](deps, unknown, GLOBEX_ADMIN), NotFound)
    assert foreign == missing.replace(unknown, job.job_id) == f"backup job {job.job_id} not found"
    assert len(store.outbox) == before
    assert (await handlers.get_job(deps, job.job_id, call=call("GetJob"))).status == common_pb2.JOB_STATUS_QUEUED


@pytest.mark.parametrize("method", MUTATING_INSTANCE_OPS)
async def test_a_viewer_cannot_change_an_instance(deps: Deps, store: InMemorySchedulerStore, method: str) -> None:
    instance = await active_instance(deps)
    before = len(store.outbox)
    message = await refusal(INSTANCE_OPS[method](deps, instance.instance_id, ACME_VIEWER), PermissionDenied)
    assert message.startswith("role viewer on account acme cannot ")
    assert len(store.outbox) == before


async def test_a_viewer_reads_but_cannot_cancel_a_job_or_activate(deps: Deps) -> None:
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    assert (await handlers.get_job(deps, job.job_id, call=call("GetJob", ACME_VIEWER))).job_id == job.job_id
    listed = await handlers.list_jobs(deps, instance.instance_id, 0, call=call("ListJobs", ACME_VIEWER))
    assert [j.job_id for j in listed.jobs] == [job.job_id]
    got = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance", ACME_VIEWER))
    assert got.instance_id == instance.instance_id
    message = await refusal(
        handlers.cancel_job(deps, job.job_id, call=call("CancelJob", ACME_VIEWER)), PermissionDenied
    )
    assert message == "role viewer on account acme cannot cancel jobs"
    activation = handlers.activate_backup(
        deps, account_id="", name="web", region="r", settings=None, call=call("ActivateBackup", ACME_VIEWER)
    )
    assert await refusal(activation, PermissionDenied) == "role viewer on account acme cannot activate backup"


async def test_only_an_admin_cancels_backup(deps: Deps) -> None:
    instance = await active_instance(deps)
    paused = await handlers.pause_backup(deps, instance.instance_id, call=call("PauseBackup", ACME_OPERATOR))
    assert paused.paused
    message = await refusal(INSTANCE_OPS["CancelBackup"](deps, instance.instance_id, ACME_OPERATOR), PermissionDenied)
    assert message == "role operator on account acme cannot cancel backups"


async def test_lists_hold_only_the_callers_account(deps: Deps) -> None:
    mine = await activate(deps, account_id="globex")
    await activate(deps, account_id="acme")
    listed = await handlers.list_instances(deps, "", "", call=call("ListInstances", GLOBEX_ADMIN))
    assert [i.instance_id for i in listed.instances] == [mine.instance_id]
    asked_for_acme = handlers.list_instances(deps, "acme", "", call=call("ListInstances", GLOBEX_ADMIN))
    assert await refusal(asked_for_acme, NotFound) == "account acme not found"
    asked_for_nobody = handlers.list_instances(deps, "nobody", "", call=call("ListInstances", GLOBEX_ADMIN))
    assert await refusal(asked_for_nobody, NotFound) == "account nobody not found"


async def test_activation_goes_to_the_credentials_account_only(deps: Deps, store: InMemorySchedulerStore) -> None:
    instance, _ = await handlers.activate_backup(
        deps, account_id="", name="web", region="r", settings=None, call=call("ActivateBackup", GLOBEX_ADMIN)
    )
    assert instance.account_id == "globex"
    foreign = handlers.activate_backup(
        deps, account_id="acme", name="web", region="r", settings=None, call=call("ActivateBackup", GLOBEX_ADMIN)
    )
    assert await refusal(foreign, NotFound) == "account acme not found"
    assert len(store.events(INSTANCE_ACTIVATED)) == 1


async def test_a_credential_with_several_accounts_must_choose(deps: Deps) -> None:
    acme = await activate(deps, account_id="acme")
    globex = await activate(deps, account_id="globex")
    unchosen = handlers.list_instances(deps, "", "", call=call("ListInstances", BOTH))
    assert "holds several accounts (acme, globex); choose one with account_id" in await refusal(
        unchosen, InvalidArgument
    )
    for account, expected in (("acme", acme), ("globex", globex)):
        listed = await handlers.list_instances(deps, account, "", call=call("ListInstances", BOTH))
        assert [i.instance_id for i in listed.instances] == [expected.instance_id]
    activation = handlers.activate_backup(
        deps, account_id="", name="web", region="r", settings=None, call=call("ActivateBackup", BOTH)
    )
    assert "choose one with account_id" in await refusal(activation, InvalidArgument)
    # by id, no choice is needed: the resource says its account, and the role on it applies
    await handlers.pause_backup(deps, acme.instance_id, call=call("PauseBackup", BOTH))
    refused = handlers.pause_backup(deps, globex.instance_id, call=call("PauseBackup", BOTH))
    assert await refusal(refused, PermissionDenied) == "role viewer on account globex cannot pause backups"


async def test_the_restore_service_reads_instances_of_every_account(deps: Deps) -> None:
    instance = await activate(deps, account_id="globex")
    restore = service("restore")
    got = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance", restore))
    assert got.account_id == "globex"
    missing = handlers.get_instance(deps, "nope", call=call("GetInstance", restore))
    assert await refusal(missing, NotFound) == "instance nope not found"
