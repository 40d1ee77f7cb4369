"""The records a partition worker holds share one transaction (ADR 0050, session 5), on the fake
and on PostgreSQL: every job inserted, one notification per effect, one commit; a batch with a
poison event applies nothing, and run one at a time only the poison event is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from google.protobuf.message import Message
from strongroom.events.v1 import events_pb2
from strongroom_gateway import session_events
from strongroom_gateway.consumers import record_handlers
from strongroom_gateway.handlers import SessionEffect
from strongroom_gateway.migrations import SPEC
from strongroom_gateway.ports import GatewayStore
from strongroom_gateway.repository import PgGatewayStore
from strongroom_gateway.sessions import SessionRegistry
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform import events
from strongroom_platform.clock import SystemClock
from strongroom_platform.eventbus import BatchHandler, PoisonRecord, Record
from strongroom_platform.events import new_meta
from strongroom_platform.poison import RetryPolicy, run_batch
from strongroom_testing.fixtures import PgLogins
from test_gateway_session_events import _activated

INSTANCES = [f"i-{n}" for n in range(5)]


def _job(instance_id: str, job_id: str, account_id: str = "acct") -> events_pb2.JobRequested:
    return events_pb2.JobRequested(
        meta=new_meta("test", SystemClock().now()), account_id=account_id, instance_id=instance_id, job_id=job_id
    )


def _records(topic: str, batch: list[Message]) -> list[Record]:
    return [Record(topic, 0, offset, b"k", event.SerializeToString()) for offset, event in enumerate(batch)]


class _Probe:
    """What the store holds: job ids and inbox claims (fake or PostgreSQL)."""

    def __init__(self, store: GatewayStore, pool: asyncpg.Pool | None) -> None:
        self.store, self.pool = store, pool

    async def job_ids(self) -> list[str]:
        if self.pool is None:
            assert isinstance(self.store, InMemoryGatewayStore)
            return sorted(self.store.state.jobs)
        return sorted(r["job_id"] for r in await self.pool.fetch("SELECT job_id FROM jobs"))

    async def notifications(self) -> list[str]:
        if isinstance(self.store, InMemoryGatewayStore):
            return list(self.store.state.notifications)
        return []  # PostgreSQL: asserted by the listening test below


@pytest.fixture(params=["fake", pytest.param("pg", marks=pytest.mark.integration)])
async def probe(request: pytest.FixtureRequest) -> AsyncIterator[_Probe]:
    if request.param == "fake":
        yield _Probe(InMemoryGatewayStore(), None)
        return
    logins: PgLogins = request.getfixturevalue("pg_logins")
    pool = await logins.pool(SPEC)
    try:
        yield _Probe(PgGatewayStore(pool), pool)
    finally:
        await pool.close()


async def _job_handler(probe: _Probe) -> tuple[BatchHandler, SessionRegistry]:
    """The gateway's job-requested handler on ``probe``'s store, with ``INSTANCES`` activated."""
    sessions = SessionRegistry()
    handlers = record_handlers(probe.store, SystemClock(), sessions)
    jobs, activated = handlers[events.JOB_REQUESTED], handlers[events.INSTANCE_ACTIVATED]
    assert isinstance(jobs, BatchHandler) and isinstance(activated, BatchHandler)
    await activated.handle_batch(_records(events.INSTANCE_ACTIVATED, [_activated(i) for i in INSTANCES]))
    return jobs, sessions


async def test_a_batch_of_jobs_is_applied_together_and_wakes_every_session(probe: _Probe) -> None:
    jobs, sessions = await _job_handler(probe)
    open_sessions = [sessions.open(i) for i in INSTANCES]
    batch = _records(events.JOB_REQUESTED, [_job(i, f"j-{i}") for i in INSTANCES])
    await jobs.handle_batch(batch)
    assert await probe.job_ids() == sorted(f"j-{i}" for i in INSTANCES)
    assert all(s.wake.is_set() for s in open_sessions)
    if isinstance(probe.store, InMemoryGatewayStore):
        assert await probe.notifications() == session_events.payloads(
            sessions.origin, [SessionEffect(i) for i in INSTANCES]
        )
        assert len(await probe.notifications()) == 1  # one notification for the batch's sessions
    # Delivered again (a rebalance): every claim holds, nothing changes, nobody is woken.
    for s in open_sessions:
        s.wake.clear()
    await jobs.handle_batch(batch)
    assert await probe.job_ids() == sorted(f"j-{i}" for i in INSTANCES)
    assert not any(s.wake.is_set() for s in open_sessions)


async def test_a_poison_event_fails_its_batch_whole_and_alone_goes_to_the_dead_letter_path(probe: _Probe) -> None:
    jobs, sessions = await _job_handler(probe)
    # The third job names an instance of another account: the handler refuses it (PoisonRecord).
    batch = _records(
        events.JOB_REQUESTED,
        [_job("i-0", "j-0"), _job("i-1", "j-1"), _job("i-2", "j-bad", account_id="other"), _job("i-3", "j-3")],
    )
    with pytest.raises(PoisonRecord):
        await jobs.handle_batch(batch)
    assert await probe.job_ids() == []  # the transaction rolled back: no job, no claim

    dead: list[tuple[int, str]] = []

    async def dead_letter(record: Record, reason: str, attempts: int) -> None:
        dead.append((record.offset, reason))

    async def go_on(_seconds: float) -> bool:
        return True

    done = await run_batch(
        jobs, batch, policy=RetryPolicy(initial=0.001, maximum=0.001), dead_letter=dead_letter, pause=go_on
    )
    assert done == 4
    assert await probe.job_ids() == ["j-0", "j-1", "j-3"]
    assert [offset for offset, _ in dead] == [2] and "another account" in dead[0][1]


async def test_an_event_or_a_job_given_twice_in_a_batch_is_queued_once_in_request_order(probe: _Probe) -> None:
    jobs, sessions = await _job_handler(probe)
    first, again = _job("i-0", "j-a"), _job("i-0", "j-a")  # the same job requested by two events
    await jobs.handle_batch(
        _records(events.JOB_REQUESTED, [first, _job("i-0", "j-b"), first, again, _job("i-1", "j-c")])
    )
    assert await probe.job_ids() == ["j-a", "j-b", "j-c"]
    async with probe.store.transaction() as tx:
        queued = await tx.unfinished_jobs("i-0")
    assert [job.job_id for job in queued] == ["j-a", "j-b"]  # the delivery order is the request order
    if isinstance(probe.store, InMemoryGatewayStore):
        origin = sessions.origin
        assert await probe.notifications() == [f"w:{origin}:i-0 i-1"]  # each session named once
