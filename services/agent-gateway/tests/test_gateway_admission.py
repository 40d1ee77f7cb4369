"""The per-replica cap on running backups (ADR 0053, session 5): held jobs start oldest first as
slots free up, on the fake and on PostgreSQL, through the real Connect stream."""

from __future__ import annotations

import datetime as dt

from gateway_helpers import GatewayHarness, connected_agents, eventually
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_gateway.admission import BackupSlots
from strongroom_gateway.ports import Job
from strongroom_gateway.sessions import Session
from strongroom_platform.clock import utc
from strongroom_platform.telemetry import Metrics
from strongroom_platform.testing import FakeClock

T0 = utc(2026, 12, 6, 1)


def _job(job_id: str, minute: int, *, kind: str = "backup", state: str = "queued", cancel: bool = False) -> Job:
    return Job(job_id, "i", "acct", kind, b"", state, cancel, T0 + dt.timedelta(minutes=minute))  # type: ignore[arg-type]


def test_no_cap_admits_everything() -> None:
    slots = BackupSlots(0)
    jobs = [_job("a", 0), _job("b", 1)]
    assert slots.admit(Session("i-1"), jobs) == jobs and slots.held == 0


def test_held_backups_start_oldest_first_as_slots_free_up() -> None:
    slots = BackupSlots(2)
    s1, s2, s3, s4 = (Session(f"i-{n}") for n in range(1, 5))
    assert [j.job_id for j in slots.admit(s1, [_job("j1", 1)])] == ["j1"]
    assert [j.job_id for j in slots.admit(s2, [_job("j2", 2)])] == ["j2"]
    assert slots.admit(s4, [_job("j4", 4)]) == []  # asked first, but its job is the newer one
    assert slots.admit(s3, [_job("j3", 3)]) == []
    assert (slots.running, slots.held) == (2, 2)
    assert not s3.wake.is_set() and not s4.wake.is_set()

    slots.finished(s1, "j1")
    assert s3.wake.is_set() and not s4.wake.is_set()  # the slot is kept for the oldest held job
    assert slots.admit(s4, [_job("j4", 4)]) == []  # a newer one cannot take it meanwhile
    assert [j.job_id for j in slots.admit(s3, [_job("j3", 3)])] == ["j3"]
    assert (slots.running, slots.held) == (2, 1)

    slots.forget(s2)  # a session that ends frees its slot too
    assert s4.wake.is_set()
    assert [j.job_id for j in slots.admit(s4, [_job("j4", 4)])] == ["j4"]
    assert (slots.running, slots.held) == (2, 0)


def test_what_the_agent_has_already_and_what_is_not_a_new_backup_is_never_held() -> None:
    slots = BackupSlots(1)
    busy, other = Session("i-1"), Session("i-2")
    slots.admit(busy, [_job("j1", 1)])
    running_elsewhere = _job("j2", 2, state="delivered")  # re-sent on a new stream: it runs already
    restore, cancel = _job("r1", 3, kind="restore"), _job("j0", 0, state="delivered", cancel=True)
    assert slots.admit(other, [running_elsewhere, restore, cancel]) == [running_elsewhere, restore, cancel]
    assert slots.running == 2  # over the cap: what runs is counted, not stopped
    queued = _job("j3", 4)
    assert slots.admit(other, [running_elsewhere, queued]) == [running_elsewhere, queued]  # its slot already


def test_a_woken_session_whose_job_went_passes_its_slot_on() -> None:
    slots = BackupSlots(1)
    s1, s2, s3 = Session("i-1"), Session("i-2"), Session("i-3")
    slots.admit(s1, [_job("j1", 1)])
    slots.admit(s2, [_job("j2", 2)])
    slots.admit(s3, [_job("j3", 3)])
    slots.finished(s1, "j1")
    assert s2.wake.is_set()
    assert slots.admit(s2, []) == []  # cancelled meanwhile: nothing to send
    assert s3.wake.is_set() and slots.held == 1
    assert [j.job_id for j in slots.admit(s3, [_job("j3", 3)])] == ["j3"]


# Through the Connect stream: the fake store and PostgreSQL.


async def test_a_replica_runs_at_most_its_cap_of_backups_and_starts_held_ones_oldest_first(
    capped: GatewayHarness, clock: FakeClock
) -> None:
    gw = capped
    agents, streams = await connected_agents(gw, 3)
    await gw.request_backup(agents[2], "job-2")
    assert await streams[2].next_backup(5) == "job-2"
    for n in (0, 1):
        clock.advance(1)
        await gw.request_backup(agents[n], f"job-{n}")
    await eventually(lambda: gw.slots.held == 2)  # the replica's one slot is taken
    assert await streams[0].next_backup(0.3) is None and await streams[1].next_backup(0.1) is None

    await streams[2].call.write(
        gateway_pb2.AgentReport(finished=gateway_pb2.JobFinished(job_id="job-2", status=common_pb2.JOB_STATUS_COMPLETE))
    )
    assert await streams[0].next_backup(5) == "job-0"  # the oldest held job
    assert await streams[1].next_backup(0.3) is None
    assert gw.slots.held == 1

    await streams[0].close()  # the running agent goes away: its slot frees
    assert await streams[1].next_backup(5) == "job-1"
    assert gw.slots.held == 0
    for stream in streams:
        await stream.close()
    async with gw.store.transaction() as tx:
        states = {j.job_id: j.state for j in [*(await tx.unfinished_jobs("i-0")), *(await tx.unfinished_jobs("i-1"))]}
    assert states == {"job-0": "delivered", "job-1": "delivered"}  # held jobs were never marked delivered early


def test_the_held_jobs_are_a_gauge() -> None:
    reader = InMemoryMetricReader()
    slots = BackupSlots(1, metrics=Metrics(MeterProvider(metric_readers=[reader])))
    first, second = Session("a"), Session("b")
    slots.admit(first, [_job("j1", 1)])
    slots.admit(second, [_job("j2", 2), _job("j3", 3)])

    def held() -> float:
        data = reader.get_metrics_data()
        assert data is not None
        points = [
            point.value
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "strongroom.gateway.held_jobs"
            for point in metric.data.data_points
        ]
        return float(points[-1])

    assert held() == 2
    slots.forget(second)
    assert held() == 0
