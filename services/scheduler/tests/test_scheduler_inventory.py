"""The inventory and every status transition by its real trigger (ADR 0040), on the fake store."""

from __future__ import annotations

import datetime as dt

import pytest
from scheduler_helpers import admin, call, update_job
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_platform.events import (
    ALERT_RAISED,
    INSTANCE_ACTIVATED,
    INSTANCE_STATUS_CHANGED,
    JOB_CANCEL_REQUESTED,
    new_meta,
)
from strongroom_platform.testing import FakeClock
from strongroom_scheduler import handlers, schedule
from strongroom_scheduler.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from strongroom_scheduler.handlers import Deps
from strongroom_scheduler.inventory import InventoryInput, note_preparation_failures
from strongroom_scheduler.models import BlockDevice, Instance
from strongroom_scheduler.testing import InMemorySchedulerStore

S = scheduler_pb2
GIB = 1 << 30


def record(host: str, **kwargs: object) -> InventoryInput:
    values: dict[str, object] = {
        "host_id": host,
        "name": f"web-{host}",
        "region": "cn-hangzhou",
        "os": "linux",
        "block_devices": [BlockDevice("/dev/vda", 40 * GIB), BlockDevice("/dev/vdb", 20 * GIB)],
    }
    values.update(kwargs)
    return InventoryInput(**values)  # type: ignore[arg-type]


def statuses(store: InMemorySchedulerStore, instance_id: str) -> list[tuple[int, int]]:
    """(previous, status) of every instance-status-changed of the instance, in order."""
    return [
        (e.previous_status, e.status)
        for e in store.events(INSTANCE_STATUS_CHANGED)
        if isinstance(e, events_pb2.InstanceStatusChanged) and e.instance_id == instance_id
    ]


async def register(deps: Deps, *records: InventoryInput) -> list[Instance]:
    return await handlers.register_instances(deps, "acme", list(records), call=call("RegisterInstances"))


async def enrolled(deps: Deps, instance_id: str, **kwargs: object) -> None:
    event = events_pb2.AgentEnrolled(
        meta=new_meta("agent-gateway", deps.clock.now()), account_id="acme", instance_id=instance_id, hostname="h"
    )
    for name, value in kwargs.items():
        if name == "block_devices":
            event.block_devices.extend(value)  # type: ignore[arg-type]
        else:
            setattr(event, name, value)
    await handlers.handle_agent_enrolled(event, deps)


async def test_every_status_by_its_real_trigger(deps: Deps, store: InMemorySchedulerStore, clock: FakeClock) -> None:
    [instance] = await register(deps, record("m-1"))
    iid = instance.instance_id
    assert instance.status(clock.now()) == S.RUNNING_STATUS_NOT_ACTIVATED
    assert instance.inventory_capacity_bytes == 60 * GIB
    activated, _ = await handlers.activate_backup(
        deps, account_id="", name="", region="", settings=None, call=call("ActivateBackup"), instance_id=iid
    )
    assert (activated.name, activated.region) == ("web-m-1", "cn-hangzhou")  # from the inventory record
    await enrolled(deps, iid, host_id="m-1")
    job = await handlers.run_backup_now(deps, iid, call=call("RunBackupNow"))
    await update_job(deps, job.job_id, iid, common_pb2.JOB_STATUS_RUNNING)
    await update_job(deps, job.job_id, iid, common_pb2.JOB_STATUS_COMPLETE, version_id="v1")
    await handlers.pause_backup(deps, iid, call=call("PauseBackup"))
    await handlers.resume_backup(deps, iid, call=call("ResumeBackup"))
    await handlers.release_instance(deps, iid, call=call("ReleaseInstance"))
    await handlers.release_instance(deps, iid, call=call("ReleaseInstance"))  # idempotent: no event
    assert statuses(store, iid) == [
        (0, S.RUNNING_STATUS_NOT_ACTIVATED),
        (S.RUNNING_STATUS_NOT_ACTIVATED, S.RUNNING_STATUS_PREPARING),
        (S.RUNNING_STATUS_PREPARING, S.RUNNING_STATUS_READY),
        (S.RUNNING_STATUS_READY, S.RUNNING_STATUS_BACKING_UP),
        (S.RUNNING_STATUS_BACKING_UP, S.RUNNING_STATUS_RUNNING),
        (S.RUNNING_STATUS_RUNNING, S.RUNNING_STATUS_PAUSED),
        (S.RUNNING_STATUS_PAUSED, S.RUNNING_STATUS_RUNNING),
        (S.RUNNING_STATUS_RUNNING, S.RUNNING_STATUS_STOPPED),
    ]
    stopped = await handlers.get_instance(deps, iid, call=call("GetInstance"))
    assert "gone" in stopped.status_error(clock.now())
    # entering STOPPED alerts the account (ADR 0037), once
    [alert] = [e for e in store.events(ALERT_RAISED) if isinstance(e, events_pb2.AlertRaised)]
    assert (alert.kind, alert.account_id, alert.instance_id) == (events_pb2.ALERT_KIND_INSTANCE_STOPPED, "acme", iid)
    assert alert.reason == stopped.status_error(clock.now())
    # A stopped instance is never scheduled again, nor backed up by hand.
    clock.advance(days=2)
    assert (await schedule.schedule_due(store, clock)).created == []
    with pytest.raises(FailedPrecondition, match="gone"):
        await handlers.run_backup_now(deps, iid, call=call("RunBackupNow"))


async def test_preparation_fails_after_the_timeout_with_the_error_and_once(
    deps: Deps, store: InMemorySchedulerStore, clock: FakeClock
) -> None:
    deps.preparation_timeout = dt.timedelta(minutes=30)
    instance, _ = await handlers.activate_backup(
        deps, account_id="acme", name="web", region="r", settings=None, call=call("ActivateBackup"), host_id="m-9"
    )
    clock.advance(minutes=29)
    assert (await note_preparation_failures(store, clock)).failed == []
    clock.advance(minutes=1)
    assert (await note_preparation_failures(store, clock)).failed == [instance.instance_id]
    assert (await note_preparation_failures(store, clock)).failed == []
    [*_, failed] = [e for e in store.events(INSTANCE_STATUS_CHANGED) if isinstance(e, events_pb2.InstanceStatusChanged)]
    assert (failed.previous_status, failed.status) == (S.RUNNING_STATUS_PREPARING, S.RUNNING_STATUS_PREPARATION_FAILED)
    assert "did not enroll" in failed.error and "issue a new enrollment token" in failed.error
    # PREPARATION_FAILED alerts the account with the same error, once (ADR 0037)
    [alert] = [e for e in store.events(ALERT_RAISED) if isinstance(e, events_pb2.AlertRaised)]
    assert (alert.kind, alert.instance_id, alert.instance_name) == (
        events_pb2.ALERT_KIND_PREPARATION_FAILED,
        instance.instance_id,
        "web",
    )
    assert alert.reason == failed.error
    # A new token is a new preparation; the late agent's enrollment makes it READY.
    await handlers.issue_enrollment_token(deps, instance.instance_id, call=call("IssueEnrollmentToken"))
    await enrolled(deps, instance.instance_id)
    assert statuses(store, instance.instance_id)[-2:] == [
        (S.RUNNING_STATUS_PREPARATION_FAILED, S.RUNNING_STATUS_PREPARING),
        (S.RUNNING_STATUS_PREPARING, S.RUNNING_STATUS_READY),
    ]


async def test_a_second_activation_of_one_host_is_refused(deps: Deps, store: InMemorySchedulerStore) -> None:
    [instance] = await register(deps, record("m-1"))
    await handlers.activate_backup(
        deps, account_id="acme", name="", region="", settings=None, call=call("ActivateBackup"), host_id="m-1"
    )
    for kwargs in ({"host_id": "m-1"}, {"instance_id": instance.instance_id}):
        with pytest.raises(AlreadyExists, match="already activated"):
            await handlers.activate_backup(
                deps, account_id="acme", name="x", region="r", settings=None, call=call("ActivateBackup"), **kwargs
            )
    # An instance activated without a host identity that turns out to be the same host at enrollment
    # stays unenrolled, with the reason.
    twin, _ = await handlers.activate_backup(
        deps, account_id="acme", name="twin", region="r", settings=None, call=call("ActivateBackup")
    )
    await enrolled(deps, twin.instance_id, host_id="m-1")
    after = await handlers.get_instance(deps, twin.instance_id, call=call("GetInstance"))
    assert not after.enrolled and "backed up by instance" in after.last_error
    assert len(store.events(INSTANCE_ACTIVATED)) == 2


async def test_an_unregistered_host_is_registered_by_its_agent(deps: Deps, clock: FakeClock) -> None:
    instance, _ = await handlers.activate_backup(
        deps, account_id="acme", name="web", region="r", settings=None, call=call("ActivateBackup")
    )
    devices = [common_pb2.BlockDevice(device="/dev/vda", size_bytes=50 * GIB)]
    await enrolled(deps, instance.instance_id, host_id="machine-abc", os="linux", block_devices=devices)
    after = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert (after.host_id, after.os, after.block_devices) == (
        "machine-abc",
        "linux",
        [BlockDevice("/dev/vda", 50 * GIB)],
    )
    assert after.status(clock.now()) == S.RUNNING_STATUS_READY


async def test_the_inventory_wins_over_the_agent_and_says_so(deps: Deps) -> None:
    [instance] = await register(deps, record("m-1"))
    await handlers.activate_backup(
        deps, account_id="acme", name="", region="", settings=None, call=call("ActivateBackup"), host_id="m-1"
    )
    devices = [common_pb2.BlockDevice(device="/dev/vda", size_bytes=10 * GIB)]
    await enrolled(deps, instance.instance_id, host_id="m-1", block_devices=devices)
    after = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert after.inventory_capacity_bytes == 60 * GIB
    assert "the inventory" in after.last_error and "billing uses the inventory's" in after.last_error


def mismatch_alerts(store: InMemorySchedulerStore, instance_id: str) -> list[str]:
    return [
        e.reason
        for e in store.events(ALERT_RAISED)
        if isinstance(e, events_pb2.AlertRaised)
        and e.kind == events_pb2.ALERT_KIND_CAPACITY_MISMATCH
        and e.instance_id == instance_id
    ]


async def test_a_capacity_mismatch_raises_one_alert_per_change(deps: Deps, store: InMemorySchedulerStore) -> None:
    [instance] = await register(deps, record("m-1"))  # 60 GiB in the inventory
    await handlers.activate_backup(
        deps, account_id="acme", name="", region="", settings=None, call=call("ActivateBackup"), host_id="m-1"
    )
    ten = [common_pb2.BlockDevice(device="/dev/vda", size_bytes=10 * GIB)]
    await enrolled(deps, instance.instance_id, host_id="m-1", block_devices=ten)
    [reason] = mismatch_alerts(store, instance.instance_id)
    assert "60.0 GiB" in reason and "10.0 GiB" in reason and "billing uses the inventory's" in reason
    # the same mismatch again (a re-enrollment, an inventory sync with the same disks): no new alert
    await enrolled(deps, instance.instance_id, host_id="m-1", block_devices=ten)
    await register(deps, record("m-1"))
    assert len(mismatch_alerts(store, instance.instance_id)) == 1
    # the inventory changes but still differs: a new mismatch, one new alert
    await register(deps, record("m-1", block_devices=[BlockDevice("/dev/vda", 20 * GIB)]))
    await register(deps, record("m-1", block_devices=[BlockDevice("/dev/vda", 20 * GIB)]))
    assert len(mismatch_alerts(store, instance.instance_id)) == 2
    # they agree: nothing; then they differ again as at first: alerted again
    await register(deps, record("m-1", block_devices=[BlockDevice("/dev/vda", 10 * GIB)]))
    assert len(mismatch_alerts(store, instance.instance_id)) == 2
    await register(deps, record("m-1"))
    assert len(mismatch_alerts(store, instance.instance_id)) == 3
    # an instance whose agent reports nothing, or one with no inventory disks, is never a mismatch
    [other] = await register(deps, record("m-2"))
    await handlers.activate_backup(
        deps, account_id="acme", name="", region="", settings=None, call=call("ActivateBackup"), host_id="m-2"
    )
    await enrolled(deps, other.instance_id, host_id="m-2")
    assert mismatch_alerts(store, other.instance_id) == []


async def test_registration_updates_known_hosts_and_releases(
    deps: Deps, store: InMemorySchedulerStore, clock: FakeClock
) -> None:
    [first] = await register(deps, record("m-1"))
    await handlers.activate_backup(
        deps, account_id="acme", name="", region="", settings=None, call=call("ActivateBackup"), host_id="m-1"
    )
    await enrolled(deps, first.instance_id)
    job = await handlers.run_backup_now(deps, first.instance_id, call=call("RunBackupNow"))
    await update_job(deps, job.job_id, first.instance_id, common_pb2.JOB_STATUS_RUNNING)
    # A sync of the inventory: m-1 gained a disk and is gone; m-2 is new.
    updated, new = await register(
        deps,
        record("m-1", block_devices=[BlockDevice("/dev/vda", 100 * GIB)], released=True),
        record("m-2"),
    )
    assert updated.instance_id == first.instance_id and updated.inventory_capacity_bytes == 100 * GIB
    assert updated.status(clock.now()) == S.RUNNING_STATUS_STOPPED
    assert new.status(clock.now()) == S.RUNNING_STATUS_NOT_ACTIVATED
    # the running job stops with the host
    stopped = await handlers.get_job(deps, job.job_id, call=call("GetJob"))
    assert stopped.status == common_pb2.JOB_STATUS_CANCELED and "gone" in stopped.error
    assert [e.job_id for e in store.events(JOB_CANCEL_REQUESTED)] == [job.job_id]  # type: ignore[attr-defined]
    page = await handlers.list_instances(deps, "acme", "", call=call("ListInstances"))
    assert {i.instance_id for i in page.instances} == {first.instance_id, new.instance_id}


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "at least one"),
        ([record("")], "instance 1: host_id is required"),
        ([record("a"), record("b", region="")], "instance 2: region is required"),
        ([record("a"), record("a")], "appears more than once"),
        ([record("a\x00b")], "without NUL"),
        ([record("a", block_devices=[BlockDevice("/dev/vda", 1), BlockDevice("/dev/vda", 2)])], "listed twice"),
        ([record("a", block_devices=[BlockDevice("/dev/vda", -1)])], "impossible size"),
        ([record(f"h{n}") for n in range(1001)], "at most 1000"),
    ],
)
async def test_registration_refuses_bad_records_and_writes_nothing(
    deps: Deps, store: InMemorySchedulerStore, records: list[InventoryInput], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await register(deps, *records)
    assert store.events(INSTANCE_STATUS_CHANGED) == []


async def test_inventory_of_another_account_is_not_reachable(deps: Deps) -> None:
    [instance] = await register(deps, record("m-1"))
    other = admin("evil")
    with pytest.raises(NotFound):
        await handlers.release_instance(deps, instance.instance_id, call=call("ReleaseInstance", other))
    with pytest.raises(NotFound):
        await handlers.activate_backup(
            deps,
            account_id="evil",
            name="",
            region="",
            settings=None,
            call=call("ActivateBackup", other),
            instance_id=instance.instance_id,
        )
    # registering the same host id in another account is that account's own host
    [theirs] = await handlers.register_instances(deps, "evil", [record("m-1")], call=call("RegisterInstances", other))
    assert theirs.instance_id != instance.instance_id


async def test_cancel_then_reinstated_returns_paused_without_an_agent(
    deps: Deps, store: InMemorySchedulerStore, clock: FakeClock
) -> None:
    [instance] = await register(deps, record("m-1"))
    await handlers.activate_backup(
        deps, account_id="acme", name="", region="", settings=None, call=call("ActivateBackup"), host_id="m-1"
    )
    await enrolled(deps, instance.instance_id)
    await handlers.cancel_backup(deps, instance.instance_id, call=call("CancelBackup"))
    assert (await handlers.list_instances(deps, "acme", "", call=call("ListInstances"))).instances == []
    event = events_pb2.InstanceReinstated(
        meta=new_meta("catalog", clock.now()), account_id="acme", instance_id=instance.instance_id, version_ids=["v1"]
    )
    await handlers.handle_instance_reinstated(event, deps)
    await handlers.handle_instance_reinstated(event, deps)
    after = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert after.status(clock.now()) == S.RUNNING_STATUS_PAUSED and not after.enrolled
    assert "issue a new enrollment token" in after.last_error
    assert statuses(store, instance.instance_id)[-2:] == [
        (S.RUNNING_STATUS_READY, S.RUNNING_STATUS_CANCELED),
        (S.RUNNING_STATUS_CANCELED, S.RUNNING_STATUS_PAUSED),
    ]
