"""In-memory fakes of the restore service's ports, for unit tests.

``InMemoryRestoreStore`` passes the same contract suite as the
PostgreSQL adapter; transactions are serialized and roll back on exceptions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from google.protobuf.message import Message
from strongroom_platform.testing import InMemoryTransactions, claim_once, record_event

from strongroom_restore.errors import CatalogUnavailable, SchedulerUnavailable
from strongroom_restore.model import CatalogPoint, InstanceFacts, RestoreJob


@dataclass
class _State:
    jobs: dict[str, RestoreJob] = field(default_factory=dict)
    processed: set[tuple[str, str]] = field(default_factory=set)
    outbox: list[tuple[str, str, Message]] = field(default_factory=list)
    # event_id -> (instance_id, canceled, at)
    cancellations: dict[str, tuple[str, bool, dt.datetime]] = field(default_factory=dict)


class InMemoryRestoreTx:
    def __init__(self, state: _State) -> None:
        self._s = state

    async def claim_event(self, consumer: str, event_id: str) -> bool:
        return claim_once(self._s.processed, consumer, event_id)

    async def get_job(self, restore_job_id: str) -> RestoreJob | None:
        return self._s.jobs.get(restore_job_id)

    async def insert_job(self, job: RestoreJob) -> None:
        if job.restore_job_id in self._s.jobs:
            raise KeyError(f"duplicate restore job {job.restore_job_id}")
        self._s.jobs[job.restore_job_id] = job

    async def update_job(self, job: RestoreJob) -> None:
        current = self._s.jobs[job.restore_job_id]
        self._s.jobs[job.restore_job_id] = dataclasses.replace(
            current,
            status=job.status,
            error=job.error,
            stats=job.stats,
            failed_files=job.failed_files,
            updated_at=job.updated_at,
            finished_at=job.finished_at,
        )

    async def unfinished_jobs_of(self, instance_id: str) -> list[RestoreJob]:
        found = [
            j
            for j in self._s.jobs.values()
            if instance_id in (j.source_instance_id, j.target_instance_id) and not j.finished
        ]
        return sorted(found, key=lambda j: (j.created_at, j.restore_job_id))

    async def record_cancellation(
        self, event_id: str, account_id: str, instance_id: str, *, canceled: bool, at: dt.datetime
    ) -> None:
        self._s.cancellations.setdefault(event_id, (instance_id, canceled, at))

    async def is_canceled(self, instance_id: str) -> bool:
        rows = [(at, event_id, c) for event_id, (i, c, at) in self._s.cancellations.items() if i == instance_id]
        return max(rows)[2] if rows else False

    async def enqueue(self, topic: str, key: str, event: Message) -> None:
        record_event(self._s.outbox, topic, key, event)


class InMemoryRestoreStore(InMemoryTransactions[_State]):
    """RestoreStore fake; ``outbox`` lists (topic, key, event) of committed transactions."""

    def __init__(self) -> None:
        super().__init__(_State())

    @property
    def outbox(self) -> list[tuple[str, str, Message]]:
        return self._state.outbox

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryRestoreTx]:
        async with self._transaction_state() as state:
            yield InMemoryRestoreTx(state)

    async def get_job(self, restore_job_id: str) -> RestoreJob | None:
        return self._state.jobs.get(restore_job_id)

    async def list_jobs(
        self,
        instance_id: str,
        *,
        accounts: Collection[str] | None,
        limit: int,
        after: tuple[dt.datetime, str] | None = None,
    ) -> list[RestoreJob]:
        def position(j: RestoreJob) -> tuple[dt.datetime, bytes]:
            return j.created_at, j.restore_job_id.encode()  # bytewise ids, as COLLATE "C"

        start = None if after is None else (after[0], after[1].encode())
        jobs = [
            j
            for j in self._state.jobs.values()
            if instance_id in (j.target_instance_id, j.source_instance_id)
            and (accounts is None or j.account_id in accounts)
            and (start is None or position(j) < start)
        ]
        jobs.sort(key=position, reverse=True)
        return jobs[:limit]


class FakeCatalogClient:
    """CatalogClient fake: knows the points added with :meth:`add`; ``unavailable`` simulates an outage."""

    def __init__(self, *points: CatalogPoint) -> None:
        self.points = {p.point_id: p for p in points}
        self.unavailable = False

    def add(self, point: CatalogPoint) -> None:
        self.points[point.point_id] = point

    async def get_point(self, point_id: str) -> CatalogPoint | None:
        if self.unavailable:
            raise CatalogUnavailable("catalog unavailable: connection refused")
        return self.points.get(point_id)


class FakeInstanceDirectory:
    """InstanceDirectory fake: knows the instances added with :meth:`add`; ``unavailable`` simulates an outage."""

    def __init__(self, *instances: InstanceFacts) -> None:
        self.instances = {i.instance_id: i for i in instances}
        self.unavailable = False

    def add(self, instance: InstanceFacts) -> None:
        self.instances[instance.instance_id] = instance

    async def get_instance(self, instance_id: str) -> InstanceFacts | None:
        if self.unavailable:
            raise SchedulerUnavailable("scheduler unavailable: connection refused")
        return self.instances.get(instance_id)
