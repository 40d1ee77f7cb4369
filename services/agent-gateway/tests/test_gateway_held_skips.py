"""A backup held for a free slot until its start window closes is skipped, never started late (ADR
0053, session 6): the slots in isolation, and the real Connect stream on the fake store and on
PostgreSQL."""

from __future__ import annotations

import datetime as dt

from gateway_helpers import GatewayHarness, connected_agents, eventually
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_gateway.admission import BackupSlots
from strongroom_gateway.held_skips import skip_held_past_window
from strongroom_gateway.ports import Job
from strongroom_gateway.repository import PgGatewayStore
from strongroom_gateway.sessions import Session
from strongroom_platform import events
from strongroom_platform.clock import utc
from strongroom_platform.testing import FakeClock

T0 = utc(2026, 12, 6, 1)


def _job(job_id: str, minute: int, *, window: float | None = None) -> Job:
    """A queued backup created ``minute`` minutes after T0 whose window closes ``window`` minutes after T0."""
    closes = T0 + dt.timedelta(minutes=window) if window is not None else None
    created = T0 + dt.timedelta(minutes=minute)
    return Job(job_id, "i", "acct", "backup", b"", "queued", False, created, start_before=closes)


def test_a_held_job_whose_window_closed_never_gets_a_slot() -> None:
    clock = FakeClock(T0)
    slots = BackupSlots(1, clock=clock)
    busy, late, next_ = Session("i-1"), Session("i-2"), Session("i-3")
    assert slots.admit(busy, [_job("j1", 0)]) != []
    assert slots.admit(late, [_job("j2", 1, window=10)]) == []
    assert slots.admit(next_, [_job("j3", 2, window=60)]) == []
    assert slots.past_window() == []  # both wait: their windows are open

    clock.advance(10 * 60)  # j2's window closes while it is held
    assert [(s, j.job_id) for s, j in slots.past_window()] == [(late, "j2")]
    slots.finished(busy, "j1")  # the slot frees after the window closed: j2 must not start
    assert slots.admit(late, [_job("j2", 1, window=10)]) == []
    assert next_.wake.is_set()  # the slot went on to the next held job
    assert [j.job_id for j in slots.admit(next_, [_job("j3", 2, window=60)])] == ["j3"]
    assert slots.held == 1  # j2, until it is skipped
    slots.drop_held(late, "j2")
    assert slots.held == 0 and slots.past_window() == []


def test_only_held_jobs_are_skipped() -> None:
    clock = FakeClock(T0 + dt.timedelta(hours=1))
    slots = BackupSlots(1, clock=clock)
    # A job past its window that finds a free slot was never held: it starts (its agent was away).
    assert [j.job_id for j in slots.admit(Session("i-1"), [_job("j1", 0, window=10)])] == ["j1"]
    # One that finds none is held, and its window has closed already: skipped at once.
    late = Session("i-2")
    assert slots.admit(late, [_job("j2", 0, window=10)]) == []
    assert [j.job_id for _, j in slots.past_window()] == ["j2"]
    # "Back up now" (no window) is held but never skipped.
    assert slots.admit(Session("i-3"), [_job("j3", 0)]) == []
    assert [j.job_id for _, j in slots.past_window()] == ["j2"]
    # Without a cap nothing is held, so nothing is skipped.
    free = BackupSlots(0, clock=clock)
    assert free.admit(late, [_job("j2", 0, window=10)]) != [] and free.past_window() == []


async def _job_updates(gw: GatewayHarness) -> list[events_pb2.JobUpdated]:
    """The job-updated events the gateway enqueued, from the fake's outbox or PostgreSQL's."""
    if not isinstance(gw.store, PgGatewayStore):
        return [e for e in gw.store.events(events.JOB_UPDATED) if isinstance(e, events_pb2.JobUpdated)]
    async with gw.store.transaction() as tx:
        rows = await tx._conn.fetch("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id", events.JOB_UPDATED)
    return [events_pb2.JobUpdated.FromString(bytes(row["payload"])) for row in rows]


async def test_a_backup_held_past_its_window_is_skipped_and_reported_not_started(
    capped: GatewayHarness, clock: FakeClock
) -> None:
    gw = capped
    agents, streams = await connected_agents(gw, 2)
    await gw.request_backup(agents[0], "job-running")
    assert await streams[0].next_backup(5) == "job-running"
    closes = clock.now() + dt.timedelta(minutes=30)
    await gw.request_backup(agents[1], "job-late", start_before=closes)
    await eventually(lambda: gw.slots.held == 1)

    clock.advance(29 * 60)
    assert await skip_held_past_window(gw.slots, gw.store, clock) == []  # still inside its window
    clock.advance(60)
    assert await skip_held_past_window(gw.slots, gw.store, clock) == ["job-late"]
    assert gw.slots.held == 0
    assert await skip_held_past_window(gw.slots, gw.store, clock) == []  # once

    # The slot frees: the skipped job does not start later.
    await streams[0].call.write(
        gateway_pb2.AgentReport(
            finished=gateway_pb2.JobFinished(job_id="job-running", status=common_pb2.JOB_STATUS_COMPLETE)
        )
    )
    assert await streams[1].next_backup(1.0) is None
    for stream in streams:
        await stream.close()
    async with gw.store.transaction() as tx:
        job = await tx.get_job("job-late")
    assert job is not None and job.state == "finished" and job.start_before == closes
    # Reported: the scheduler gets its final status, the seed's skipped backup, with the reason.
    [update] = [u for u in await _job_updates(gw) if u.job_id == "job-late"]
    assert update.status == common_pb2.JOB_STATUS_EXPIRED
    assert update.error.startswith("the backup was skipped: this gateway replica's 1 backup slots")
    assert "STRONGROOM_GATEWAY_MAX_RUNNING_BACKUPS" in update.error
