"""PostgreSQL access: pools bound to a service's own schema, migrations, and the unit of work.

Each service owns one schema (its name) in the shared database server; the
pool sets ``search_path`` to it, so SQL in the services names tables without
a schema prefix. Migrations are plain SQL strings, applied in order, once,
under an advisory lock so that concurrent starts of a service are safe.

A service's store port opens transactions (``async with store.transaction() as tx``); its
``…Tx`` port extends :class:`InboxTx` or :class:`InboxOutboxTx`, and its asyncpg adapter extends
:class:`PgTransaction` and opens it with :func:`transaction` (ADR 0021).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import asyncpg
from google.protobuf.message import Message

from strongroom_platform import audit, inbox, outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change. ``version`` numbers are never reused or reordered."""

    version: int
    sql: str


def outbox_traceparent_migration(version: int) -> Migration:
    """The migration adding the outbox's ``traceparent`` column (``outbox.OUTBOX_TRACEPARENT_DDL``,
    ADR 0039); a schema with the outbox appends it to its ``MIGRATIONS`` with its next version."""
    return Migration(version, outbox.OUTBOX_TRACEPARENT_DDL)


def outbox_shard_migration(version: int) -> Migration:
    """The migration adding the outbox's ``shard`` column and its index (``outbox.OUTBOX_SHARD_DDL``,
    ADR 0050); a schema with the outbox appends it to its ``MIGRATIONS`` with its next version."""
    return Migration(version, outbox.OUTBOX_SHARD_DDL)


async def create_pool(
    dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10, tls: ssl.SSLContext | None = None
) -> asyncpg.Pool:
    """Open a pool whose connections use ``schema`` as search_path (the migrations create it).

    ``tls`` (``strongroom_platform.tls.backend_ssl_context(settings.pg_tls)``) makes every
    connection use TLS verified by that context, and fail on a server that does not offer it.
    Without it, the DSN decides (``?sslmode=verify-full&sslrootcert=...`` works too).
    """
    if not schema.isidentifier():
        raise ValueError(f"invalid schema name {schema!r}")
    ssl_args: dict[str, Any] = {} if tls is None else {"ssl": tls}
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": schema, "application_name": f"strongroom-{schema}"},
        **ssl_args,
    )
    assert pool is not None  # create_pool only returns None when awaited lazily
    return pool


async def close_pool(pool: asyncpg.Pool, *, within: float = 10.0) -> None:
    """Close ``pool``, waiting at most ``within`` seconds for its connections; then close the rest at once.

    asyncpg's ``Pool.close`` waits without limit for every connection to be released and to finish
    its close handshake. A connection still held by a task that will not give it back, or one whose
    server went away mid-close (a backend terminated under load), would keep the process from ever
    exiting: a service would not stop on SIGTERM, a test session would hang in teardown. After
    ``within`` seconds the pool is terminated (sockets closed, nothing waited for) and a warning says how
    many connections were in use when the close began.
    """
    in_use = pool.get_size() - pool.get_idle_size()  # before closing: a cancelled close resets the count
    try:
        await asyncio.wait_for(pool.close(), within)
    except TimeoutError:
        log.warning(
            "closing the database pool took over %.1f s (%d connection(s) were in use); terminating it",
            within,
            in_use,
        )
        pool.terminate()


class SchemaNewerThanCode(Exception):
    """The database holds migrations of ``schema`` this code does not know: a newer release migrated it.

    Running older code against it could write rows the newer schema no longer expects, so the
    migration stops before changing anything (ADR 0044).
    """

    def __init__(self, schema: str, unknown: Sequence[int], known_up_to: int) -> None:
        self.schema, self.unknown, self.known_up_to = schema, tuple(unknown), known_up_to
        super().__init__(
            f"schema {schema!r} has migration(s) {', '.join(map(str, self.unknown))} applied, but this release "
            f"knows migrations up to {known_up_to}: the database was migrated by a newer release. Deploy that "
            "release (or newer); to go back, restore the database backup taken before the upgrade"
        )


async def apply_migrations(conn: asyncpg.Connection, schema: str, migrations: Sequence[Migration]) -> int:
    """In the caller's transaction: create ``schema`` if missing and apply the migrations not applied yet.

    Takes the schema's migration lock (an advisory transaction lock) first and sets the
    transaction's search_path to the schema. Returns how many were applied. Raises
    :class:`SchemaNewerThanCode`, changing nothing, when the schema holds a migration version not
    in ``migrations`` (a newer release migrated the database).
    """
    if not schema.isidentifier():
        raise ValueError(f"invalid schema name {schema!r}")
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError("migration versions must be unique and ascending")
    lock_id = int.from_bytes(hashlib.sha256(schema.encode()).digest()[:8], "big", signed=True)
    await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_id)
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute(f'SET LOCAL search_path TO "{schema}"')
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    unknown = sorted(done - set(versions))
    if unknown:
        raise SchemaNewerThanCode(schema, unknown, max(versions, default=0))
    applied = 0
    for migration in migrations:
        if migration.version in done:
            continue
        await conn.execute(migration.sql)
        await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", migration.version)
        applied += 1
    return applied


async def migrate(pool: asyncpg.Pool, schema: str, migrations: Sequence[Migration]) -> int:
    """Apply the migrations not applied yet (creating the schema); return how many were applied.

    Runs as the pool's login, which then owns what it creates: services migrate through
    ``pg_roles.migrate_schema`` as the migration owner instead (ADR 0031).
    """
    async with pool.acquire() as conn, conn.transaction():
        return await apply_migrations(cast(asyncpg.Connection, conn), schema, migrations)


class InboxTx(Protocol):
    """A transaction that can claim a consumed event (``inbox.claim_event``)."""

    async def claim_event(self, consumer: str, event_id: str) -> bool:
        """Record that ``consumer`` processes ``event_id``; False if it already did (then do nothing)."""
        ...


class InboxOutboxTx(InboxTx, Protocol):
    """A transaction that can also produce events (transactional outbox)."""

    async def enqueue(self, topic: str, key: str, event: Message) -> None:
        """Add an outgoing event; it is published only if the transaction commits."""
        ...


class PgTransaction:
    """The asyncpg side of :class:`InboxOutboxTx`: one connection inside an open transaction.

    A service's adapter subclasses it and adds its reads and writes on ``self._conn``.
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def claim_event(self, consumer: str, event_id: str) -> bool:
        return await inbox.claim_event(self._conn, consumer, event_id)

    async def claim_events(self, consumer: str, event_ids: Sequence[str]) -> set[str]:
        """``claim_event`` of a batch in one statement: the ids newly claimed (``inbox.claim_events``)."""
        return await inbox.claim_events(self._conn, consumer, event_ids)

    async def enqueue(self, topic: str, key: str, event: Message) -> None:
        await outbox.enqueue(self._conn, topic, key, event)


TxT = TypeVar("TxT", bound=PgTransaction)


@asynccontextmanager
async def transaction(pool: asyncpg.Pool, tx_type: Callable[[asyncpg.Connection], TxT]) -> AsyncIterator[TxT]:
    """A pooled connection in a transaction, as ``tx_type``: commits when the block exits normally, else rolls back.

    During a mutating operator call, a transaction that wrote anything also enqueues the call's
    audit record before it commits (``audit.record_effect``, ADR 0027): no effect without its record.
    """
    async with pool.acquire() as conn, conn.transaction():
        # The pool hands out a proxy of the connection; it forwards every call to it.
        connection = cast(asyncpg.Connection, conn)
        yield tx_type(connection)
        await audit.record_effect(connection)
