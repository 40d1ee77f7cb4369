"""PostgreSQL adapter of the gateway store (schema ``gateway``, asyncpg)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import asyncpg
from strongroom_platform import db
from strongroom_platform.db import PgTransaction

from strongroom_gateway.agent_cert_store import PgCertificateTx
from strongroom_gateway.gc.moves_store import PgMoveTx
from strongroom_gateway.gc.point_refs import PgPointRefsTx
from strongroom_gateway.gc.repack_store import PgRepackTx, chunk_location
from strongroom_gateway.gc.store import PgGcTx
from strongroom_gateway.ports import (
    Account,
    AccountDataKey,
    ChunkLocation,
    Instance,
    InstanceFilesystem,
    Job,
    JobKind,
    JobState,
    Pack,
    Point,
)
from strongroom_gateway.sessions import SESSIONS_CHANNEL

# Bound on ids per query, so huge lookups do not build huge parameter arrays.
_BATCH = 10_000


def _batches(chunk_ids: Sequence[bytes]) -> Iterator[list[bytes]]:
    """``chunk_ids`` as ``bytes``, in query-sized slices."""
    ids = [bytes(c) for c in chunk_ids]
    for start in range(0, len(ids), _BATCH):
        yield ids[start : start + _BATCH]


class PgGatewayStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def transaction(self) -> AbstractAsyncContextManager[PgGatewayTx]:
        return db.transaction(self._pool, PgGatewayTx)


def _instance(row: asyncpg.Record) -> Instance:
    return Instance(
        instance_id=row["instance_id"],
        account_id=row["account_id"],
        token_sha256=row["token_sha256"],
        token_expires_at=row["token_expires_at"],
        credential_sha256=row["credential_sha256"],
        enrolled_at=row["enrolled_at"],
        revoked=row["revoked"],
        hostname=row["hostname"],
        capacity_bytes=row["capacity_bytes"],
        region=row["region"],
        name=row["name"],
    )


def _job(row: asyncpg.Record) -> Job:
    return Job(
        job_id=row["job_id"],
        instance_id=row["instance_id"],
        account_id=row["account_id"],
        kind=cast(JobKind, row["kind"]),
        command=bytes(row["command"]),
        state=cast(JobState, row["state"]),
        cancel_requested=row["cancel_requested"],
        created_at=row["created_at"],
        point_id=row["point_id"],
        version_id=row["version_id"],
        version_created_at=row["version_created_at"],
        start_before=row["start_before"],
    )


# The account's data key as last wrapped: the newest row of account_key_wraps, else the first row.
_DATA_KEY_SELECT = """
SELECT k.account_id, k.created_at,
       coalesce(w.master_key_id, k.master_key_id) AS master_key_id,
       coalesce(w.wrapped_key, k.wrapped_key) AS wrapped_key
FROM account_keys k
LEFT JOIN LATERAL (
    SELECT master_key_id, wrapped_key FROM account_key_wraps
    WHERE account_id = k.account_id ORDER BY seq DESC LIMIT 1
) w ON true
WHERE k.account_id = $1
"""

# A pack with its effective lock date: the latest of its own and its recorded extensions.
_PACK_SELECT = """
SELECT p.pack_id, p.account_id, p.object_key, p.size, p.created_at, p.format_version, p.version_id,
       greatest(p.retain_until, (SELECT max(r.retain_until) FROM pack_retentions r WHERE r.pack_id = p.pack_id))
           AS retain_until
FROM packs p
"""


def _pack(row: asyncpg.Record) -> Pack:
    return Pack(
        pack_id=row["pack_id"],
        account_id=row["account_id"],
        object_key=row["object_key"],
        size=row["size"],
        created_at=row["created_at"],
        retain_until=row["retain_until"],
        format_version=row["format_version"],
        version_id=row["version_id"],
    )


def _data_key(row: asyncpg.Record) -> AccountDataKey:
    return AccountDataKey(row["account_id"], row["master_key_id"], bytes(row["wrapped_key"]), row["created_at"])


def _point(row: asyncpg.Record) -> Point:
    return Point(
        point_id=row["point_id"],
        account_id=row["account_id"],
        instance_id=row["instance_id"],
        job_id=row["job_id"],
        version_id=row["version_id"],
        mount_point=row["mount_point"],
        filesystem=bytes(row["filesystem"]),
        manifest_key=row["manifest_key"],
        file_count=row["file_count"],
        total_bytes=row["total_bytes"],
        created_at=row["created_at"],
        retain_until=row["retain_until"],
        manifest_version_id=row["manifest_version_id"],
    )


class PgGatewayTx(PgCertificateTx, PgGcTx, PgRepackTx, PgMoveTx, PgPointRefsTx, PgTransaction):
    async def ensure_account(self, account: Account) -> Account:
        await self._conn.execute(
            "INSERT INTO accounts (account_id, chunk_id_key, chunker_seed) VALUES ($1, $2, $3)"
            " ON CONFLICT (account_id) DO NOTHING",
            account.account_id,
            account.chunk_id_key,
            account.chunker_seed,
        )
        stored = await self.get_account(account.account_id)
        assert stored is not None
        return stored

    async def get_account(self, account_id: str) -> Account | None:
        row = await self._conn.fetchrow(
            "SELECT account_id, chunk_id_key, chunker_seed FROM accounts WHERE account_id = $1", account_id
        )
        if row is None:
            return None
        return Account(row["account_id"], bytes(row["chunk_id_key"]), row["chunker_seed"])

    async def get_data_key(self, account_id: str) -> AccountDataKey | None:
        row = await self._conn.fetchrow(_DATA_KEY_SELECT, account_id)
        return None if row is None else _data_key(row)

    async def ensure_data_key(self, key: AccountDataKey) -> AccountDataKey:
        await self._conn.execute(
            "INSERT INTO account_keys (account_id, master_key_id, wrapped_key, created_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (account_id) DO NOTHING",
            key.account_id,
            key.master_key_id,
            key.wrapped_key,
            key.created_at,
        )
        stored = await self.get_data_key(key.account_id)
        assert stored is not None
        return stored

    async def rewrap_data_key(self, account_id: str, old_master_key_id: str, key: AccountDataKey) -> None:
        # A new wrap row, never an update (ADR 0031): the account's rows stay as they were written.
        await self._conn.execute(
            "INSERT INTO account_key_wraps (account_id, master_key_id, wrapped_key)"
            " SELECT k.account_id, $3, $4 FROM (" + _DATA_KEY_SELECT + ") k WHERE k.master_key_id = $2",
            account_id,
            old_master_key_id,
            key.master_key_id,
            key.wrapped_key,
        )

    async def activate_instance(
        self,
        instance_id: str,
        account_id: str,
        token_sha256: str,
        token_expires_at: dt.datetime,
        *,
        region: str = "",
        name: str = "",
    ) -> None:
        await self._conn.execute(
            "INSERT INTO instances (instance_id, account_id, token_sha256, token_expires_at, region, name)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (instance_id) DO UPDATE SET account_id = EXCLUDED.account_id,"
            " token_sha256 = EXCLUDED.token_sha256, token_expires_at = EXCLUDED.token_expires_at, revoked = false,"
            " region = coalesce(nullif(EXCLUDED.region, ''), instances.region),"
            " name = coalesce(nullif(EXCLUDED.name, ''), instances.name)",
            instance_id,
            account_id,
            token_sha256,
            token_expires_at,
            region,
            name,
        )

    async def recover_instance(self, instance: Instance) -> bool:
        result = await self._conn.execute(
            "INSERT INTO instances (instance_id, account_id, enrolled_at, hostname, region, name)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (instance_id) DO NOTHING",
            instance.instance_id,
            instance.account_id,
            instance.enrolled_at,
            instance.hostname,
            instance.region,
            instance.name,
        )
        return bool(result == "INSERT 0 1")

    async def get_instance(self, instance_id: str, *, for_update: bool = False) -> Instance | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._conn.fetchrow("SELECT * FROM instances WHERE instance_id = $1" + lock, instance_id)
        return None if row is None else _instance(row)

    async def get_instances(self, instance_ids: Sequence[str], *, for_update: bool = False) -> dict[str, Instance]:
        # Locked in id order: two batches locking overlapping instances cannot deadlock on them.
        lock = " ORDER BY instance_id FOR UPDATE" if for_update else ""
        rows = await self._conn.fetch(
            "SELECT * FROM instances WHERE instance_id = ANY($1::text[])" + lock, sorted(set(instance_ids))
        )
        return {row["instance_id"]: _instance(row) for row in rows}

    async def find_instance_by_token(self, token_sha256: str) -> Instance | None:
        row = await self._conn.fetchrow("SELECT * FROM instances WHERE token_sha256 = $1 FOR UPDATE", token_sha256)
        return None if row is None else _instance(row)

    async def enroll_instance(self, instance_id: str, credential_sha256: str, hostname: str, now: dt.datetime) -> None:
        await self._conn.execute(
            "UPDATE instances SET credential_sha256 = $2, hostname = $3, enrolled_at = $4,"
            " token_sha256 = NULL, token_expires_at = NULL WHERE instance_id = $1",
            instance_id,
            credential_sha256,
            hostname,
            now,
        )

    async def revoke_instance(self, instance_id: str) -> None:
        await self._conn.execute(
            "UPDATE instances SET revoked = true, credential_sha256 = NULL, token_sha256 = NULL,"
            " token_expires_at = NULL WHERE instance_id = $1",
            instance_id,
        )

    async def set_instance_capacity(self, instance_id: str, capacity_bytes: int, hostname: str) -> None:
        await self._conn.execute(
            "UPDATE instances SET capacity_bytes = $2, hostname = $3 WHERE instance_id = $1",
            instance_id,
            capacity_bytes,
            hostname,
        )

    async def instance_filesystems(self, instance_id: str) -> list[InstanceFilesystem]:
        rows = await self._conn.fetch(
            "SELECT * FROM instance_filesystems WHERE instance_id = $1 ORDER BY mount_point", instance_id
        )
        return [
            InstanceFilesystem(
                instance_id=r["instance_id"],
                mount_point=r["mount_point"],
                filesystem=bytes(r["filesystem"]),
                approved=r["approved"],
                first_seen_at=r["first_seen_at"],
                approved_at=r["approved_at"],
            )
            for r in rows
        ]

    async def add_instance_filesystem(self, filesystem: InstanceFilesystem) -> bool:
        result = await self._conn.execute(
            "INSERT INTO instance_filesystems (instance_id, mount_point, filesystem, approved, first_seen_at,"
            " approved_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (instance_id, mount_point) DO NOTHING",
            filesystem.instance_id,
            filesystem.mount_point,
            filesystem.filesystem,
            filesystem.approved,
            filesystem.first_seen_at,
            filesystem.approved_at,
        )
        return bool(result == "INSERT 0 1")

    async def approve_instance_filesystem(self, instance_id: str, mount_point: str, now: dt.datetime) -> bool:
        result = await self._conn.execute(
            "UPDATE instance_filesystems SET approved = true, approved_at = coalesce(approved_at, $3)"
            " WHERE instance_id = $1 AND mount_point = $2",
            instance_id,
            mount_point,
            now,
        )
        return bool(result == "UPDATE 1")

    async def insert_job(self, job: Job) -> bool:
        result = await self._conn.execute(
            "INSERT INTO jobs (job_id, instance_id, account_id, kind, command, state, cancel_requested, created_at,"
            " point_id, version_id, version_created_at, start_before)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (job_id) DO NOTHING",
            job.job_id,
            job.instance_id,
            job.account_id,
            job.kind,
            job.command,
            job.state,
            job.cancel_requested,
            job.created_at,
            job.point_id,
            job.version_id,
            job.version_created_at,
            job.start_before,
        )
        return bool(result.endswith(" 1"))

    async def insert_jobs(self, jobs: Sequence[Job]) -> set[str]:
        # Rows in the order given (ORDER BY the ordinality): seq, the delivery order, follows it.
        rows = await self._conn.fetch(
            "INSERT INTO jobs (job_id, instance_id, account_id, kind, command, state, cancel_requested, created_at,"
            " point_id, version_id, version_created_at, start_before)"
            " SELECT j, i, a, k, c, s, x, t, p, v, vt, sb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
            " $5::bytea[], $6::text[], $7::boolean[], $8::timestamptz[], $9::text[], $10::text[], $11::timestamptz[],"
            " $12::timestamptz[]) WITH ORDINALITY AS u(j, i, a, k, c, s, x, t, p, v, vt, sb, n) ORDER BY n"
            " ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
            [j.job_id for j in jobs],
            [j.instance_id for j in jobs],
            [j.account_id for j in jobs],
            [j.kind for j in jobs],
            [j.command for j in jobs],
            [j.state for j in jobs],
            [j.cancel_requested for j in jobs],
            [j.created_at for j in jobs],
            [j.point_id for j in jobs],
            [j.version_id for j in jobs],
            [j.version_created_at for j in jobs],
            [j.start_before for j in jobs],
        )
        return {row["job_id"] for row in rows}

    async def get_job(self, job_id: str, *, for_update: bool = False) -> Job | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._conn.fetchrow("SELECT * FROM jobs WHERE job_id = $1" + lock, job_id)
        return None if row is None else _job(row)

    async def update_job(self, job: Job) -> None:
        await self._conn.execute(
            "UPDATE jobs SET state = $2, cancel_requested = $3, version_id = $4, version_created_at = $5"
            " WHERE job_id = $1",
            job.job_id,
            job.state,
            job.cancel_requested,
            job.version_id,
            job.version_created_at,
        )

    async def unfinished_jobs_of(self, instance_ids: Sequence[str]) -> dict[str, list[Job]]:
        rows = await self._conn.fetch(
            "SELECT * FROM jobs WHERE instance_id = ANY($1::text[]) AND state <> 'finished' ORDER BY seq",
            list(instance_ids),
        )
        out: dict[str, list[Job]] = {}
        for row in rows:
            out.setdefault(row["instance_id"], []).append(_job(row))
        return out

    async def get_accounts(self, account_ids: Sequence[str]) -> dict[str, Account]:
        rows = await self._conn.fetch(
            "SELECT account_id, chunk_id_key, chunker_seed FROM accounts WHERE account_id = ANY($1::text[])",
            list(account_ids),
        )
        return {r["account_id"]: Account(r["account_id"], bytes(r["chunk_id_key"]), r["chunker_seed"]) for r in rows}

    async def mark_delivered(self, job_ids: Sequence[str]) -> None:
        await self._conn.execute(
            "UPDATE jobs SET state = 'delivered' WHERE job_id = ANY($1::text[]) AND state = 'queued'", list(job_ids)
        )

    async def unfinished_job_keys(self, instance_ids: Sequence[str]) -> list[tuple[str, str, bool]]:
        rows = await self._conn.fetch(
            "SELECT instance_id, job_id, cancel_requested FROM jobs"
            " WHERE instance_id = ANY($1::text[]) AND state <> 'finished'",
            list(instance_ids),
        )
        return [(r["instance_id"], r["job_id"], r["cancel_requested"]) for r in rows]

    async def notify_sessions(self, payloads: Sequence[str]) -> None:
        # One statement for the batch; PostgreSQL delivers each notification on commit.
        await self._conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", SESSIONS_CHANNEL, payloads)

    async def unfinished_jobs(self, instance_id: str) -> list[Job]:
        rows = await self._conn.fetch(
            "SELECT * FROM jobs WHERE instance_id = $1 AND state <> 'finished' ORDER BY seq",
            instance_id,
        )
        return [_job(r) for r in rows]

    async def find_chunks(self, account_id: str, chunk_ids: Sequence[bytes]) -> dict[bytes, ChunkLocation]:
        found: dict[bytes, ChunkLocation] = {}
        for batch in _batches(chunk_ids):
            rows = await self._conn.fetch(
                'SELECT c.chunk_id, c.pack_id, p.object_key, c."offset", c.length, c.raw_length, c.compression,'
                " p.format_version, p.version_id"
                " FROM chunks c JOIN packs p ON p.pack_id = c.pack_id"
                " WHERE c.account_id = $1 AND c.chunk_id = ANY($2::bytea[])",
                account_id,
                batch,
            )
            for row in rows:
                found[bytes(row["chunk_id"])] = chunk_location(row)
        return found

    async def chunk_packs(self, account_id: str, chunk_ids: Sequence[bytes]) -> tuple[set[str], list[bytes]]:
        packs: set[str] = set()
        missing: list[bytes] = []
        for batch in _batches(chunk_ids):
            # Aggregated in the server: one row back instead of one per chunk.
            row = await self._conn.fetchrow(
                "SELECT coalesce(array_agg(DISTINCT c.pack_id) FILTER (WHERE c.pack_id IS NOT NULL), '{}') AS packs,"
                " coalesce(array_agg(t.id) FILTER (WHERE c.chunk_id IS NULL), '{}') AS missing"
                " FROM unnest($2::bytea[]) AS t(id)"
                " LEFT JOIN chunks c ON c.account_id = $1 AND c.chunk_id = t.id",
                account_id,
                batch,
            )
            assert row is not None
            packs.update(row["packs"])
            missing.extend(bytes(m) for m in row["missing"])
        return packs, missing

    async def insert_pack(self, pack: Pack, chunks: Sequence[ChunkLocation]) -> int:
        await self._conn.execute(
            "INSERT INTO packs (pack_id, account_id, object_key, size, created_at, retain_until, format_version,"
            " version_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (pack_id) DO NOTHING",
            pack.pack_id,
            pack.account_id,
            pack.object_key,
            pack.size,
            pack.created_at,
            pack.retain_until,
            pack.format_version,
            pack.version_id,
        )
        result = await self._conn.fetchval(
            "WITH inserted AS ("
            ' INSERT INTO chunks (account_id, chunk_id, pack_id, "offset", length, raw_length, compression)'
            " SELECT $1, u.chunk_id, $2, u.off, u.len, u.raw, u.comp FROM unnest($3::bytea[], $4::bigint[],"
            " $5::integer[], $6::integer[], $7::smallint[]) AS u(chunk_id, off, len, raw, comp)"
            " ON CONFLICT (account_id, chunk_id) DO NOTHING RETURNING 1)"
            " SELECT count(*) FROM inserted",
            pack.account_id,
            pack.pack_id,
            [c.chunk_id for c in chunks],
            [c.offset for c in chunks],
            [c.length for c in chunks],
            [c.raw_length for c in chunks],
            [c.compression for c in chunks],
        )
        return int(result)

    async def packs_locked_before(self, account_id: str, pack_ids: Sequence[str], when: dt.datetime) -> list[Pack]:
        rows = await self._conn.fetch(
            "SELECT * FROM (" + _PACK_SELECT + " WHERE p.account_id = $1 AND p.pack_id = ANY($2::text[])) p"
            " WHERE retain_until < $3",
            account_id,
            list(pack_ids),
            when,
        )
        return [_pack(r) for r in rows]

    async def set_pack_retention(self, pack_id: str, retain_until: dt.datetime) -> None:
        # An extension is a row (ADR 0031); the pack's own row keeps its first lock date.
        await self._conn.execute(
            "INSERT INTO pack_retentions (pack_id, retain_until) SELECT pack_id, $2 FROM packs WHERE pack_id = $1"
            " ON CONFLICT DO NOTHING",
            pack_id,
            retain_until,
        )

    async def get_point(self, point_id: str) -> Point | None:
        row = await self._conn.fetchrow("SELECT * FROM points WHERE point_id = $1", point_id)
        return None if row is None else _point(row)

    async def find_point(self, job_id: str, mount_point: str) -> Point | None:
        row = await self._conn.fetchrow(
            "SELECT * FROM points WHERE job_id = $1 AND mount_point = $2", job_id, mount_point
        )
        return None if row is None else _point(row)

    async def insert_point(self, point: Point) -> None:
        values: list[Any] = [
            point.point_id,
            point.account_id,
            point.instance_id,
            point.job_id,
            point.version_id,
            point.mount_point,
            point.filesystem,
            point.manifest_key,
            point.file_count,
            point.total_bytes,
            point.created_at,
            point.retain_until,
            point.manifest_version_id,
        ]
        await self._conn.execute(
            "INSERT INTO points (point_id, account_id, instance_id, job_id, version_id, mount_point, filesystem,"
            " manifest_key, file_count, total_bytes, created_at, retain_until, manifest_version_id)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            *values,
        )
