"""Ports the scheduler's logic depends on; adapters in ``repository`` (PostgreSQL) and ``testing``
(the alert pipeline's are in ``alerts.ports``)."""

from __future__ import annotations

import datetime as dt
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from strongroom.events.v1 import events_pb2
from strongroom_platform.db import InboxOutboxTx

from strongroom_scheduler.models import Instance, Job


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """One page of the audit trail of an account: ``after`` is the (occurred_at, event_id) of the
    last record of the previous page; ``since`` inclusive, ``until`` exclusive."""

    account_id: str
    limit: int
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    subject: str = ""
    after: tuple[dt.datetime, str] | None = None


@dataclass(frozen=True, slots=True)
class AccountAdmission:
    """Admission figures of one account (ADR 0058): ``running`` unfinished backup jobs; ``waiting``
    due slots that the next pass would neither start for lack of a free slot nor skip, the oldest
    of them falling due at ``oldest_waiting`` (None when none waits)."""

    running: int
    waiting: int
    oldest_waiting: dt.datetime | None


class SchedulerTx(InboxOutboxTx, Protocol):
    """One database transaction: every read and write of an operation, committed together.

    ``get_*(..., for_update=True)`` locks the row until the transaction ends,
    so concurrent operations on the same instance or job are serialized.
    """

    async def insert_instance(self, instance: Instance) -> None: ...

    async def update_instance(self, instance: Instance) -> None: ...

    async def get_instance(self, instance_id: str, *, for_update: bool = False) -> Instance | None: ...

    async def list_instances(
        self,
        account_id: str,
        region: str,
        *,
        include_canceled: bool,
        after: tuple[dt.datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[Instance]:
        """Instances of the account, oldest activation first (then by id); ``region`` empty = all regions.

        ``after`` (activated_at, instance_id) starts the list after that instance; ``limit`` caps it.
        """
        ...

    async def due_instances(self, now: dt.datetime, limit: int) -> list[Instance]:
        """Lock and return up to ``limit`` activated instances, not paused, canceled nor released, with
        ``next_backup_at <= now``.

        Rows locked by another transaction are skipped (``FOR UPDATE SKIP
        LOCKED``), so concurrent schedulers never process the same slot twice.
        """
        ...

    async def instance_of_host(self, account_id: str, host_id: str, *, for_update: bool = False) -> Instance | None:
        """The account's instance, not canceled, with this host identity (at most one: a unique index)."""
        ...

    async def preparation_overdue(self, now: dt.datetime, limit: int) -> list[Instance]:
        """Lock and return up to ``limit`` activated, unenrolled, not canceled nor released instances whose
        preparation deadline has passed by ``now`` and whose failure was not published yet (SKIP LOCKED)."""
        ...

    async def insert_job(self, job: Job) -> None: ...

    async def update_job(self, job: Job) -> None: ...

    async def get_job(self, job_id: str, *, for_update: bool = False) -> Job | None: ...

    async def unfinished_jobs(self, instance_id: str) -> list[Job]:
        """Jobs of the instance that have not finished (at most one in practice)."""
        ...

    async def list_jobs(
        self, instance_id: str, limit: int, *, after: tuple[dt.datetime, str] | None = None
    ) -> list[Job]:
        """Up to ``limit`` of the instance's jobs, newest first (creation time, then insertion order).

        ``after`` (created_at, job_id) starts the list after that job.
        """
        ...

    async def count_unfinished_jobs(self) -> int:
        """Backup jobs of every account that have not finished: what the admission cap counts."""
        ...

    async def lock_admission(self) -> None:
        """Serialize admission with every other scheduler replica until the transaction ends."""
        ...

    async def count_due(self, now: dt.datetime) -> int:
        """Instances :meth:`due_instances` would return at ``now``, without a limit or locks."""
        ...

    async def account_admission(
        self, account_id: str, region: str, now: dt.datetime, due_after: dt.datetime
    ) -> AccountAdmission:
        """The account's unfinished backup jobs and its waiting slots (``region`` empty = all regions):
        instances :meth:`due_instances` would return at ``now``, enrolled, without an unfinished
        job, and whose slot (``next_backup_at``) is later than ``due_after`` (the admission window's
        start). Read without locks."""
        ...

    async def insert_audit_event(self, event: events_pb2.AuditRecorded) -> None:
        """Append one audit record; a record whose event id is stored already is ignored."""
        ...

    async def list_audit_events(self, query: AuditQuery) -> list[events_pb2.AuditRecorded]:
        """Records naming ``query.account_id``, newest first (``occurred_at``, then event id, descending)."""
        ...

    async def prune_audit_events(self, keep: dt.timedelta, batch: int) -> int:
        """Delete at most ``batch`` records older than ``keep`` by the trusted time (both when they
        occurred and when they were stored; ``scheduler.prune_audit_events``, which refuses ``keep``
        under 90 days). Returns how many went."""
        ...


class SchedulerStore(Protocol):
    """Opens transactions over the scheduler's state."""

    def transaction(self) -> AbstractAsyncContextManager[SchedulerTx]:
        """A transaction that commits when the block exits normally and rolls back on an exception."""
        ...
