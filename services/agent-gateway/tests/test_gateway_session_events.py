"""Jobs reach their session on any gateway process (ADR 0050): NOTIFY fan-out and the safety sweep."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import asyncpg
import pytest
from google.protobuf.message import Message
from strongroom.events.v1 import events_pb2
from strongroom_gateway import session_events
from strongroom_gateway.agents import REVOKED_BY_CANCEL
from strongroom_gateway.consumers import record_handlers
from strongroom_gateway.delivery import Coalescer
from strongroom_gateway.handlers import SessionEffect
from strongroom_gateway.migrations import SPEC
from strongroom_gateway.repository import PgGatewayStore
from strongroom_gateway.sessions import SessionRegistry
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform import events
from strongroom_platform.clock import SystemClock
from strongroom_platform.db import close_pool
from strongroom_platform.eventbus import Record
from strongroom_platform.events import new_meta, to_timestamp
from strongroom_platform.pg_roles import migrate_schemas
from strongroom_testing.fixtures import PgLogins


def test_a_notification_wakes_or_closes_the_session_on_another_process_only() -> None:
    here, there = SessionRegistry(), SessionRegistry()
    mine, theirs = here.open("i-1"), there.open("i-1")
    (note,) = session_events.payloads(here.origin, [SessionEffect("i-1")])
    session_events.apply(here, note)  # the sender applied it itself already
    session_events.apply(there, note)
    assert not mine.wake.is_set() and theirs.wake.is_set()
    for note in session_events.payloads(here.origin, [SessionEffect("i-1", disconnect=True)]):
        session_events.apply(there, note)
    assert theirs.closed.is_set() and theirs.close_reason == REVOKED_BY_CANCEL
    for garbage in ("", "w", "w:x", "x:other:i-1", "w:other:"):
        session_events.apply(here, garbage)  # ignored
    assert not mine.wake.is_set() and not mine.closed.is_set()


def test_one_notification_names_many_sessions_within_notifys_limit() -> None:
    here, there = SessionRegistry(), SessionRegistry()
    ids = [f"instance-{n:04d}-" + "x" * 100 for n in range(300)]  # 300 × 114 bytes: more than one payload
    theirs = [there.open(i) for i in ids]
    doomed = there.open("i-doomed")
    effects = [SessionEffect(i) for i in ids] + [SessionEffect(ids[0]), SessionEffect("i-doomed", disconnect=True)]
    notes = session_events.payloads(here.origin, effects)
    assert 2 < len(notes) <= 6  # not one per session
    assert all(len(note.encode()) <= session_events.MAX_PAYLOAD for note in notes)
    for note in notes:
        session_events.apply(there, note)
    assert all(s.wake.is_set() for s in theirs)
    assert doomed.closed.is_set() and doomed.close_reason == REVOKED_BY_CANCEL
    assert not any(s.closed.is_set() for s in theirs)


def test_the_sweep_wakes_sessions_with_a_command_they_have_not_sent() -> None:
    sessions = SessionRegistry()
    sent, cancel = sessions.open("i-sent"), sessions.open("i-cancel")
    sessions.open("i-unsent")
    sent.sent.add("j-1")
    cancel.sent.add("j-3")  # the job went out; its cancel has not
    unfinished = [
        ("i-sent", "j-1", False),
        ("i-unsent", "j-2", False),
        ("i-cancel", "j-3", True),
        ("i-gone", "j-4", False),
    ]
    assert session_events.sessions_to_wake(sessions, unfinished) == {"i-unsent", "i-cancel"}
    assert not sent.wake.is_set()


async def test_consumed_job_notifies_in_its_transaction() -> None:
    store = InMemoryGatewayStore()
    sessions = SessionRegistry()
    handlers = record_handlers(store, SystemClock(), sessions)
    await _feed(handlers, events.INSTANCE_ACTIVATED, _activated("i-1"))
    await _feed(handlers, events.JOB_REQUESTED, _job("i-1", "j-1"))
    assert store.state.notifications == session_events.payloads(sessions.origin, [SessionEffect("i-1")])
    session = sessions.open("i-1")
    assert await session_events.sweep(sessions, store) == 1 and session.wake.is_set()


def _activated(instance_id: str) -> events_pb2.InstanceActivated:
    return events_pb2.InstanceActivated(
        meta=new_meta("test", SystemClock().now()),
        account_id="acct",
        instance_id=instance_id,
        region="r1",
        enrollment_token_sha256=hashlib.sha256(secrets.token_bytes(8)).hexdigest(),
        token_expires_at=to_timestamp(SystemClock().now()),
    )


def _job(instance_id: str, job_id: str) -> events_pb2.JobRequested:
    return events_pb2.JobRequested(
        meta=new_meta("test", SystemClock().now()), account_id="acct", instance_id=instance_id, job_id=job_id
    )


async def _feed(handlers: dict, topic: str, event: Message) -> None:  # type: ignore[type-arg]
    await handlers[topic](Record(topic, 0, 0, b"k", event.SerializeToString()))


async def _woken(session_wake: asyncio.Event, within: float = 5.0) -> float:
    started = time.monotonic()
    await asyncio.wait_for(session_wake.wait(), timeout=within)
    return time.monotonic() - started


class Process:
    """One gateway process's part of job delivery: its pool, store, sessions and listener."""

    def __init__(self, stack: AsyncExitStack, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.store = PgGatewayStore(pool)
        self.sessions = SessionRegistry()
        self.listener = session_events.start(
            stack, pool, self.store, self.sessions, SystemClock(), sweep_interval=3600, listen_check_interval=0.2
        )
        self.handlers = record_handlers(self.store, SystemClock(), self.sessions)


@pytest.fixture
async def processes(pg_logins: PgLogins) -> AsyncIterator[tuple[Process, Process]]:
    await migrate_schemas(pg_logins.owner, [SPEC])
    async with AsyncExitStack() as stack:
        pools = [await pg_logins.pool(SPEC) for _ in range(2)]
        for pool in pools:
            stack.push_async_callback(close_pool, pool)
        yield Process(stack, pools[0]), Process(stack, pools[1])


async def _listening(process: Process, sessions: int = 1) -> None:
    deadline = time.monotonic() + 10
    while process.listener.sessions < sessions:
        assert time.monotonic() < deadline, "the listener did not (re)start"
        await asyncio.sleep(0.05)


@pytest.mark.integration
async def test_a_job_consumed_on_one_process_wakes_the_session_on_the_other(processes: tuple[Process, Process]) -> None:
    consuming, holding = processes
    await _listening(holding)
    session = holding.sessions.open("i-1")
    await _feed(consuming.handlers, events.INSTANCE_ACTIVATED, _activated("i-1"))
    waiting = asyncio.ensure_future(_woken(session.wake))
    await _feed(consuming.handlers, events.JOB_REQUESTED, _job("i-1", "j-1"))
    assert await waiting < 1.0  # a notification, not the sweep (an hour away)


@pytest.mark.integration
async def test_after_its_connection_is_killed_the_listener_listens_again_and_sweeps(
    processes: tuple[Process, Process],
) -> None:
    consuming, holding = processes
    await _listening(holding)
    session = holding.sessions.open("i-1")
    await _feed(consuming.handlers, events.INSTANCE_ACTIVATED, _activated("i-1"))
    # Every gateway connection goes (a database restart, as the listener sees it) ...
    await consuming.pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND usename = current_user AND pid <> pg_backend_pid()"
    )
    # ... a job is stored while nobody may be listening: its notification can be lost ...
    for _ in range(3):
        try:
            await _feed(consuming.handlers, events.JOB_REQUESTED, _job("i-1", "j-1"))
            break
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await asyncio.sleep(0.2)  # the pool replaces its killed connections
    # ... and the session learns of it all the same: a notification, or the sweep on listening again.
    await _woken(session.wake, within=10)
    await _listening(holding, sessions=2)


async def test_coalescer_batches_the_keys_asked_for_while_a_load_runs() -> None:
    calls: list[list[int]] = []
    release = asyncio.Event()

    async def load(keys: list[int]) -> dict[int, int]:
        calls.append(keys)
        await release.wait()
        return {key: key * 10 for key in keys}

    coalescer: Coalescer[int, int] = Coalescer(load, max_batch=3)
    first = asyncio.ensure_future(coalescer.get(1))
    await asyncio.sleep(0)  # the first load starts with key 1 alone
    rest = [asyncio.ensure_future(coalescer.get(k)) for k in (2, 3, 3, 4)]
    release.set()
    assert await first == 10 and [await r for r in rest] == [20, 30, 30, 40]
    assert calls == [[1], [2, 3], [4]]  # what waited went in batches of at most 3 (keys once each)


async def test_coalescer_failure_reaches_the_callers_of_that_load_only() -> None:
    async def load(keys: list[int]) -> dict[int, int]:
        if 13 in keys:
            raise ConnectionError("database away")
        return {key: key for key in keys}

    coalescer: Coalescer[int, int] = Coalescer(load)
    with pytest.raises(ConnectionError):
        await coalescer.get(13)
    assert await coalescer.get(7) == 7
