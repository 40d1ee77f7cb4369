"""In-memory fakes of the scheduler's ports, for unit tests (here and in other packages).

``InMemorySchedulerStore`` behaves like the PostgreSQL repository where the
logic can tell: transactions are serialized (so row locks hold trivially),
roll back on exceptions, and hand out copies, so a change that is not saved
with ``update_*`` is lost just as it would be in the database.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from google.protobuf.message import Message
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.events import from_timestamp
from strongroom_platform.testing import InMemoryTransactions, claim_once, record_event

from strongroom_scheduler.audit_retention import MIN_AUDIT_KEEP
from strongroom_scheduler.errors import AlreadyExists
from strongroom_scheduler.models import UNFINISHED_JOB_STATUSES, Instance, Job, host_taken_message
from strongroom_scheduler.ports import AccountAdmission, AuditQuery


class _State:
    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}
        self.jobs: dict[str, Job] = {}
        self.claimed: set[tuple[str, str]] = set()
        self.outbox: list[tuple[str, str, Message]] = []
        self.audit_events: dict[str, events_pb2.AuditRecorded] = {}
        self.audit_stored: dict[str, dt.datetime] = {}


class InMemorySchedulerTx:
    def __init__(self, state: _State, trusted_clock: Clock) -> None:
        self._s = state
        self._trusted = trusted_clock

    async def claim_event(self, consumer: str, event_id: str) -> bool:
        return claim_once(self._s.claimed, consumer, event_id)

    async def enqueue(self, topic: str, key: str, event: Message) -> None:
        record_event(self._s.outbox, topic, key, event)

    def _check_host(self, instance: Instance) -> None:
        """The unique index of one instance per host identity and account (canceled ones aside)."""
        if not instance.host_id or instance.canceled:
            return
        for other in self._s.instances.values():
            if (
                other.instance_id != instance.instance_id
                and other.account_id == instance.account_id
                and other.host_id == instance.host_id
                and not other.canceled
            ):
                raise AlreadyExists(host_taken_message(instance.host_id))

    async def insert_instance(self, instance: Instance) -> None:
        if instance.instance_id in self._s.instances:
            raise ValueError(f"duplicate instance {instance.instance_id}")
        self._check_host(instance)
        self._s.instances[instance.instance_id] = copy.deepcopy(instance)

    async def update_instance(self, instance: Instance) -> None:
        if instance.instance_id not in self._s.instances:
            raise KeyError(instance.instance_id)
        self._check_host(instance)
        self._s.instances[instance.instance_id] = copy.deepcopy(instance)

    async def get_instance(self, instance_id: str, *, for_update: bool = False) -> Instance | None:
        found = self._s.instances.get(instance_id)
        return copy.deepcopy(found) if found is not None else None

    async def list_instances(
        self,
        account_id: str,
        region: str,
        *,
        include_canceled: bool,
        after: tuple[dt.datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[Instance]:
        found = [
            copy.deepcopy(i)
            for i in self._s.instances.values()
            if i.account_id == account_id
            and (not region or i.region == region)
            and (include_canceled or not i.canceled)
            and (after is None or (i.activated_at, i.instance_id) > after)
        ]
        return sorted(found, key=lambda i: (i.activated_at, i.instance_id))[:limit]

    def _due(self, now: dt.datetime) -> list[Instance]:
        return [
            i
            for i in self._s.instances.values()
            if i.activated and not i.paused and not i.canceled and not i.released and i.next_backup_at <= now
        ]

    async def due_instances(self, now: dt.datetime, limit: int) -> list[Instance]:
        due = sorted(self._due(now), key=lambda i: (i.next_backup_at, i.instance_id))[:limit]
        return [copy.deepcopy(i) for i in due]

    async def instance_of_host(self, account_id: str, host_id: str, *, for_update: bool = False) -> Instance | None:
        for i in self._s.instances.values():
            if i.account_id == account_id and i.host_id == host_id and not i.canceled:
                return copy.deepcopy(i)
        return None

    async def preparation_overdue(self, now: dt.datetime, limit: int) -> list[Instance]:
        overdue = [
            copy.deepcopy(i)
            for i in self._s.instances.values()
            if i.activated
            and not i.enrolled
            and not i.canceled
            and not i.released
            and not i.preparation_failure_noted
            and i.preparation_deadline <= now
        ]
        return sorted(overdue, key=lambda i: (i.preparation_deadline, i.instance_id))[:limit]

    async def insert_job(self, job: Job) -> None:
        if job.job_id in self._s.jobs:
            raise ValueError(f"duplicate job {job.job_id}")
        if job.status in UNFINISHED_JOB_STATUSES and await self.unfinished_jobs(job.instance_id):
            raise ValueError(f"instance {job.instance_id} already has an unfinished job")  # the unique index
        self._s.jobs[job.job_id] = copy.deepcopy(job)

    async def update_job(self, job: Job) -> None:
        if job.job_id not in self._s.jobs:
            raise KeyError(job.job_id)
        self._s.jobs[job.job_id] = copy.deepcopy(job)

    async def get_job(self, job_id: str, *, for_update: bool = False) -> Job | None:
        found = self._s.jobs.get(job_id)
        return copy.deepcopy(found) if found is not None else None

    async def unfinished_jobs(self, instance_id: str) -> list[Job]:
        return [
            copy.deepcopy(j)
            for j in self._s.jobs.values()
            if j.instance_id == instance_id and j.status in UNFINISHED_JOB_STATUSES
        ]

    async def list_jobs(
        self, instance_id: str, limit: int, *, after: tuple[dt.datetime, str] | None = None
    ) -> list[Job]:
        # insertion order breaks ties of equal creation times, newest first
        order = {job_id: n for n, job_id in enumerate(self._s.jobs)}
        start = (after[0], order.get(after[1], -1)) if after is not None else None
        jobs = [
            copy.deepcopy(j)
            for j in self._s.jobs.values()
            if j.instance_id == instance_id and (start is None or (j.created_at, order[j.job_id]) < start)
        ]
        return sorted(jobs, key=lambda j: (j.created_at, order[j.job_id]), reverse=True)[:limit]

    async def count_unfinished_jobs(self) -> int:
        return sum(1 for j in self._s.jobs.values() if j.status in UNFINISHED_JOB_STATUSES)

    async def lock_admission(self) -> None:
        return None  # the fake's transactions already run one at a time

    async def count_due(self, now: dt.datetime) -> int:
        return len(self._due(now))

    async def account_admission(
        self, account_id: str, region: str, now: dt.datetime, due_after: dt.datetime
    ) -> AccountAdmission:
        def here(instance_id: str) -> bool:
            i = self._s.instances[instance_id]
            return i.account_id == account_id and (not region or i.region == region)

        busy = {j.instance_id for j in self._s.jobs.values() if j.status in UNFINISHED_JOB_STATUSES}
        running = sum(1 for j in self._s.jobs.values() if j.status in UNFINISHED_JOB_STATUSES and here(j.instance_id))
        waiting = [
            i.next_backup_at
            for i in self._due(now)
            if here(i.instance_id) and i.enrolled and i.instance_id not in busy and i.next_backup_at > due_after
        ]
        return AccountAdmission(running=running, waiting=len(waiting), oldest_waiting=min(waiting, default=None))

    async def insert_audit_event(self, event: events_pb2.AuditRecorded) -> None:
        if event.meta.event_id not in self._s.audit_events:
            self._s.audit_events[event.meta.event_id] = copy.deepcopy(event)
            self._s.audit_stored[event.meta.event_id] = self._trusted.now()

    async def prune_audit_events(self, keep: dt.timedelta, batch: int) -> int:
        if keep < MIN_AUDIT_KEEP or not 1 <= batch <= 10000:
            raise ValueError("keep at least 90 days, batch between 1 and 10000")  # the function's refusal
        cutoff = self._trusted.now() - keep
        doomed = sorted(
            (stored, event_id)
            for event_id, stored in self._s.audit_stored.items()
            if stored < cutoff and from_timestamp(self._s.audit_events[event_id].meta.occurred_at) < cutoff
        )[:batch]
        for _, event_id in doomed:
            del self._s.audit_events[event_id], self._s.audit_stored[event_id]
        return len(doomed)

    async def list_audit_events(self, query: AuditQuery) -> list[events_pb2.AuditRecorded]:
        def position(e: events_pb2.AuditRecorded) -> tuple[dt.datetime, str]:
            return from_timestamp(e.meta.occurred_at), e.meta.event_id

        found = [
            e
            for e in self._s.audit_events.values()
            if query.account_id in e.account_ids
            and (query.since is None or position(e)[0] >= query.since)
            and (query.until is None or position(e)[0] < query.until)
            and (not query.subject or e.subject == query.subject)
            and (query.after is None or position(e) < query.after)
        ]
        return [copy.deepcopy(e) for e in sorted(found, key=position, reverse=True)[: query.limit]]


class InMemorySchedulerStore(InMemoryTransactions[_State]):
    """SchedulerStore fake; ``outbox`` lists the (topic, key, event) of committed transactions."""

    def __init__(self, trusted_clock: Clock | None = None) -> None:
        super().__init__(_State())
        # The database's trusted time (ADR 0031), which audit retention follows.
        self._trusted = trusted_clock or SystemClock()

    @property
    def outbox(self) -> list[tuple[str, str, Message]]:
        return self._state.outbox

    def events(self, topic: str) -> list[Message]:
        """Committed events of one topic, in order."""
        return [event for t, _, event in self._state.outbox if t == topic]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemorySchedulerTx]:
        async with self._transaction_state() as state:
            yield InMemorySchedulerTx(state, self._trusted)
