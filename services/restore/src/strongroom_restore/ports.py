"""Ports of the restore service: its storage, the catalog it asks about points, the scheduler it asks about instances.

Adapters: ``repository.PgRestoreStore`` / ``testing.InMemoryRestoreStore``
(both pass ``services/restore/tests/restore_contract_repository.py``),
``catalog_client.GrpcCatalogClient`` / ``testing.FakeCatalogClient``, and
``scheduler_client.SchedulerInstanceDirectory`` / ``testing.FakeInstanceDirectory``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from strongroom_platform.db import InboxOutboxTx

from strongroom_restore.model import CatalogPoint, InstanceFacts, RestoreJob


class RestoreTx(InboxOutboxTx, Protocol):
    """Writes that commit together or not at all (an exception leaving the block rolls back)."""

    async def get_job(self, restore_job_id: str) -> RestoreJob | None:
        """The job, locked against concurrent updates until the transaction ends."""
        ...

    async def insert_job(self, job: RestoreJob) -> None:
        """Store a new job (its id must be new)."""
        ...

    async def update_job(self, job: RestoreJob) -> None:
        """Store the job's status, error, stats, updated_at and finished_at."""
        ...

    async def unfinished_jobs_of(self, instance_id: str) -> list[RestoreJob]:
        """Unfinished jobs restoring from or onto ``instance_id``, locked, oldest first."""
        ...

    async def record_cancellation(
        self, event_id: str, account_id: str, instance_id: str, *, canceled: bool, at: dt.datetime
    ) -> None:
        """Append that backup of the instance was canceled (or reinstated) at ``at``; once per event."""
        ...

    async def is_canceled(self, instance_id: str) -> bool:
        """Whether the newest cancellation row of the instance says canceled (no row: not canceled)."""
        ...


class RestoreStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[RestoreTx]:
        """Open a transaction; it commits when the block exits normally."""
        ...

    async def get_job(self, restore_job_id: str) -> RestoreJob | None: ...

    async def list_jobs(
        self,
        instance_id: str,
        *,
        accounts: Collection[str] | None,
        limit: int,
        after: tuple[dt.datetime, str] | None = None,
    ) -> list[RestoreJob]:
        """Jobs of ``accounts`` (None: of every account) restoring to or from ``instance_id``, newest
        first (then by job id, bytewise, descending), at most ``limit``; ``after`` (created_at,
        restore_job_id) starts the list after that job."""
        ...


class CatalogClient(Protocol):
    async def get_point(self, point_id: str) -> CatalogPoint | None:
        """The live point, or None when the catalog does not know it (or it expired).

        Raises ``errors.CatalogUnavailable`` when the catalog cannot answer.
        """
        ...


class InstanceDirectory(Protocol):
    async def get_instance(self, instance_id: str) -> InstanceFacts | None:
        """The instance, or None when the scheduler does not know it.

        Raises ``errors.SchedulerUnavailable`` when the scheduler cannot answer.
        """
        ...
