"""PostgreSQL adapter of :class:`~strongroom_restore.ports.RestoreStore` (schema ``restore``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from contextlib import AbstractAsyncContextManager

import asyncpg
from strongroom.common.v1 import common_pb2
from strongroom_platform import db
from strongroom_platform.db import PgTransaction

from strongroom_restore.model import FINISHED, RestoreJob

_COLUMNS = (
    "restore_job_id, account_id, point_id, source_instance_id, target_instance_id, status, include_paths,"
    " exclude_paths, target_path, conflict_policy, error, stats, created_at, updated_at, finished_at,"
    " failed_paths, failed_reasons"
)


def _job(row: asyncpg.Record) -> RestoreJob:
    return RestoreJob(
        restore_job_id=row["restore_job_id"],
        account_id=row["account_id"],
        point_id=row["point_id"],
        source_instance_id=row["source_instance_id"],
        target_instance_id=row["target_instance_id"],
        status=row["status"],
        include_paths=tuple(row["include_paths"]),
        exclude_paths=tuple(row["exclude_paths"]),
        target_path=row["target_path"],
        conflict_policy=row["conflict_policy"],
        error=row["error"],
        stats=common_pb2.JobStats.FromString(bytes(row["stats"])),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        failed_files=tuple(zip(row["failed_paths"], row["failed_reasons"], strict=True)),
    )


class PgRestoreTx(PgTransaction):
    async def get_job(self, restore_job_id: str) -> RestoreJob | None:
        row = await self._conn.fetchrow(
            f"SELECT {_COLUMNS} FROM restore_jobs WHERE restore_job_id = $1 FOR UPDATE", restore_job_id
        )
        return None if row is None else _job(row)

    async def insert_job(self, job: RestoreJob) -> None:
        await self._conn.execute(
            f"INSERT INTO restore_jobs ({_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            job.restore_job_id,
            job.account_id,
            job.point_id,
            job.source_instance_id,
            job.target_instance_id,
            job.status,
            list(job.include_paths),
            list(job.exclude_paths),
            job.target_path,
            job.conflict_policy,
            job.error,
            job.stats.SerializeToString(),
            job.created_at,
            job.updated_at,
            job.finished_at,
            [path for path, _ in job.failed_files],
            [reason for _, reason in job.failed_files],
        )

    async def update_job(self, job: RestoreJob) -> None:
        await self._conn.execute(
            "UPDATE restore_jobs SET status = $2, error = $3, stats = $4, updated_at = $5, finished_at = $6,"
            " failed_paths = $7, failed_reasons = $8 WHERE restore_job_id = $1",
            job.restore_job_id,
            job.status,
            job.error,
            job.stats.SerializeToString(),
            job.updated_at,
            job.finished_at,
            [path for path, _ in job.failed_files],
            [reason for _, reason in job.failed_files],
        )

    async def unfinished_jobs_of(self, instance_id: str) -> list[RestoreJob]:
        rows = await self._conn.fetch(
            f"SELECT {_COLUMNS} FROM restore_jobs WHERE (source_instance_id = $1 OR target_instance_id = $1)"
            " AND NOT (status = ANY($2::smallint[])) ORDER BY created_at, restore_job_id FOR UPDATE",
            instance_id,
            sorted(FINISHED),
        )
        return [_job(r) for r in rows]

    async def record_cancellation(
        self, event_id: str, account_id: str, instance_id: str, *, canceled: bool, at: dt.datetime
    ) -> None:
        await self._conn.execute(
            "INSERT INTO instance_cancellations (event_id, instance_id, account_id, canceled, at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            event_id,
            instance_id,
            account_id,
            canceled,
            at,
        )

    async def is_canceled(self, instance_id: str) -> bool:
        canceled = await self._conn.fetchval(
            "SELECT canceled FROM instance_cancellations WHERE instance_id = $1 ORDER BY at DESC, event_id DESC"
            " LIMIT 1",
            instance_id,
        )
        return bool(canceled)


class PgRestoreStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def transaction(self) -> AbstractAsyncContextManager[PgRestoreTx]:
        return db.transaction(self._pool, PgRestoreTx)

    async def get_job(self, restore_job_id: str) -> RestoreJob | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM restore_jobs WHERE restore_job_id = $1", restore_job_id)
        return None if row is None else _job(row)

    async def list_jobs(
        self,
        instance_id: str,
        *,
        accounts: Collection[str] | None,
        limit: int,
        after: tuple[dt.datetime, str] | None = None,
    ) -> list[RestoreJob]:
        after_at, after_id = after if after is not None else (None, "")
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM restore_jobs"
                " WHERE (target_instance_id = $1 OR source_instance_id = $1)"
                " AND ($3::text[] IS NULL OR account_id = ANY($3::text[]))"
                " AND ($4::timestamptz IS NULL OR created_at < $4"
                ' OR (created_at = $4 AND restore_job_id COLLATE "C" < $5::text COLLATE "C"))'
                ' ORDER BY created_at DESC, restore_job_id COLLATE "C" DESC LIMIT $2',
                instance_id,
                limit,
                None if accounts is None else list(accounts),
                after_at,
                after_id,
            )
        return [_job(r) for r in rows]
