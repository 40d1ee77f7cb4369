"""Disaster recovery in the scheduler (ADR 0032): instances rebuilt from the bucket, new enrollment tokens."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from scheduler_helpers import activate, admin, call, enroll, meta
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_platform.auth import Role, operator
from strongroom_platform.errors import PermissionDenied
from strongroom_platform.events import INSTANCE_ACTIVATED, INSTANCE_SETTINGS_CHANGED, from_timestamp
from strongroom_platform.testing import FakeClock
from strongroom_scheduler import handlers
from strongroom_scheduler.errors import FailedPrecondition, NotFound
from strongroom_scheduler.handlers import Deps
from strongroom_scheduler.testing import InMemorySchedulerStore

S = scheduler_pb2


def recovered(deps: Deps, instance_id: str = "i-rebuilt") -> events_pb2.InstanceRecovered:
    return events_pb2.InstanceRecovered(
        meta=meta(deps), account_id="acme", instance_id=instance_id, region="eu-1", name="db-1", hostname="db-1.lan"
    )


async def test_a_recovered_instance_is_known_again_with_default_settings_and_no_token(
    deps: Deps, store: InMemorySchedulerStore, clock: FakeClock
) -> None:
    event = recovered(deps)
    await handlers.handle_instance_recovered(event, deps)
    await handlers.handle_instance_recovered(event, deps)  # redelivered: nothing more
    instance = await handlers.get_instance(deps, "i-rebuilt", call=call("GetInstance"))
    assert (instance.account_id, instance.name, instance.region, instance.hostname) == (
        "acme",
        "db-1",
        "eu-1",
        "db-1.lan",
    )
    assert instance.priority == common_pb2.BACKUP_PRIORITY_LOW and instance.keep_latest_version and not instance.roots
    assert not instance.enrolled
    # No token hashes to "", and it is expired: the operator issues one.
    assert instance.token_sha256 == "" and instance.status(clock.now()) == S.RUNNING_STATUS_PREPARATION_FAILED
    [settings] = store.events(INSTANCE_SETTINGS_CHANGED)
    assert isinstance(settings, events_pb2.InstanceSettingsChanged) and settings.keep_latest_version


async def test_a_recovered_event_never_changes_a_known_instance(deps: Deps) -> None:
    instance = await activate(deps)
    event = recovered(deps, instance.instance_id)
    event.account_id = "other"
    await handlers.handle_instance_recovered(event, deps)
    same = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert same.account_id == "acme" and same.name == "web-1"


async def test_a_new_enrollment_token_for_the_same_instance_id(
    deps: Deps, store: InMemorySchedulerStore, clock: FakeClock
) -> None:
    await handlers.handle_instance_recovered(recovered(deps), deps)
    instance, token = await handlers.issue_enrollment_token(deps, "i-rebuilt", call=call("IssueEnrollmentToken"))
    assert instance.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert instance.status(clock.now()) == S.RUNNING_STATUS_PREPARING
    [event] = store.events(INSTANCE_ACTIVATED)
    assert isinstance(event, events_pb2.InstanceActivated)
    assert (event.instance_id, event.account_id, event.region, event.name) == ("i-rebuilt", "acme", "eu-1", "db-1")
    assert event.enrollment_token_sha256 == instance.token_sha256 and token not in str(event)
    assert from_timestamp(event.token_expires_at) == clock.now() + dt.timedelta(hours=24)
    await enroll(deps, "i-rebuilt")
    ready = await handlers.get_instance(deps, "i-rebuilt", call=call("GetInstance"))
    assert ready.status(clock.now()) == S.RUNNING_STATUS_READY


async def test_no_token_for_a_canceled_or_foreign_instance(deps: Deps) -> None:
    instance = await activate(deps)
    with pytest.raises(NotFound):
        await handlers.issue_enrollment_token(
            deps, instance.instance_id, call=call("IssueEnrollmentToken", admin("other"))
        )
    with pytest.raises(PermissionDenied) as caught:
        await handlers.issue_enrollment_token(
            deps,
            instance.instance_id,
            call=call("IssueEnrollmentToken", operator("token:op", {"acme": Role.OPERATOR})),
        )
    assert "issue enrollment tokens" in str(caught.value)
    await handlers.cancel_backup(deps, instance.instance_id, call=call("CancelBackup"))
    with pytest.raises(FailedPrecondition, match="canceled"):
        await handlers.issue_enrollment_token(deps, instance.instance_id, call=call("IssueEnrollmentToken"))
