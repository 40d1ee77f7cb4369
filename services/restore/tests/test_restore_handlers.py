"""Creating, reading, cancelling restore jobs and applying agent updates (unit tests with fakes)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from restore_fixtures import INSTANCES, POINT, T0, call, job, restore_updated
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.restore.v1 import restore_pb2
from strongroom_platform.eventbus import PoisonRecord
from strongroom_platform.events import ALERT_RAISED, RESTORE_CANCEL_REQUESTED, RESTORE_REQUESTED
from strongroom_platform.testing import FakeClock
from strongroom_restore import handlers
from strongroom_restore.errors import CatalogUnavailable, FailedPrecondition, InvalidArgument, NotFound
from strongroom_restore.model import RestoreJob
from strongroom_restore.testing import FakeCatalogClient, FakeInstanceDirectory, InMemoryRestoreStore

S = common_pb2
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def repo() -> InMemoryRestoreStore:
    return InMemoryRestoreStore()


@pytest.fixture
def catalog() -> FakeCatalogClient:
    return FakeCatalogClient(POINT)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


async def create(
    repo: InMemoryRestoreStore, catalog: FakeCatalogClient, clock: FakeClock, **fields: object
) -> RestoreJob:
    request = restore_pb2.CreateRestoreJobRequest(**{"point_id": "p1", **fields})  # type: ignore[arg-type]
    return await handlers.create_restore_job(
        request,
        repo=repo,
        catalog=catalog,
        instances=FakeInstanceDirectory(*INSTANCES),
        clock=clock,
        call=call("CreateRestoreJob"),
    )


# --- create --------------------------------------------------------------------


async def test_create_with_defaults(repo: InMemoryRestoreStore, catalog: FakeCatalogClient, clock: FakeClock) -> None:
    created = await create(repo, catalog, clock)
    assert created.status == S.JOB_STATUS_QUEUED
    assert (created.source_instance_id, created.target_instance_id) == ("i-src", "i-src")
    assert created.conflict_policy == gateway_pb2.CONFLICT_POLICY_SKIP
    assert (created.include_paths, created.exclude_paths, created.target_path) == ((), (), "")
    assert created.account_id == "acct" and created.created_at == T0
    assert await repo.get_job(created.restore_job_id) == created
    [(topic, key, event)] = repo.outbox
    assert (topic, key) == (RESTORE_REQUESTED, "i-src")
    assert isinstance(event, events_pb2.RestoreRequested)
    assert event.restore_job_id == created.restore_job_id
    assert (event.manifest_key, event.source_mount_point, event.point_id) == ("manifests/p1", "/data", "p1")
    assert event.conflict_policy == gateway_pb2.CONFLICT_POLICY_SKIP
    assert event.meta.producer == "restore" and event.meta.event_id


async def test_create_to_another_instance_with_filters(
    repo: InMemoryRestoreStore, catalog: FakeCatalogClient, clock: FakeClock
) -> None:
    created = await create(
        repo,
        catalog,
        clock,
        target_instance_id="i-other",
        include_paths=["etc/", "home/a b"],
        exclude_paths=["etc/secret"],
        target_path="/srv/restore",
        conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE,
    )
    assert created.target_instance_id == "i-other" and created.source_instance_id == "i-src"
    assert created.include_paths == ("etc", "home/a b")
    [(_, key, event)] = repo.outbox
    assert key == "i-other"
    assert isinstance(event, events_pb2.RestoreRequested)
    assert list(event.include_paths) == ["etc", "home/a b"] and list(event.exclude_paths) == ["etc/secret"]
    assert event.target_path == "/srv/restore" and event.conflict_policy == gateway_pb2.CONFLICT_POLICY_OVERWRITE
    assert event.target_instance_id == "i-other" and event.source_instance_id == "i-src"


async def test_windows_target_path_is_absolute(
    repo: InMemoryRestoreStore, catalog: FakeCatalogClient, clock: FakeClock
) -> None:
    created = await create(repo, catalog, clock, target_path="D:\\restore")
    assert created.target_path == "D:\\restore"


async def test_create_for_unknown_point(
    repo: InMemoryRestoreStore, catalog: FakeCatalogClient, clock: FakeClock
) -> None:
    with pytest.raises(NotFound, match="backup point 'nope' not found"):
        await create(repo, catalog, clock, point_id="nope")
    assert repo.outbox == []


async def test_create_while_catalog_is_down(
    repo: InMemoryRestoreStore, catalog: FakeCatalogClient, clock: FakeClock
) -> None:
    catalog.unavailable = True
    with pytest.raises(CatalogUnavailable):
        await create(repo, catalog, clock)
    assert repo.outbox == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"point_id": ""}, "point_id is required"),
        ({"include_paths": ["../etc"]}, "include_paths: path '../etc' must not contain '..'"),
        ({"include_paths": ["etc/../../x"]}, "must not contain '..'"),
        ({"exclude_paths": ["/etc/passwd"]}, "exclude_paths: path '/etc/passwd' must be relative"),
        ({"include_paths": [""]}, "include_paths: empty path"),
        ({"include_paths": ["a//b"]}, "empty or '.' segment"),
        ({"include_paths": ["a\x00"]}, "NUL"),
        ({"target_path": "srv/restore"}, "target_path 'srv/restore' must be an absolute directory"),
        ({"target_path": "/srv/../etc"}, "target_path '/srv/../etc' must not contain '..'"),
        ({"conflict_policy": 7}, "conflict_policy 7 is not SKIP or OVERWRITE"),
    ],
)
async def test_create_rejects_invalid_requests(
    repo: InMemoryRestoreStore,
    catalog: FakeCatalogClient,
    clock: FakeClock,
    fields: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await create(repo, catalog, clock, **fields)
    assert message in str(info.value)
    assert repo.outbox == []


# --- get / list ----------------------------------------------------------------


async def test_get_and_list(repo: InMemoryRestoreStore, catalog: FakeCatalogClient, clock: FakeClock) -> None:
    first = await create(repo, catalog, clock)
    clock.advance(60)
    second = await create(repo, catalog, clock, target_instance_id="i-other", target_path="/srv/restore")
    assert await handlers.get_restore_job(repo, first.restore_job_id, call=call("GetRestoreJob")) == first
    listed = await handlers.list_restore_jobs(repo, "i-src", call=call("ListRestoreJobs"))
    assert [j.restore_job_id for j in listed.jobs] == [second.restore_job_id, first.restore_job_id]
    other = await handlers.list_restore_jobs(repo, "i-other", call=call("ListRestoreJobs"))
    assert [j.restore_job_id for j in other.jobs] == [second.restore_job_id]


async def test_get_unknown_and_missing_ids(repo: InMemoryRestoreStore) -> None:
    with pytest.raises(NotFound, match="restore job 'nope' not found"):
        await handlers.get_restore_job(repo, "nope", call=call("GetRestoreJob"))
    with pytest.raises(InvalidArgument, match="restore_job_id is required"):
        await handlers.get_restore_job(repo, "", call=call("GetRestoreJob"))
    with pytest.raises(InvalidArgument, match="instance_id is required"):
        await handlers.list_restore_jobs(repo, "", call=call("ListRestoreJobs"))


# --- cancel --------------------------------------------------------------------


async def insert(repo: InMemoryRestoreStore, *jobs: RestoreJob) -> None:
    async with repo.transaction() as tx:
        for j in jobs:
            await tx.insert_job(j)


@pytest.mark.parametrize("status", [S.JOB_STATUS_CREATED, S.JOB_STATUS_QUEUED, S.JOB_STATUS_RUNNING])
async def test_cancel_unfinished_job(repo: InMemoryRestoreStore, clock: FakeClock, status: int) -> None:
    await insert(repo, job(status=status))
    canceled = await handlers.cancel_restore_job(repo, "r1", clock=clock, call=call("CancelRestoreJob"))
    assert canceled.status == S.JOB_STATUS_CANCELING
    assert (await repo.get_job("r1")) == canceled
    [(topic, key, event)] = repo.outbox
    assert (topic, key) == (RESTORE_CANCEL_REQUESTED, "i-dst")
    assert isinstance(event, events_pb2.RestoreCancelRequested)
    assert (event.restore_job_id, event.target_instance_id, event.account_id) == ("r1", "i-dst", "acct")


async def test_cancel_twice_requests_once(repo: InMemoryRestoreStore, clock: FakeClock) -> None:
    await insert(repo, job(status=S.JOB_STATUS_RUNNING))
    await handlers.cancel_restore_job(repo, "r1", clock=clock, call=call("CancelRestoreJob"))
    again = await handlers.cancel_restore_job(repo, "r1", clock=clock, call=call("CancelRestoreJob"))
    assert again.status == S.JOB_STATUS_CANCELING and len(repo.outbox) == 1


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (S.JOB_STATUS_COMPLETE, "COMPLETE"),
        (S.JOB_STATUS_PARTIAL_COMPLETE, "PARTIAL_COMPLETE"),
        (S.JOB_STATUS_FAILED, "FAILED"),
        (S.JOB_STATUS_CANCELED, "CANCELED"),
    ],
)
async def test_cancel_finished_job_is_refused(
    repo: InMemoryRestoreStore, clock: FakeClock, status: int, name: str
) -> None:
    await insert(repo, job(status=status))
    with pytest.raises(FailedPrecondition, match=f"already finished \\({name}\\); it cannot be cancelled"):
        await handlers.cancel_restore_job(repo, "r1", clock=clock, call=call("CancelRestoreJob"))
    assert repo.outbox == [] and (await repo.get_job("r1")) == job(status=status)


async def test_cancel_unknown_job(repo: InMemoryRestoreStore, clock: FakeClock) -> None:
    with pytest.raises(NotFound, match="restore job 'nope' not found"):
        await handlers.cancel_restore_job(repo, "nope", clock=clock, call=call("CancelRestoreJob"))


# --- restore-updated -------------------------------------------------------------


async def apply(repo: InMemoryRestoreStore, *events: events_pb2.RestoreUpdated) -> RestoreJob:
    for event in events:
        await handlers.handle_restore_updated(event, repo=repo)
    current = await repo.get_job("r1")
    assert current is not None
    return current


async def test_progress_then_completion(repo: InMemoryRestoreStore) -> None:
    await insert(repo, job())
    running = await apply(repo, restore_updated(status=S.JOB_STATUS_RUNNING, at=T0 + MINUTE, files_restored=3))
    assert running.status == S.JOB_STATUS_RUNNING and running.stats.files_restored == 3
    assert running.finished_at is None
    done = await apply(repo, restore_updated(status=S.JOB_STATUS_COMPLETE, at=T0 + 2 * MINUTE, files_restored=9))
    assert done.status == S.JOB_STATUS_COMPLETE and done.stats.files_restored == 9
    assert done.stats.bytes_restored == 90 and done.finished_at == T0 + 2 * MINUTE


async def test_failure_keeps_error_and_earlier_stats(repo: InMemoryRestoreStore) -> None:
    await insert(repo, job())
    failed = await apply(
        repo,
        restore_updated(status=S.JOB_STATUS_RUNNING, at=T0 + MINUTE, files_restored=4),
        restore_updated(status=S.JOB_STATUS_FAILED, at=T0 + 2 * MINUTE, error="target path /srv does not exist"),
    )
    assert failed.status == S.JOB_STATUS_FAILED and failed.error == "target path /srv does not exist"
    assert failed.stats.files_restored == 4


async def test_a_failed_restore_raises_one_alert(repo: InMemoryRestoreStore) -> None:
    await insert(repo, job())
    failure = restore_updated(status=S.JOB_STATUS_FAILED, at=T0 + MINUTE, error="target path /srv does not exist")
    await apply(repo, failure, failure)  # redelivered
    await apply(repo, restore_updated(status=S.JOB_STATUS_FAILED, at=T0 + 2 * MINUTE, error="again"))
    [(topic, key, alert)] = [entry for entry in repo.outbox if entry[0] == ALERT_RAISED]
    assert isinstance(alert, events_pb2.AlertRaised)
    current = job()
    assert (topic, key) == (ALERT_RAISED, current.target_instance_id)
    assert (alert.kind, alert.account_id, alert.instance_id, alert.job_id, alert.source) == (
        events_pb2.ALERT_KIND_RESTORE_FAILED,
        current.account_id,
        current.target_instance_id,
        "r1",
        "restore",
    )
    assert alert.reason.endswith("failed: target path /srv does not exist")
    assert f"restore of point {current.point_id} to " in alert.reason


async def test_completed_and_partial_restores_raise_no_alert(repo: InMemoryRestoreStore) -> None:
    await insert(repo, job())
    await apply(repo, restore_updated(status=S.JOB_STATUS_PARTIAL_COMPLETE, at=T0 + MINUTE))
    assert [entry for entry in repo.outbox if entry[0] == ALERT_RAISED] == []


async def test_a_partial_restore_keeps_its_failed_files(repo: InMemoryRestoreStore) -> None:
    await insert(repo, job())
    finished = restore_updated(status=S.JOB_STATUS_PARTIAL_COMPLETE, at=T0 + 2 * MINUTE, files_restored=8)
    finished.failed_files.add(path="docs/a.txt", reason="chunk 3f2a of this file is damaged in storage (x)")
    partial = await apply(
        repo, restore_updated(status=S.JOB_STATUS_RUNNING, at=T0 + MINUTE, files_restored=4), finished
    )
    assert partial.status == S.JOB_STATUS_PARTIAL_COMPLETE and partial.stats.files_restored == 8
    assert partial.failed_files == (("docs/a.txt", "chunk 3f2a of this file is damaged in storage (x)"),)


async def test_redelivered_update_applies_once(repo: InMemoryRestoreStore) -> None:
    await insert(repo, job())
    event = restore_updated(status=S.JOB_STATUS_RUNNING, at=T0 + MINUTE, files_restored=1)
    first = await apply(repo, event)
    assert await apply(repo, event) == first


async def test_finished_job_never_moves_back(repo: InMemoryRestoreStore) -> None:
    await insert(repo, job())
    done = await apply(repo, restore_updated(status=S.JOB_STATUS_COMPLETE, at=T0 + 2 * MINUTE, files_restored=9))
    late = await apply(repo, restore_updated(status=S.JOB_STATUS_RUNNING, at=T0 + 3 * MINUTE, files_restored=1))
    assert late == done


async def test_stale_update_is_ignored(repo: InMemoryRestoreStore) -> None:
    await insert(repo, job())
    newer = await apply(repo, restore_updated(status=S.JOB_STATUS_RUNNING, at=T0 + 2 * MINUTE, files_restored=8))
    older = await apply(repo, restore_updated(status=S.JOB_STATUS_RUNNING, at=T0 + MINUTE, files_restored=2))
    assert older == newer


async def test_progress_does_not_undo_canceling(repo: InMemoryRestoreStore) -> None:
    await insert(repo, job(status=S.JOB_STATUS_CANCELING))
    still = await apply(repo, restore_updated(status=S.JOB_STATUS_RUNNING, at=T0 + MINUTE, files_restored=5))
    assert still.status == S.JOB_STATUS_CANCELING and still.stats.files_restored == 5
    canceled = await apply(repo, restore_updated(status=S.JOB_STATUS_CANCELED, at=T0 + 2 * MINUTE))
    assert canceled.status == S.JOB_STATUS_CANCELED and canceled.finished_at == T0 + 2 * MINUTE


async def test_update_from_another_instance_is_ignored(repo: InMemoryRestoreStore) -> None:
    await insert(repo, job())
    same = await apply(repo, restore_updated(status=S.JOB_STATUS_COMPLETE, at=T0 + MINUTE, target="i-evil"))
    assert same == job()


async def test_update_for_unknown_job_is_ignored(repo: InMemoryRestoreStore) -> None:
    await handlers.handle_restore_updated(restore_updated("nope"), repo=repo)
    assert await repo.get_job("nope") is None


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (restore_updated(status=S.JOB_STATUS_UNSPECIFIED), "invalid status 0"),
        (restore_updated(status=42), "invalid status 42"),
        (restore_updated(""), "without restore_job_id"),
    ],
)
async def test_invalid_update_is_poison(
    repo: InMemoryRestoreStore, event: events_pb2.RestoreUpdated, message: str
) -> None:
    await insert(repo, job())
    with pytest.raises(PoisonRecord, match=message):
        await handlers.handle_restore_updated(event, repo=repo)
    assert await repo.get_job("r1") == job()


def test_job_fixture_is_not_finished() -> None:
    assert not job().finished and dataclasses.replace(job(), status=S.JOB_STATUS_EXPIRED).finished
