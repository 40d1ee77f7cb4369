"""PostgreSQL access: pools bound to a service's own schema, and migrations.

Each service owns one schema (its name) in the shared database server; the
pool sets ``search_path`` to it, so SQL in the services names tables without
a schema prefix. Migrations are plain SQL strings, applied in order, once,
under an advisory lock so that concurrent starts of a service are safe.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change. ``version`` numbers are never reused or reordered."""

    version: int
    sql: str


async def create_pool(
    dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10, tls: ssl.SSLContext | None = None
) -> asyncpg.Pool:
    """Open a pool whose connections use ``schema`` (created if missing) as search_path.

    ``tls`` (``strongroom_platform.tls.backend_ssl_context(settings.pg_tls)``) makes every
    connection use TLS verified by that context, and fail on a server that does not offer it.
    Without it, the DSN decides (``?sslmode=verify-full&sslrootcert=...`` works too).
    """
    if not schema.isidentifier():
        raise ValueError(f"invalid schema name {schema!r}")
    ssl_args: dict[str, Any] = {} if tls is None else {"ssl": tls}
    conn = await asyncpg.connect(dsn, **ssl_args)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": schema, "application_name": f"strongroom-{schema}"},
        **ssl_args,
    )
    assert pool is not None  # create_pool only returns None when awaited lazily
    return pool


async def migrate(pool: asyncpg.Pool, schema: str, migrations: Sequence[Migration]) -> int:
    """Apply the migrations not applied yet; return how many were applied."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError("migration versions must be unique and ascending")
    lock_id = int.from_bytes(hashlib.sha256(schema.encode()).digest()[:8], "big", signed=True)
    applied = 0
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_id)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations:
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", migration.version)
            applied += 1
    return applied
