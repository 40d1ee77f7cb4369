"""PostgreSQL adapter of the verification port (schema ``gateway``, tables of migration 10)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import cast

import asyncpg
from strongroom_platform import db

from strongroom_gateway.ports import ChunkLocation, Pack, Point
from strongroom_gateway.repository import PgGatewayTx, _pack, _point
from strongroom_gateway.verify.model import (
    DamagedFile,
    DamagedPack,
    PointCheck,
    Progress,
    Recoverability,
    Scope,
    State,
    Verification,
)


class PgVerifyStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def transaction(self) -> AbstractAsyncContextManager[PgVerifyTx]:
        return db.transaction(self._pool, PgVerifyTx)


def _verification(row: asyncpg.Record) -> Verification:
    return Verification(
        verification_id=row["verification_id"],
        account_id=row["account_id"],
        scope=cast(Scope, row["scope"]),
        target_id=row["target_id"],
        instance_id=row["instance_id"],
        state=cast(State, row["state"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        progress=Progress(
            points_total=row["points_total"],
            points_done=row["points_done"],
            packs_checked=row["packs_checked"],
            bytes_read=row["bytes_read"],
            damaged_files=row["damaged_files"],
            damaged_packs=row["damaged_packs"],
        ),
        error=row["error"],
    )


class PgVerifyTx(PgGatewayTx):
    async def list_points(self, account_id: str, instance_id: str | None = None) -> list[Point]:
        rows = await self._conn.fetch(
            "SELECT * FROM points WHERE account_id = $1 AND ($2::text IS NULL OR instance_id = $2)"
            " ORDER BY created_at, point_id",
            account_id,
            instance_id,
        )
        return [_point(r) for r in rows]

    async def pack_chunks(self, pack_id: str) -> tuple[Pack | None, list[ChunkLocation]]:
        row = await self._conn.fetchrow("SELECT * FROM packs WHERE pack_id = $1", pack_id)
        if row is None:
            return None, []
        pack = _pack(row)
        rows = await self._conn.fetch(
            'SELECT chunk_id, "offset", length, raw_length, compression FROM chunks WHERE pack_id = $1'
            ' ORDER BY "offset"',
            pack_id,
        )
        return pack, [
            ChunkLocation(
                chunk_id=bytes(r["chunk_id"]),
                pack_id=pack_id,
                object_key=pack.object_key,
                offset=r["offset"],
                length=r["length"],
                raw_length=r["raw_length"],
                compression=r["compression"],
                pack_format=pack.format_version,
                version_id=pack.version_id,
            )
            for r in rows
        ]

    async def insert_verification(self, verification: Verification) -> None:
        await self._conn.execute(
            "INSERT INTO verifications (verification_id, account_id, scope, target_id, instance_id, state,"
            " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            verification.verification_id,
            verification.account_id,
            verification.scope,
            verification.target_id,
            verification.instance_id,
            verification.state,
            verification.created_at,
        )

    async def get_verification(self, verification_id: str) -> Verification | None:
        row = await self._conn.fetchrow("SELECT * FROM verifications WHERE verification_id = $1", verification_id)
        return None if row is None else _verification(row)

    async def list_verifications(
        self, account_id: str, instance_id: str | None, limit: int, after: tuple[dt.datetime, str] | None = None
    ) -> list[Verification]:
        after_at, after_id = after if after is not None else (None, "")
        rows = await self._conn.fetch(
            "SELECT * FROM verifications WHERE account_id = $1 AND ($2::text IS NULL OR instance_id = $2)"
            " AND ($4::timestamptz IS NULL OR created_at < $4"
            ' OR (created_at = $4 AND verification_id COLLATE "C" < $5::text COLLATE "C"))'
            ' ORDER BY created_at DESC, verification_id COLLATE "C" DESC LIMIT $3',
            account_id,
            instance_id,
            limit,
            after_at,
            after_id,
        )
        return [_verification(r) for r in rows]

    async def claim_verification(self, owner: str, now: dt.datetime, lease_until: dt.datetime) -> Verification | None:
        row = await self._conn.fetchrow(
            "SELECT verification_id, state FROM verifications"
            " WHERE state = 'queued' OR (state = 'running' AND lease_until < $1)"
            " ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            now,
        )
        if row is None:
            return None
        verification_id = row["verification_id"]
        if row["state"] == "running":  # taken over: start again from nothing
            await self._conn.execute(
                "DELETE FROM verification_damaged_files WHERE verification_id = $1", verification_id
            )
            await self._conn.execute(
                "DELETE FROM verification_damaged_packs WHERE verification_id = $1", verification_id
            )
        claimed = await self._conn.fetchrow(
            "UPDATE verifications SET state = 'running', lease_owner = $2, lease_until = $3,"
            " started_at = coalesce(started_at, $4), points_total = 0, points_done = 0, packs_checked = 0,"
            " bytes_read = 0, damaged_files = 0, damaged_packs = 0 WHERE verification_id = $1 RETURNING *",
            verification_id,
            owner,
            lease_until,
            now,
        )
        assert claimed is not None
        return _verification(claimed)

    async def update_progress(
        self, verification_id: str, owner: str, progress: Progress, lease_until: dt.datetime
    ) -> bool:
        result = await self._conn.execute(
            "UPDATE verifications SET points_total = $3, points_done = $4, packs_checked = $5, bytes_read = $6,"
            " damaged_files = $7, damaged_packs = $8, lease_until = $9"
            " WHERE verification_id = $1 AND lease_owner = $2 AND state = 'running'",
            verification_id,
            owner,
            progress.points_total,
            progress.points_done,
            progress.packs_checked,
            progress.bytes_read,
            progress.damaged_files,
            progress.damaged_packs,
            lease_until,
        )
        return bool(result == "UPDATE 1")

    async def finish_verification(
        self, verification_id: str, owner: str, state: State, now: dt.datetime, progress: Progress, error: str
    ) -> bool:
        result = await self._conn.execute(
            "UPDATE verifications SET state = $3, finished_at = $4, points_total = $5, points_done = $6,"
            " packs_checked = $7, bytes_read = $8, damaged_files = $9, damaged_packs = $10, error = $11,"
            " lease_owner = NULL, lease_until = NULL"
            " WHERE verification_id = $1 AND lease_owner = $2 AND state = 'running'",
            verification_id,
            owner,
            state,
            now,
            progress.points_total,
            progress.points_done,
            progress.packs_checked,
            progress.bytes_read,
            progress.damaged_files,
            progress.damaged_packs,
            error,
        )
        return bool(result == "UPDATE 1")

    async def add_damaged_files(self, verification_id: str, first_seq: int, files: Sequence[DamagedFile]) -> None:
        await self._conn.executemany(
            "INSERT INTO verification_damaged_files (verification_id, seq, point_id, path, reason)"
            " VALUES ($1, $2, $3, $4, $5)",
            [(verification_id, first_seq + n, f.point_id, f.path, f.reason) for n, f in enumerate(files)],
        )

    async def add_damaged_packs(self, verification_id: str, packs: Sequence[DamagedPack]) -> None:
        await self._conn.executemany(
            "INSERT INTO verification_damaged_packs (verification_id, pack_id, reason) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            [(verification_id, p.pack_id, p.reason) for p in packs],
        )

    async def damaged_files(self, verification_id: str, limit: int) -> list[DamagedFile]:
        rows = await self._conn.fetch(
            "SELECT point_id, path, reason FROM verification_damaged_files WHERE verification_id = $1"
            " ORDER BY seq LIMIT $2",
            verification_id,
            limit,
        )
        return [DamagedFile(r["point_id"], r["path"], r["reason"]) for r in rows]

    async def damaged_packs(self, verification_id: str, limit: int) -> list[DamagedPack]:
        rows = await self._conn.fetch(
            "SELECT pack_id, reason FROM verification_damaged_packs WHERE verification_id = $1"
            " ORDER BY pack_id LIMIT $2",
            verification_id,
            limit,
        )
        return [DamagedPack(r["pack_id"], r["reason"]) for r in rows]

    async def record_pack_check(self, pack_id: str, checked_at: dt.datetime, damaged_chunks: int, reason: str) -> None:
        await self._conn.execute(
            "INSERT INTO pack_checks (pack_id, checked_at, damaged_chunks, reason) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (pack_id) DO UPDATE SET checked_at = EXCLUDED.checked_at,"
            " damaged_chunks = EXCLUDED.damaged_chunks, reason = EXCLUDED.reason",
            pack_id,
            checked_at,
            damaged_chunks,
            reason,
        )

    async def count_packs(self) -> int:
        # A reclaimed pack (ADR 0041) is gone on purpose: never sampled, never counted.
        return int(
            await self._conn.fetchval(
                "SELECT count(*) FROM packs p"
                " WHERE NOT EXISTS (SELECT 1 FROM pack_reclaims x WHERE x.pack_id = p.pack_id)"
            )
        )

    async def least_recently_checked_packs(self, limit: int) -> list[str]:
        rows = await self._conn.fetch(
            "SELECT p.pack_id FROM packs p LEFT JOIN pack_checks c USING (pack_id)"
            " WHERE NOT EXISTS (SELECT 1 FROM pack_reclaims x WHERE x.pack_id = p.pack_id)"
            " ORDER BY coalesce(c.checked_at, p.created_at), c.checked_at IS NOT NULL, p.pack_id LIMIT $1",
            limit,
        )
        return [r["pack_id"] for r in rows]

    async def record_point_check(self, check: PointCheck) -> None:
        if check.full:
            conflict = (
                "DO UPDATE SET checked_at = EXCLUDED.checked_at, full_check = true,"
                " damaged_files = EXCLUDED.damaged_files, verification_id = EXCLUDED.verification_id"
            )
        else:
            conflict = "DO UPDATE SET damaged_files = greatest(point_checks.damaged_files, EXCLUDED.damaged_files)"
        await self._conn.execute(
            "INSERT INTO point_checks (point_id, account_id, instance_id, point_created_at, checked_at, full_check,"
            " damaged_files, verification_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (point_id) "
            + conflict,
            check.point_id,
            check.account_id,
            check.instance_id,
            check.point_created_at,
            check.checked_at,
            check.full,
            check.damaged_files,
            check.verification_id,
        )

    async def recoverability(self, account_id: str, instance_id: str | None) -> list[Recoverability]:
        rows = await self._conn.fetch(
            "SELECT i.instance_id, l.point_id, l.point_created_at, l.checked_at, l.damaged_files, l.verification_id,"
            " (SELECT count(*) FROM point_checks d WHERE d.instance_id = i.instance_id AND d.damaged_files > 0)"
            " AS damaged_points"
            " FROM (SELECT DISTINCT instance_id FROM point_checks WHERE account_id = $1"
            " AND ($2::text IS NULL OR instance_id = $2)) i"
            " LEFT JOIN LATERAL (SELECT * FROM point_checks c WHERE c.instance_id = i.instance_id AND c.full_check"
            " ORDER BY c.point_created_at DESC LIMIT 1) l ON true ORDER BY i.instance_id",
            account_id,
            instance_id,
        )
        return [
            Recoverability(
                instance_id=r["instance_id"],
                last_verified_point_id=r["point_id"] or "",
                last_verified_point_created_at=r["point_created_at"],
                last_verified_at=r["checked_at"],
                damaged_files=r["damaged_files"] or 0,
                damaged_points=r["damaged_points"],
                last_verification_id=r["verification_id"] or "",
            )
            for r in rows
        ]

    async def claim_day(self, day: dt.date, verification_id: str) -> bool:
        result = await self._conn.execute(
            "INSERT INTO verification_days (day, verification_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            day,
            verification_id,
        )
        return bool(result == "INSERT 0 1")
