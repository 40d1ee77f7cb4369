"""Admission control (ADR 0053): a cap on the fleet's concurrent backups, due slots that wait oldest
first, and a slot skipped and reported once the admission window after its start time has passed.

Every test runs on the in-memory store and on PostgreSQL (the scheduler's own role)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from scheduler_helpers import activate, active_instance, admin, call, meta, update_job
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import utc
from strongroom_platform.events import ALERT_RAISED, JOB_REQUESTED, from_timestamp
from strongroom_platform.testing import FakeClock
from strongroom_scheduler import handlers
from strongroom_scheduler.errors import InvalidArgument, NotFound
from strongroom_scheduler.handlers import Deps
from strongroom_scheduler.migrations import SPEC
from strongroom_scheduler.repository import PgSchedulerStore
from strongroom_scheduler.schedule import Admission, schedule_due
from strongroom_scheduler.testing import InMemorySchedulerStore
from strongroom_testing.fixtures import PgLogins

SLOT = utc(2026, 1, 1, 18, 0)  # 02:00 UTC+8, the slot of minute 120
CAP_2 = Admission(max_concurrent=2, window=dt.timedelta(hours=6))


@dataclass
class Backend:
    deps: Deps
    alerts: Callable[[], Awaitable[list[events_pb2.AlertRaised]]]
    requests: Callable[[], Awaitable[list[events_pb2.JobRequested]]]


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def backend(
    request: pytest.FixtureRequest, deps: Deps, store: InMemorySchedulerStore, clock: FakeClock
) -> AsyncIterator[Backend]:
    """The in-memory store, or PostgreSQL as the scheduler's own role; ``alerts`` reads the committed
    alert-raised events of either."""
    if request.param == "memory":

        async def fake_alerts() -> list[events_pb2.AlertRaised]:
            return [e for e in store.events(ALERT_RAISED) if isinstance(e, events_pb2.AlertRaised)]

        async def fake_requests() -> list[events_pb2.JobRequested]:
            return [e for e in store.events(JOB_REQUESTED) if isinstance(e, events_pb2.JobRequested)]

        yield Backend(deps, fake_alerts, fake_requests)
        return
    logins: PgLogins = request.getfixturevalue("pg_logins")
    pool = await logins.pool(SPEC)

    async def pg_alerts() -> list[events_pb2.AlertRaised]:
        rows = await pool.fetch("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id", ALERT_RAISED)
        return [events_pb2.AlertRaised.FromString(bytes(r["payload"])) for r in rows]

    async def pg_requests() -> list[events_pb2.JobRequested]:
        rows = await pool.fetch("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id", JOB_REQUESTED)
        return [events_pb2.JobRequested.FromString(bytes(r["payload"])) for r in rows]

    try:
        deps_pg = Deps(store=PgSchedulerStore(pool), clock=clock, rng=random.Random(3))
        yield Backend(deps_pg, pg_alerts, pg_requests)
    finally:
        await pool.close()


async def _due_at(deps: Deps, count: int) -> list[str]:
    """``count`` enrolled instances whose slot is 02:00 UTC+8, in activation order."""
    ids = []
    for _ in range(count):
        ids.append((await active_instance(deps, minute=120)).instance_id)
    return ids


async def _job_of(deps: Deps, instance_id: str) -> str:
    [job] = (await handlers.list_jobs(deps, instance_id, 1, call=call("ListJobs"))).jobs
    return job.job_id


async def test_the_cap_holds_and_waiting_slots_start_oldest_first(backend: Backend, clock: FakeClock) -> None:
    deps = backend.deps
    ids = await _due_at(deps, 5)
    clock.set(SLOT)
    first = await schedule_due(deps.store, clock, admission=CAP_2)
    assert len(first.created) == 2
    assert first.waiting_total == 3
    started = {iid for iid in ids if (await handlers.list_jobs(deps, iid, 1, call=call("ListJobs"))).jobs}
    assert len(started) == 2
    # nothing frees: the next pass starts nothing, and the waiting slots stay due (not skipped)
    clock.advance(30)
    again = await schedule_due(deps.store, clock, admission=CAP_2)
    assert (again.created, again.skipped, again.waiting_total) == ([], [], 3)
    # one backup finishes: exactly one waiting slot starts
    done = sorted(started)[0]
    await update_job(deps, await _job_of(deps, done), done, common_pb2.JOB_STATUS_COMPLETE)
    clock.advance(30)
    third = await schedule_due(deps.store, clock, admission=CAP_2)
    assert (len(third.created), third.waiting_total) == (1, 2)
    # the instance that started had its slot advanced to tomorrow; the waiting ones did not
    for iid in ids:
        instance = await handlers.get_instance(deps, iid, call=call("GetInstance"))
        has_job = bool((await handlers.list_jobs(deps, iid, 1, call=call("ListJobs"))).jobs)
        assert instance.next_backup_at == (utc(2026, 1, 2, 18, 0) if has_job else SLOT)


async def test_a_slot_waiting_past_the_window_is_skipped_and_reported(backend: Backend, clock: FakeClock) -> None:
    deps = backend.deps
    ids = await _due_at(deps, 2)
    one = Admission(max_concurrent=1, window=dt.timedelta(hours=6))
    clock.set(SLOT)
    [job_id] = (await schedule_due(deps.store, clock, admission=one)).created
    # equal slots start in instance id order
    busy, late = sorted(ids)
    assert (await handlers.list_jobs(deps, busy, 1, call=call("ListJobs"))).jobs[0].job_id == job_id
    clock.advance(6 * 3600 - 1)  # one second inside the window after the slot time: still waiting
    assert (await schedule_due(deps.store, clock, admission=one)).waiting == [late]
    assert await backend.alerts() == []
    clock.advance(1)
    result = await schedule_due(deps.store, clock, admission=one)
    assert (result.created, result.skipped, result.waiting_total) == ([], [late], 0)
    [alert] = await backend.alerts()
    assert (alert.kind, alert.instance_id) == (events_pb2.ALERT_KIND_BACKUP_SKIPPED, late)
    assert "the fleet's 1 concurrent backups stayed busy for 6 h after its start time" in alert.reason
    assert "STRONGROOM_MAX_CONCURRENT_BACKUPS" in alert.reason
    skipped = await handlers.get_instance(deps, late, call=call("GetInstance"))
    assert skipped.next_backup_at == utc(2026, 1, 2, 18, 0)  # tomorrow's slot, not a backlog
    # the busy backup ends: tomorrow both start again under the cap of 1, oldest first
    await update_job(deps, job_id, busy, common_pb2.JOB_STATUS_COMPLETE)
    clock.set(utc(2026, 1, 2, 18, 0))
    assert len((await schedule_due(deps.store, clock, admission=one)).created) == 1


async def test_a_job_a_gateway_held_past_its_window_is_skipped_and_reported(backend: Backend, clock: FakeClock) -> None:
    deps = backend.deps
    [iid] = await _due_at(deps, 1)
    clock.set(SLOT + dt.timedelta(minutes=10))
    one = Admission(max_concurrent=1, window=dt.timedelta(hours=6))
    [job_id] = (await schedule_due(deps.store, clock, admission=one)).created
    # The request tells the gateways when the slot's start window closes: its slot time + the window.
    [request] = await backend.requests()
    assert from_timestamp(request.start_before) == SLOT + dt.timedelta(hours=6)
    # A gateway replica held it for a slot until then (held_skips): EXPIRED with the reason.
    clock.set(SLOT + dt.timedelta(hours=6))
    reason = "the backup was skipped: this gateway replica's 1 backup slots stayed busy"
    await update_job(deps, job_id, iid, common_pb2.JOB_STATUS_EXPIRED, error=reason)
    [alert] = await backend.alerts()  # reported as the schedule's own skipped slots are
    assert (alert.kind, alert.instance_id, alert.job_id, alert.reason) == (
        events_pb2.ALERT_KIND_BACKUP_SKIPPED,
        iid,
        job_id,
        reason,
    )
    [job] = (await handlers.list_jobs(deps, iid, 1, call=call("ListJobs"))).jobs
    assert (job.status, job.error) == (common_pb2.JOB_STATUS_EXPIRED, reason)
    # It no longer holds a fleet slot: tomorrow's slot starts under the cap of 1.
    clock.set(utc(2026, 1, 2, 18, 0))
    assert len((await schedule_due(deps.store, clock, admission=one)).created) == 1


async def test_back_up_now_carries_no_window(backend: Backend, clock: FakeClock) -> None:
    [iid] = await _due_at(backend.deps, 1)
    await handlers.run_backup_now(backend.deps, iid, call=call("RunBackupNow"))
    [request] = await backend.requests()
    assert not request.HasField("start_before")  # never skipped by a gateway


async def test_back_up_now_is_not_held_but_counts(backend: Backend, clock: FakeClock) -> None:
    deps = backend.deps
    manual, scheduled = await _due_at(deps, 2)
    clock.set(SLOT - dt.timedelta(minutes=5))
    await handlers.run_backup_now(deps, manual, call=call("RunBackupNow"))
    await handlers.run_backup_now(deps, scheduled, call=call("RunBackupNow"))  # over the cap of 1: not held
    await update_job(deps, await _job_of(deps, scheduled), scheduled, common_pb2.JOB_STATUS_COMPLETE)
    clock.set(SLOT)
    one = Admission(max_concurrent=1)
    result = await schedule_due(deps.store, clock, admission=one)
    # the manual backup of `manual` holds the only slot; `manual` itself is skipped (still running)
    assert (result.created, result.skipped, result.waiting) == ([], [manual], [scheduled])


async def test_no_cap_starts_every_due_slot(backend: Backend, clock: FakeClock) -> None:
    deps = backend.deps
    await _due_at(deps, 4)
    clock.set(SLOT)
    result = await schedule_due(deps.store, clock, batch_size=3)
    assert (len(result.created), result.waiting, result.waiting_total) == (4, [], 0)


@pytest.mark.integration
async def test_replicas_together_never_pass_the_cap(pg_logins: PgLogins, clock: FakeClock) -> None:
    pools = [await pg_logins.pool(SPEC) for _ in range(3)]
    try:
        stores = [PgSchedulerStore(pool) for pool in pools]
        deps = Deps(store=stores[0], clock=clock, rng=random.Random(5))
        await _due_at(deps, 12)
        clock.set(SLOT)
        cap = Admission(max_concurrent=5)
        results = await asyncio.gather(*(schedule_due(s, clock, batch_size=2, admission=cap) for s in stores * 2))
        assert sum(len(r.created) for r in results) == 5
        assert await pools[0].fetchval("SELECT count(*) FROM jobs") == 5
    finally:
        for pool in pools:
            await pool.close()


async def _enrolled(deps: Deps, region: str, account: str = "acme") -> str:
    instance = await activate(deps, 120, region=region, account_id=account)
    event = events_pb2.AgentEnrolled(meta=meta(deps), account_id=account, instance_id=instance.instance_id)
    await handlers.handle_agent_enrolled(event, deps)
    return instance.instance_id


async def _figures(deps: Deps, region: str = "") -> tuple[int, int, dt.datetime | None]:
    view = await handlers.get_admission(deps, "acme", region, call=call("GetAdmission"))
    return view.figures.running, view.figures.waiting, view.figures.oldest_waiting


async def test_the_overview_shows_running_and_waiting_per_account_and_region(
    backend: Backend, clock: FakeClock
) -> None:
    """ADR 0058: what the overview shows is what the schedule pass does, per account and region."""
    deps = dataclasses.replace(backend.deps, admission=CAP_2)
    r1 = [await _enrolled(deps, "r1") for _ in range(3)]
    r2 = [await _enrolled(deps, "r2") for _ in range(2)]
    other = await _enrolled(deps, "r1", account="globex")
    await activate(deps, 120, region="r1")  # never enrolled: its slot is skipped, it never waits
    clock.set(SLOT - dt.timedelta(seconds=1))
    assert await _figures(deps) == (0, 0, None)
    clock.set(SLOT)
    # due and not started yet: every enrolled slot of acme waits (the pass has not run)
    assert await _figures(deps) == (0, 5, SLOT)
    assert await _figures(deps, "r2") == (0, 2, SLOT)
    started = set()
    created = await schedule_due(deps.store, clock, admission=CAP_2)
    assert len(created.created) == 2
    for iid in (*r1, *r2, other):
        who = admin("globex" if iid == other else "acme")
        if (await handlers.list_jobs(deps, iid, 1, call=call("ListJobs", who))).jobs:
            started.add(iid)
    in_r1, in_r2 = len(started & set(r1)), len(started & set(r2))
    assert await _figures(deps) == (in_r1 + in_r2, 5 - in_r1 - in_r2, SLOT)
    assert await _figures(deps, "r1") == (in_r1, 3 - in_r1, SLOT if in_r1 < 3 else None)
    assert await _figures(deps, "r2") == (in_r2, 2 - in_r2, SLOT if in_r2 < 2 else None)
    assert await _figures(deps, "nowhere") == (0, 0, None)
    # the cap and the window come with the figures
    view = await handlers.get_admission(deps, "", "", call=call("GetAdmission"))  # the credential's only account
    assert (view.admission.max_concurrent, view.admission.window) == (2, dt.timedelta(hours=6))
    # without a cap nothing waits for a free slot; running backups still show
    uncapped = dataclasses.replace(deps, admission=Admission())
    running = (await handlers.get_admission(uncapped, "acme", "", call=call("GetAdmission"))).figures
    assert (running.running, running.waiting, running.oldest_waiting) == (in_r1 + in_r2, 0, None)
    # at the end of the window the next pass skips the waiting slots: they no longer count as waiting
    clock.set(SLOT + CAP_2.window)
    assert await _figures(deps) == (in_r1 + in_r2, 0, None)


async def test_admission_figures_refuse_a_bad_region_and_another_account(backend: Backend) -> None:
    with pytest.raises(InvalidArgument, match="surrounding spaces"):
        await handlers.get_admission(backend.deps, "acme", " r1", call=call("GetAdmission"))
    with pytest.raises(NotFound, match="account globex not found"):
        await handlers.get_admission(backend.deps, "globex", "", call=call("GetAdmission"))
