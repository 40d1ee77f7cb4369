"""A database migrated by a newer release is refused, unchanged, by older code (ADR 0044)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from strongroom_platform.db import Migration, SchemaNewerThanCode, apply_migrations
from strongroom_platform.pg_roles import migrate_schemas
from strongroom_platform.schemas import installed_specs

pytestmark = pytest.mark.integration

OLD = [Migration(1, "CREATE TABLE t (id int PRIMARY KEY)")]
NEW = [*OLD, Migration(2, "ALTER TABLE t ADD COLUMN note text")]


async def _apply(dsn: str, migrations: list[Migration]) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            return await apply_migrations(conn, "newer_check", migrations)
    finally:
        await conn.close()


async def test_older_code_refuses_a_schema_migrated_further(pg_dsn: str) -> None:
    assert await _apply(pg_dsn, NEW) == 2
    with pytest.raises(
        SchemaNewerThanCode, match=r"migration\(s\) 2 applied, but this release knows migrations up to 1"
    ):
        await _apply(pg_dsn, OLD)
    assert await _apply(pg_dsn, NEW) == 0  # the same release still migrates (nothing to do)


async def test_strongroom_admin_migrate_exits_1_with_the_reason(pg_dsn: str) -> None:
    await migrate_schemas(pg_dsn, installed_specs())
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("INSERT INTO scheduler.schema_migrations (version) VALUES (9999)")
    finally:
        await conn.close()
    env = {**os.environ, "STRONGROOM_PG_MIGRATE_DSN": pg_dsn}
    result = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).with_name("strongroom-admin")), "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "schema 'scheduler' has migration(s) 9999 applied" in result.stderr
    assert "Traceback" not in result.stderr
