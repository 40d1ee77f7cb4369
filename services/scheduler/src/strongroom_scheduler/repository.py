"""PostgreSQL adapter of ``SchedulerStore`` (schema ``scheduler``, see ``migrations``)."""

from __future__ import annotations

import datetime as dt
import json
from contextlib import AbstractAsyncContextManager

import asyncpg
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform import db
from strongroom_platform.db import PgTransaction
from strongroom_platform.events import from_timestamp, to_timestamp

from strongroom_scheduler.errors import AlreadyExists
from strongroom_scheduler.models import BlockDevice, Instance, Job, host_taken_message
from strongroom_scheduler.ports import AccountAdmission, AuditQuery

_INSTANCE_COLUMNS = (
    "instance_id",
    "account_id",
    "name",
    "region",
    "priority",
    "daily_start_minute",
    "keep_latest_version",
    "roots",
    "activated_at",
    "token_sha256",
    "token_expires_at",
    "next_backup_at",
    "last_scheduled_on",
    "enrolled",
    "hostname",
    "paused",
    "canceled",
    "succeeded_once",
    "backing_up",
    "last_error",
    "host_id",
    "os",
    "block_devices",
    "activated",
    "released",
    "prepare_by",
    "preparation_failure_noted",
    "agent_version",
    "reported_capacity_bytes",
    "capacity_mismatch_noted",
)
_JOB_COLUMNS = (
    "job_id",
    "instance_id",
    "account_id",
    "status",
    "trigger",
    "priority",
    "roots",
    "created_at",
    "finished_at",
    "error",
    "stats",
    "version_id",
    "file_errors",
)
_INSTANCE_SELECT = (
    f"SELECT {', '.join(c + '::text' if c == 'block_devices' else c for c in _INSTANCE_COLUMNS)} FROM instances"
)
_JOB_SELECT = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"
# The advisory lock key of admission (ADR 0053): "adm" in ASCII, unique among the scheduler's locks.
_ADMISSION_LOCK = 0x61646D
_UNFINISHED = "(1, 2, 3, 7)"  # CREATED, QUEUED, RUNNING, CANCELING (models.UNFINISHED_JOB_STATUSES)
# Instances whose daily slot is due at $1 (the partial index instances_due).
_DUE = "activated AND NOT paused AND NOT canceled AND NOT released AND next_backup_at <= $1"
# The account's unfinished jobs (the partial index jobs_unfinished: at most the fleet's cap of rows).
_ACCOUNT_RUNNING = f"""
SELECT count(*) FROM jobs j JOIN instances i ON i.instance_id = j.instance_id
WHERE j.status IN {_UNFINISHED} AND j.account_id = $1 AND ($2 = '' OR i.region = $2)
"""
# The account's slots a schedule pass would leave waiting for a free backup slot (ADR 0058).
_ACCOUNT_WAITING = f"""
SELECT count(*) AS waiting, min(next_backup_at) AS oldest FROM instances i
WHERE {_DUE} AND account_id = $2 AND ($3 = '' OR region = $3) AND enrolled AND next_backup_at > $4
  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.instance_id = i.instance_id AND j.status IN {_UNFINISHED})
"""


def _param(column: str, n: int) -> str:
    return f"${n}::jsonb" if column == "block_devices" else f"${n}"


def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    placeholders = ", ".join(_param(c, n) for n, c in enumerate(columns, start=1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"


def _update_sql(table: str, columns: tuple[str, ...]) -> str:
    assignments = ", ".join(f"{c} = {_param(c, n)}" for n, c in enumerate(columns[1:], start=2))
    return f"UPDATE {table} SET {assignments} WHERE {columns[0]} = $1"


def _devices_json(devices: list[BlockDevice]) -> str:
    return json.dumps([{"device": d.device, "size_bytes": d.size_bytes} for d in devices])


def _instance_values(i: Instance) -> tuple[object, ...]:
    return tuple(_devices_json(i.block_devices) if c == "block_devices" else getattr(i, c) for c in _INSTANCE_COLUMNS)


def _instance(row: asyncpg.Record) -> Instance:
    values = dict(row)
    values["roots"] = list(values["roots"])
    values["block_devices"] = [
        BlockDevice(str(d["device"]), int(d["size_bytes"])) for d in json.loads(values["block_devices"])
    ]
    return Instance(**values)


def _job_values(j: Job) -> tuple[object, ...]:
    return tuple(j.stats.SerializeToString() if c == "stats" else getattr(j, c) for c in _JOB_COLUMNS)


def _job(row: asyncpg.Record) -> Job:
    values = dict(row)
    stats = common_pb2.JobStats()
    stats.ParseFromString(bytes(values.pop("stats")))
    values["roots"] = list(values["roots"])
    values["file_errors"] = list(values["file_errors"])
    return Job(stats=stats, **values)


def _audit_event(row: asyncpg.Record) -> events_pb2.AuditRecorded:
    event = events_pb2.AuditRecorded(
        subject=row["subject"],
        principal_kind=row["principal_kind"],
        account_ids=list(row["account_ids"]),
        method=row["method"],
        verb=row["verb"],
        resources=json.loads(row["resources"]),
        result_code=row["result_code"],
        result_message=row["result_message"],
    )
    event.meta.event_id = row["event_id"]
    event.meta.producer = row["service"]
    event.meta.occurred_at.CopyFrom(to_timestamp(row["occurred_at"]))
    return event


def _host_taken(instance: Instance, exc: asyncpg.UniqueViolationError) -> Exception:
    if exc.constraint_name == "instances_one_per_host":
        return AlreadyExists(host_taken_message(instance.host_id))
    return exc


class PgSchedulerTx(PgTransaction):
    """One open transaction on one connection."""

    async def insert_instance(self, instance: Instance) -> None:
        try:
            await self._conn.execute(_insert_sql("instances", _INSTANCE_COLUMNS), *_instance_values(instance))
        except asyncpg.UniqueViolationError as exc:
            raise _host_taken(instance, exc) from None

    async def update_instance(self, instance: Instance) -> None:
        try:
            result = await self._conn.execute(_update_sql("instances", _INSTANCE_COLUMNS), *_instance_values(instance))
        except asyncpg.UniqueViolationError as exc:
            raise _host_taken(instance, exc) from None
        if result != "UPDATE 1":
            raise KeyError(instance.instance_id)

    async def get_instance(self, instance_id: str, *, for_update: bool = False) -> Instance | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._conn.fetchrow(f"{_INSTANCE_SELECT} WHERE instance_id = $1{lock}", instance_id)
        return _instance(row) if row is not None else None

    async def list_instances(
        self,
        account_id: str,
        region: str,
        *,
        include_canceled: bool,
        after: tuple[dt.datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[Instance]:
        after_at, after_id = after if after is not None else (None, "")
        rows = await self._conn.fetch(
            f"{_INSTANCE_SELECT} WHERE account_id = $1 AND ($2 = '' OR region = $2) AND ($3 OR NOT canceled)"
            " AND ($4::timestamptz IS NULL OR (activated_at, instance_id) > ($4, $5))"
            " ORDER BY activated_at, instance_id LIMIT $6",
            account_id,
            region,
            include_canceled,
            after_at,
            after_id,
            limit,
        )
        return [_instance(r) for r in rows]

    async def due_instances(self, now: dt.datetime, limit: int) -> list[Instance]:
        rows = await self._conn.fetch(
            f"{_INSTANCE_SELECT} WHERE {_DUE} ORDER BY next_backup_at, instance_id LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            limit,
        )
        return [_instance(r) for r in rows]

    async def instance_of_host(self, account_id: str, host_id: str, *, for_update: bool = False) -> Instance | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._conn.fetchrow(
            f"{_INSTANCE_SELECT} WHERE account_id = $1 AND host_id = $2 AND NOT canceled{lock}", account_id, host_id
        )
        return _instance(row) if row is not None else None

    async def preparation_overdue(self, now: dt.datetime, limit: int) -> list[Instance]:
        rows = await self._conn.fetch(
            f"{_INSTANCE_SELECT} WHERE activated AND NOT enrolled AND NOT canceled AND NOT released"
            " AND NOT preparation_failure_noted AND coalesce(prepare_by, token_expires_at) <= $1"
            " ORDER BY coalesce(prepare_by, token_expires_at), instance_id LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            limit,
        )
        return [_instance(r) for r in rows]

    async def insert_job(self, job: Job) -> None:
        await self._conn.execute(_insert_sql("jobs", _JOB_COLUMNS), *_job_values(job))

    async def update_job(self, job: Job) -> None:
        result = await self._conn.execute(_update_sql("jobs", _JOB_COLUMNS), *_job_values(job))
        if result != "UPDATE 1":
            raise KeyError(job.job_id)

    async def get_job(self, job_id: str, *, for_update: bool = False) -> Job | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._conn.fetchrow(f"{_JOB_SELECT} WHERE job_id = $1{lock}", job_id)
        return _job(row) if row is not None else None

    async def unfinished_jobs(self, instance_id: str) -> list[Job]:
        rows = await self._conn.fetch(
            f"{_JOB_SELECT} WHERE instance_id = $1 AND status IN {_UNFINISHED} ORDER BY created_at", instance_id
        )
        return [_job(r) for r in rows]

    async def list_jobs(
        self, instance_id: str, limit: int, *, after: tuple[dt.datetime, str] | None = None
    ) -> list[Job]:
        # The order's tie-breaker is the insertion sequence, which the token does not carry: it is
        # looked up by the job id (the primary key), so the token stays (time, id) like the others.
        after_at, after_id = after if after is not None else (None, "")
        rows = await self._conn.fetch(
            f"{_JOB_SELECT} WHERE instance_id = $1"
            " AND ($3::timestamptz IS NULL OR (created_at, seq) < ($3, (SELECT seq FROM jobs WHERE job_id = $4)))"
            " ORDER BY created_at DESC, seq DESC LIMIT $2",
            instance_id,
            limit,
            after_at,
            after_id,
        )
        return [_job(r) for r in rows]

    async def count_unfinished_jobs(self) -> int:
        count: int = await self._conn.fetchval(f"SELECT count(*) FROM jobs WHERE status IN {_UNFINISHED}")
        return count

    async def lock_admission(self) -> None:
        await self._conn.execute("SELECT pg_advisory_xact_lock($1)", _ADMISSION_LOCK)

    async def count_due(self, now: dt.datetime) -> int:
        count: int = await self._conn.fetchval(f"SELECT count(*) FROM instances WHERE {_DUE}", now)
        return count

    async def account_admission(
        self, account_id: str, region: str, now: dt.datetime, due_after: dt.datetime
    ) -> AccountAdmission:
        running: int = await self._conn.fetchval(_ACCOUNT_RUNNING, account_id, region)
        row = await self._conn.fetchrow(_ACCOUNT_WAITING, now, account_id, region, due_after)
        assert row is not None  # an aggregate always returns one row
        return AccountAdmission(running=running, waiting=int(row["waiting"]), oldest_waiting=row["oldest"])

    async def insert_audit_event(self, event: events_pb2.AuditRecorded) -> None:
        # A refused request may name a NUL (found by schemathesis through the edge, ADR 0055);
        # PostgreSQL text and jsonb cannot hold one, and the trail must keep the record: "\0" shows it.
        def text(value: str) -> str:
            return value.replace("\x00", "\\0")

        resources = {text(k): text(v) for k, v in event.resources.items()}
        await self._conn.execute(
            "INSERT INTO audit_events (event_id, occurred_at, service, subject, principal_kind, account_ids,"
            " method, verb, resources, result_code, result_message)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11)"
            " ON CONFLICT (event_id) DO NOTHING",
            event.meta.event_id,
            from_timestamp(event.meta.occurred_at),
            event.meta.producer,
            text(event.subject),
            event.principal_kind,
            [text(a) for a in event.account_ids],
            text(event.method),
            text(event.verb),
            json.dumps(resources, sort_keys=True),
            event.result_code,
            text(event.result_message),
        )

    async def list_audit_events(self, query: AuditQuery) -> list[events_pb2.AuditRecorded]:
        after_time, after_id = query.after if query.after is not None else (None, "")
        rows = await self._conn.fetch(
            "SELECT * FROM audit_events WHERE account_ids @> ARRAY[$1::text]"
            " AND ($2::timestamptz IS NULL OR occurred_at >= $2)"
            " AND ($3::timestamptz IS NULL OR occurred_at < $3)"
            " AND ($4 = '' OR subject = $4)"
            " AND ($5::timestamptz IS NULL OR (occurred_at, event_id) < ($5, $6))"
            " ORDER BY occurred_at DESC, event_id DESC LIMIT $7",
            query.account_id,
            query.since,
            query.until,
            query.subject,
            after_time,
            after_id,
            query.limit,
        )
        return [_audit_event(r) for r in rows]

    async def prune_audit_events(self, keep: dt.timedelta, batch: int) -> int:
        deleted: int = await self._conn.fetchval("SELECT prune_audit_events($1, $2)", keep, batch)
        return deleted


class PgSchedulerStore:
    """SchedulerStore over a pool bound to the ``scheduler`` schema."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def transaction(self) -> AbstractAsyncContextManager[PgSchedulerTx]:
        return db.transaction(self._pool, PgSchedulerTx)
