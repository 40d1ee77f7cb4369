"""The PostgreSQL :class:`~strongroom_platform.auth.tokens.TokenStore`: schema ``auth``.

The migration owner migrates the schema (``AUTH_SPEC``, ADR 0031); the scheduler's role writes
tokens (and may only set ``revoked_at`` on an existing one); every other service's role only reads
``auth.api_tokens`` to verify bearers. SQL names
the schema explicitly, so any service's pool can read it whatever its search_path. Writes made by
an operator's call enqueue its audit record in the same transaction (ADR 0027), in the outbox of
the pool's schema: the store that serves ``TokenService`` uses the scheduler's pool.
"""

from __future__ import annotations

import datetime as dt
import json

import asyncpg

from strongroom_platform import audit
from strongroom_platform.auth.principal import Role
from strongroom_platform.auth.tokens import TokenRecord
from strongroom_platform.db import Migration
from strongroom_platform.pg_roles import SERVICE_ROLES, SchemaSpec

AUTH_SCHEMA = "auth"

AUTH_MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE IF NOT EXISTS auth.api_tokens (
            token_id      text PRIMARY KEY CHECK (token_id ~ '^[0-9a-f]{24}$'),
            secret_sha256 text NOT NULL CHECK (secret_sha256 ~ '^[0-9a-f]{64}$'),
            name          text NOT NULL CHECK (length(name) <= 200),
            grants        jsonb NOT NULL,
            created_by    text NOT NULL,
            created_at    timestamptz NOT NULL,
            expires_at    timestamptz NOT NULL,
            revoked_at    timestamptz
        );
        CREATE TABLE IF NOT EXISTS auth.api_token_accounts (
            account_id text NOT NULL,
            token_id   text NOT NULL REFERENCES auth.api_tokens (token_id),
            PRIMARY KEY (account_id, token_id)
        );
        """,
    ),
]


_WRITER = SERVICE_ROLES["scheduler"]

AUTH_SPEC = SchemaSpec(
    schema=AUTH_SCHEMA,
    migrations=AUTH_MIGRATIONS,
    grants={
        role: (
            {"api_tokens": "SELECT, INSERT, UPDATE (revoked_at)", "api_token_accounts": "SELECT, INSERT"}
            if role == _WRITER
            else {"api_tokens": "SELECT", "api_token_accounts": ""}
        )
        for role in SERVICE_ROLES.values()
    },
)


def _record(row: asyncpg.Record) -> TokenRecord:
    grants = {account: Role(role) for account, role in json.loads(row["grants"]).items()}
    return TokenRecord(
        token_id=row["token_id"],
        secret_sha256=row["secret_sha256"],
        name=row["name"],
        grants=grants,
        created_by=row["created_by"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


class PgTokenStore:
    """Tokens in ``auth.api_tokens``, with an account index for listing."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, record: TokenRecord) -> None:
        grants = json.dumps({account: role.value for account, role in record.grants.items()})
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO auth.api_tokens (token_id, secret_sha256, name, grants, created_by, created_at,"
                " expires_at, revoked_at) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8)",
                record.token_id,
                record.secret_sha256,
                record.name,
                grants,
                record.created_by,
                record.created_at,
                record.expires_at,
                record.revoked_at,
            )
            await conn.executemany(
                "INSERT INTO auth.api_token_accounts (account_id, token_id) VALUES ($1, $2)",
                [(account, record.token_id) for account in record.grants],
            )
            await audit.record_effect(conn)

    async def get(self, token_id: str) -> TokenRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM auth.api_tokens WHERE token_id = $1", token_id)
        return _record(row) if row is not None else None

    async def list(
        self, account_id: str, *, after: tuple[dt.datetime, str] | None = None, limit: int | None = None
    ) -> list[TokenRecord]:
        after_at, after_id = after if after is not None else (None, "")
        rows = await self._pool.fetch(
            "SELECT t.* FROM auth.api_tokens t JOIN auth.api_token_accounts a USING (token_id)"
            " WHERE a.account_id = $1"
            " AND ($2::timestamptz IS NULL OR t.created_at < $2"
            ' OR (t.created_at = $2 AND t.token_id COLLATE "C" < $3::text COLLATE "C"))'
            ' ORDER BY t.created_at DESC, t.token_id COLLATE "C" DESC LIMIT $4',
            account_id,
            after_at,
            after_id,
            limit,
        )
        return [_record(r) for r in rows]

    async def revoke(self, token_id: str, at: dt.datetime) -> TokenRecord | None:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE auth.api_tokens SET revoked_at = coalesce(revoked_at, $2) WHERE token_id = $1 RETURNING *",
                token_id,
                at,
            )
            await audit.record_effect(conn)
        return _record(row) if row is not None else None
