"""Contract of ``RestoreStore``: the fake and the PostgreSQL adapter must both pass it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Protocol

import pytest
from restore_fixtures import INSTANCES, POINT, T0, call, job, restore_updated
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.restore.v1 import restore_pb2
from strongroom_platform.events import RESTORE_CANCEL_REQUESTED, new_meta
from strongroom_platform.testing import FakeClock
from strongroom_restore import handlers
from strongroom_restore.errors import FailedPrecondition, InvalidArgument
from strongroom_restore.ports import RestoreStore
from strongroom_restore.testing import FakeCatalogClient, FakeInstanceDirectory


class Harness(Protocol):
    repo: RestoreStore

    async def outbox(self) -> list[tuple[str, str, bytes]]:
        """(topic, key, serialized event) of every committed enqueue, in order."""
        ...


class Boom(Exception):
    pass


class RestoreRepositoryContract:
    @pytest.fixture
    def harness(self) -> Harness:
        raise NotImplementedError

    async def test_insert_and_read_back(self, harness: Harness) -> None:
        repo = harness.repo
        stored = job()
        async with repo.transaction() as tx:
            await tx.insert_job(stored)
        assert await repo.get_job("r1") == stored
        assert await repo.get_job("nope") is None
        async with repo.transaction() as tx:
            assert await tx.get_job("r1") == stored
            assert await tx.get_job("nope") is None

    async def test_duplicate_id_is_refused(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            await tx.insert_job(job())
        with pytest.raises(Exception):  # noqa: B017 - each adapter raises its own error type
            async with repo.transaction() as tx:
                await tx.insert_job(job())

    async def test_update_changes_only_the_mutable_fields(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            await tx.insert_job(job())
        at = T0 + dt.timedelta(minutes=5)
        updated = dataclasses.replace(
            job(),
            status=common_pb2.JOB_STATUS_PARTIAL_COMPLETE,
            error="2 files failed",
            stats=common_pb2.JobStats(files_restored=7, bytes_restored=700, files_failed=2, files_skipped=1),
            failed_files=(
                ("etc/a b", "chunk 3f of this file is damaged in storage (authentication failed)"),
                ("x", "y"),
            ),
            updated_at=at,
            finished_at=at,
        )
        async with repo.transaction() as tx:
            await tx.update_job(dataclasses.replace(updated, target_path="/elsewhere", point_id="p9"))
        assert await repo.get_job("r1") == updated

    async def test_list_by_target_or_source_newest_first(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            await tx.insert_job(job("r-old", target="i-a", source="i-b", created_at=T0))
            await tx.insert_job(job("r-new", target="i-b", source="i-b", created_at=T0 + dt.timedelta(hours=1)))
            await tx.insert_job(job("r-mid", target="i-c", source="i-a", created_at=T0 + dt.timedelta(minutes=1)))
        assert [j.restore_job_id for j in await repo.list_jobs("i-a", accounts=None, limit=10)] == ["r-mid", "r-old"]
        assert [j.restore_job_id for j in await repo.list_jobs("i-b", accounts=None, limit=10)] == ["r-new", "r-old"]
        assert [j.restore_job_id for j in await repo.list_jobs("i-b", accounts=None, limit=1)] == ["r-new"]
        assert await repo.list_jobs("i-z", accounts=None, limit=10) == []

    async def test_list_in_pages_newest_first_ties_by_id_in_byte_order(self, harness: Harness) -> None:
        repo = harness.repo
        # three jobs share a creation time: the id, compared bytewise, breaks the tie
        made = [("r-old", T0), ("r-B", T0 + dt.timedelta(minutes=1)), ("r-a", T0 + dt.timedelta(minutes=1))]
        made += [("r-\u00e9", T0 + dt.timedelta(minutes=1)), ("r-new", T0 + dt.timedelta(hours=1))]
        async with repo.transaction() as tx:
            for restore_job_id, created_at in made:
                await tx.insert_job(job(restore_job_id, target="i-a", created_at=created_at))
        pages: list[list[str]] = []
        token = ""
        while True:
            page = await handlers.list_restore_jobs(
                repo, "i-a", page_size=2, page_token=token, call=call("ListRestoreJobs")
            )
            pages.append([j.restore_job_id for j in page.jobs])
            if not page.next_page_token:
                break
            token = page.next_page_token
        assert pages == [["r-new", "r-\u00e9"], ["r-a", "r-B"], ["r-old"]]
        whole = await handlers.list_restore_jobs(repo, "i-a", call=call("ListRestoreJobs"))
        assert [j.restore_job_id for j in whole.jobs] == [j for p in pages for j in p] and whole.next_page_token == ""
        with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
            await handlers.list_restore_jobs(repo, "i-a", page_token="garbage!", call=call("ListRestoreJobs"))

    async def test_list_of_the_given_accounts_only(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            await tx.insert_job(job("r-acct", target="i-a", created_at=T0))
            await tx.insert_job(
                dataclasses.replace(
                    job("r-other", target="i-a", created_at=T0 + dt.timedelta(minutes=1)), account_id="other"
                )
            )
        assert [j.restore_job_id for j in await repo.list_jobs("i-a", accounts=["acct"], limit=10)] == ["r-acct"]
        assert [j.restore_job_id for j in await repo.list_jobs("i-a", accounts=["other", "x"], limit=10)] == ["r-other"]
        assert [j.restore_job_id for j in await repo.list_jobs("i-a", accounts=None, limit=10)] == ["r-other", "r-acct"]
        # the limit applies after the account filter
        assert [j.restore_job_id for j in await repo.list_jobs("i-a", accounts=["acct"], limit=1)] == ["r-acct"]
        assert await repo.list_jobs("i-a", accounts=[], limit=10) == []

    async def test_claim_event_once(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            assert await tx.claim_event("c", "e1")
            assert not await tx.claim_event("c", "e1")
            assert await tx.claim_event("d", "e1")
        async with repo.transaction() as tx:
            assert not await tx.claim_event("c", "e1")

    async def test_exception_rolls_back(self, harness: Harness) -> None:
        repo = harness.repo
        event = events_pb2.RestoreCancelRequested(meta=new_meta("restore", T0), restore_job_id="r1")
        with pytest.raises(Boom):
            async with repo.transaction() as tx:
                await tx.claim_event("c", "e1")
                await tx.insert_job(job())
                await tx.enqueue(RESTORE_CANCEL_REQUESTED, "i-dst", event)
                raise Boom
        assert await repo.get_job("r1") is None
        assert await harness.outbox() == []
        async with repo.transaction() as tx:
            assert await tx.claim_event("c", "e1")

    async def test_enqueue_commits_with_the_transaction(self, harness: Harness) -> None:
        repo = harness.repo
        event = events_pb2.RestoreCancelRequested(meta=new_meta("restore", T0), restore_job_id="r1")
        async with repo.transaction() as tx:
            await tx.enqueue(RESTORE_CANCEL_REQUESTED, "i-dst", event)
        [(topic, key, payload)] = await harness.outbox()
        assert (topic, key) == (RESTORE_CANCEL_REQUESTED, "i-dst")
        assert events_pb2.RestoreCancelRequested.FromString(payload) == event

    async def test_cancel_of_an_instance_stops_its_restores_and_refuses_new_ones(self, harness: Harness) -> None:
        """ADR 0040 update: a cancel ends every unfinished restore from or onto the instance CANCELED at
        once, tells each target's agent, ignores what the agent reports afterwards, and refuses new
        restores of the instance until it is reinstated."""
        repo = harness.repo
        running = common_pb2.JOB_STATUS_RUNNING
        async with repo.transaction() as tx:
            await tx.insert_job(job("r-from", status=running, source="i-src", target="i-dst"))
            await tx.insert_job(job("r-onto", source="i-other", target="i-src", created_at=T0 + dt.timedelta(1)))
            await tx.insert_job(job("r-done", status=common_pb2.JOB_STATUS_COMPLETE, source="i-src"))
            await tx.insert_job(job("r-else", status=running, source="i-other", target="i-dst"))
        at = T0 + dt.timedelta(hours=2)
        cancel = events_pb2.InstanceDeactivated(meta=new_meta("scheduler", at), account_id="acct", instance_id="i-src")
        await handlers.handle_instance_deactivated(cancel, repo=repo)
        await handlers.handle_instance_deactivated(cancel, repo=repo)  # once per event
        jobs = {r: await repo.get_job(r) for r in ("r-from", "r-onto", "r-done", "r-else")}
        assert {r: j.status for r, j in jobs.items() if j} == {
            "r-from": common_pb2.JOB_STATUS_CANCELED,
            "r-onto": common_pb2.JOB_STATUS_CANCELED,
            "r-done": common_pb2.JOB_STATUS_COMPLETE,
            "r-else": running,
        }
        stopped = jobs["r-from"]
        assert stopped is not None and stopped.finished_at == at and "i-src" in stopped.error
        assert "canceled" in stopped.error and "incomplete" in stopped.error
        told = [
            (t, k, events_pb2.RestoreCancelRequested.FromString(p).restore_job_id) for t, k, p in await harness.outbox()
        ]
        assert told == [(RESTORE_CANCEL_REQUESTED, "i-dst", "r-from"), (RESTORE_CANCEL_REQUESTED, "i-src", "r-onto")]
        # the agent finishes writing and says COMPLETE: the job stays CANCELED
        late = restore_updated("r-from", common_pb2.JOB_STATUS_COMPLETE, at=at + dt.timedelta(seconds=5))
        await handlers.handle_restore_updated(late, repo=repo)
        assert (await repo.get_job("r-from")).status == common_pb2.JOB_STATUS_CANCELED  # type: ignore[union-attr]

        async def create() -> None:
            await handlers.create_restore_job(
                restore_pb2.CreateRestoreJobRequest(point_id="p1", target_instance_id="i-dst", target_path="/r"),
                repo=repo,
                catalog=FakeCatalogClient(POINT),  # the catalog has not hidden the point yet
                instances=FakeInstanceDirectory(*INSTANCES),
                clock=FakeClock(at),
                call=call("CreateRestoreJob"),
            )

        with pytest.raises(FailedPrecondition, match="backup of instance i-src was canceled"):
            await create()
        reinstated = events_pb2.InstanceReinstated(
            meta=new_meta("catalog", at + dt.timedelta(minutes=1)), account_id="acct", instance_id="i-src"
        )
        await handlers.handle_instance_reinstated(reinstated, repo=repo)
        await create()  # allowed again
