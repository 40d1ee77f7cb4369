"""The attacks of issue 9 ("PostgreSQL roles"), run as each service's own role against a real PostgreSQL.

Every schema is migrated by the migration owner (no superuser) with the schemas installed in the
workspace (``strongroom-admin migrate``'s discovery); then each service's role tries what an
attacker holding that service's database credentials would: erase or rewrite keys, points,
versions, packs and chunks, set the trusted clock, reach into another service's schema, change
the schema. Each is refused by PostgreSQL with a clear error. Expiry still works, through
``catalog.expire_due_versions`` only, on the trusted time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest
from strongroom_platform.clock import utc
from strongroom_platform.pg_roles import (
    SERVICE_ROLES,
    LoginRefused,
    PrivilegeError,
    check_service_login,
    migrate_schemas,
)
from strongroom_platform.schemas import installed_specs
from strongroom_platform.testing import FakeClock
from strongroom_platform.trusted_time import set_clock_offset, trusted_clock
from strongroom_testing.fixtures import PgLogins

pytestmark = pytest.mark.integration

DAY = dt.timedelta(days=1)
SCHEMAS = ("scheduler", "catalog", "billing", "gateway", "restore")


@pytest.fixture
async def logins(pg_logins: PgLogins) -> PgLogins:
    applied = await migrate_schemas(pg_logins.owner, installed_specs())
    assert set(SCHEMAS) | {"auth", "trusted"} <= set(applied)
    return pg_logins


@pytest.fixture
async def owner(logins: PgLogins) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(logins.owner)
    yield conn
    await conn.close()


async def as_role(logins: PgLogins, service: str) -> asyncpg.Connection:
    return await asyncpg.connect(logins.service(service))


async def refused(conn: asyncpg.Connection, sql: str, *args: object, match: str = "permission denied") -> str:
    """Run ``sql``; it must fail with insufficient privilege, whose message is returned."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as caught:
        await conn.execute(sql, *args)
    message = str(caught.value)
    assert match in message, message
    return message


async def seed_gateway(owner: asyncpg.Connection) -> None:
    """An account with a key (and a re-wrap), a job, a pack with a chunk and a point: as the gateway writes them."""
    await owner.execute(
        "INSERT INTO gateway.accounts (account_id, chunk_id_key, chunker_seed) VALUES ('acct', $1, 7)", b"k" * 32
    )
    await owner.execute(
        "INSERT INTO gateway.account_keys (account_id, master_key_id, wrapped_key, created_at)"
        " VALUES ('acct', 'm1', $1, now())",
        b"w" * 60,
    )
    await owner.execute(
        "INSERT INTO gateway.account_key_wraps (account_id, master_key_id, wrapped_key) VALUES ('acct', 'm2', $1)",
        b"x" * 60,
    )
    await owner.execute(
        "INSERT INTO gateway.jobs (job_id, instance_id, account_id, kind, command, state, created_at)"
        " VALUES ('j1', 'i1', 'acct', 'backup', '', 'finished', now())"
    )
    await owner.execute(
        "INSERT INTO gateway.packs (pack_id, account_id, object_key, size, created_at, retain_until)"
        " VALUES ('p1', 'acct', 'packs/acct/p1', 10, now(), now() + interval '31 days')"
    )
    await owner.execute(
        'INSERT INTO gateway.chunks (account_id, chunk_id, pack_id, "offset", length, raw_length, compression)'
        " VALUES ('acct', $1, 'p1', 0, 10, 10, 0)",
        b"c" * 32,
    )
    await owner.execute(
        "INSERT INTO gateway.points (point_id, account_id, instance_id, job_id, version_id, mount_point, filesystem,"
        " manifest_key, file_count, total_bytes, created_at, retain_until)"
        " VALUES ('pt1', 'acct', 'i1', 'j1', 'v1', '/', '', 'manifests/pt1', 1, 10, now(), now() + interval '31 days')"
    )


async def seed_catalog(owner: asyncpg.Connection, *versions: tuple[str, str, dt.timedelta]) -> None:
    """Versions (id, instance, age by the trusted time), one point each, with an indexed entry."""
    for version_id, instance_id, age in versions:
        await owner.execute(
            "INSERT INTO catalog.instances (instance_id) VALUES ($1) ON CONFLICT DO NOTHING", instance_id
        )
        await owner.execute(
            "INSERT INTO catalog.versions (version_id, instance_id, account_id, created_at)"
            " VALUES ($1, $2, 'acct', trusted.now() - $3::interval)",
            version_id,
            instance_id,
            age,
        )
        await owner.execute(
            "INSERT INTO catalog.points (point_id, version_id, instance_id, account_id, mount_point, device, fs_type,"
            " capacity_bytes, manifest_key, file_count, total_bytes, created_at)"
            " VALUES ($1, $2, $3, 'acct', '/', 'vda1', 'ext4', 1, 'm', 1, 1, now())",
            f"p-{version_id}",
            version_id,
            instance_id,
        )
        await owner.execute(
            "INSERT INTO catalog.entries (point_id, parent, name, type, mode, uid, gid, size, mtime_ns, link_target)"
            " VALUES ($1, '', 'f', 1, 420, 0, 0, 1, 0, '')",
            f"p-{version_id}",
        )


async def test_gateway_role_cannot_erase_or_rewrite_keys_packs_chunks_points(
    logins: PgLogins, owner: asyncpg.Connection
) -> None:
    await seed_gateway(owner)
    gateway = await as_role(logins, "gateway")
    try:
        for table in ("account_keys", "account_key_wraps", "packs", "pack_retentions", "chunks", "points", "accounts"):
            assert "permission denied for table " + table in await refused(gateway, f"DELETE FROM gateway.{table}")
            await refused(gateway, f"TRUNCATE gateway.{table}")
        await refused(gateway, "UPDATE gateway.account_keys SET wrapped_key = $1", b"z" * 60)
        await refused(gateway, "UPDATE gateway.account_keys SET master_key_id = 'evil'")
        await refused(gateway, "UPDATE gateway.account_key_wraps SET wrapped_key = $1", b"z" * 60)
        await refused(gateway, "UPDATE gateway.packs SET retain_until = now()")
        await refused(gateway, "UPDATE gateway.chunks SET pack_id = 'p2'")
        await refused(gateway, "UPDATE gateway.points SET manifest_key = 'elsewhere'")
        # Column rules: an instance's filesystem may be approved, never rewritten.
        await refused(gateway, "UPDATE gateway.instance_filesystems SET mount_point = '/root'")
        # What the gateway does need still works: it reads its rows and appends new ones.
        assert await gateway.fetchval("SELECT count(*) FROM gateway.account_keys") == 1
        await gateway.execute(
            "INSERT INTO gateway.pack_retentions (pack_id, retain_until) VALUES ('p1', now() + interval '40 days')"
        )
    finally:
        await gateway.close()
    assert await owner.fetchval("SELECT count(*) FROM gateway.chunks") == 1


async def test_catalog_role_cannot_erase_or_rewrite_versions_and_points(
    logins: PgLogins, owner: asyncpg.Connection
) -> None:
    await seed_catalog(owner, ("v1", "i1", DAY))
    catalog = await as_role(logins, "catalog")
    try:
        for table in ("versions", "points", "version_expirations", "point_index_outcomes", "keep_latest_settings"):
            assert "permission denied for table " + table in await refused(catalog, f"DELETE FROM catalog.{table}")
            await refused(catalog, f"TRUNCATE catalog.{table}")
        await refused(catalog, "UPDATE catalog.versions SET created_at = now() - interval '90 days'")
        await refused(catalog, "UPDATE catalog.points SET version_id = 'v2'")
        await refused(catalog, "UPDATE catalog.keep_latest_settings SET keep_latest = false")
        # Expiring by hand (hiding a version from every listing) is not the catalog's to do.
        await refused(catalog, "INSERT INTO catalog.version_expirations (version_id, expired_at) VALUES ('v1', now())")
        # Locking an immutable row would need UPDATE too.
        await refused(catalog, "SELECT * FROM catalog.points FOR UPDATE")
    finally:
        await catalog.close()
    assert await owner.fetchval("SELECT count(*) FROM catalog.versions") == 1


async def test_no_role_can_set_the_trusted_clock(logins: PgLogins) -> None:
    for service in SERVICE_ROLES:
        conn = await as_role(logins, service)
        try:
            await refused(conn, "UPDATE trusted.clock_offset SET offset_seconds = 86400 * 365")
            await refused(conn, "DELETE FROM trusted.clock_offset")
            await refused(conn, "INSERT INTO trusted.clock_offset (singleton, offset_seconds) VALUES (true, 1)")
            await refused(
                conn, "CREATE OR REPLACE FUNCTION trusted.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT 1'"
            )
            # It reads the trusted time like everyone.
            assert await conn.fetchval("SELECT trusted.now() - now()") == dt.timedelta(0)
        finally:
            await conn.close()


async def test_no_role_touches_another_services_schema_or_changes_its_own(logins: PgLogins) -> None:
    tables = {
        "scheduler": "instances",
        "catalog": "versions",
        "billing": "versions",
        "gateway": "account_keys",
        "restore": "restore_jobs",
    }
    for service in SERVICE_ROLES:
        conn = await as_role(logins, service)
        try:
            for other, table in tables.items():
                if other == service:
                    continue
                assert f"permission denied for schema {other}" in await refused(conn, f"SELECT * FROM {other}.{table}")
            own = tables[service]
            await refused(conn, f"CREATE TABLE {service}.mine (id int)")
            await refused(conn, f"DROP TABLE {service}.{own}", match="must be owner")
            await refused(conn, f"ALTER TABLE {service}.{own} ADD COLUMN x int", match="must be owner")
            await refused(conn, "CREATE SCHEMA mine")
            if service != "catalog":
                await refused(conn, "SELECT * FROM catalog.expire_due_versions(10)")
            if service != "scheduler":  # only the scheduler's role writes tokens
                await refused(
                    conn,
                    "INSERT INTO auth.api_tokens (token_id, secret_sha256, name, grants, created_by, created_at,"
                    " expires_at) VALUES ($1, $2, 'x', '{}', 'x', now(), now() + interval '1 day')",
                    "a" * 24,
                    "b" * 64,
                )
        finally:
            await conn.close()
    scheduler = await as_role(logins, "scheduler")
    try:
        await refused(scheduler, "DELETE FROM auth.api_tokens")
        await refused(scheduler, "UPDATE auth.api_tokens SET grants = '{}'")  # only revoked_at may change
        await refused(scheduler, "DELETE FROM scheduler.audit_events")
    finally:
        await scheduler.close()


async def test_expiry_runs_only_through_the_function_on_the_trusted_time(
    logins: PgLogins, owner: asyncpg.Connection
) -> None:
    await seed_catalog(
        owner, ("old", "i1", 31 * DAY), ("new", "i1", 29 * DAY), ("only", "i2", 45 * DAY), ("gone", "i3", 40 * DAY)
    )
    await owner.execute(
        "INSERT INTO catalog.versions (version_id, instance_id, account_id, created_at)"
        " VALUES ('gone2', 'i3', 'acct', trusted.now() - interval '35 days')"
    )
    # keep-at-least-one switched off for i3: even its newest version expires.
    await owner.execute("INSERT INTO catalog.keep_latest_settings (instance_id, keep_latest) VALUES ('i3', false)")
    catalog = await as_role(logins, "catalog")
    try:
        with pytest.raises(asyncpg.InvalidParameterValueError, match="between 1 and 1000"):
            await catalog.fetch("SELECT * FROM catalog.expire_due_versions(0)")
        rows = await catalog.fetch("SELECT * FROM catalog.expire_due_versions(100)")
        expired = {r["version_id"]: list(r["point_ids"]) for r in rows}
        # "only" is its instance's newest version under keep-at-least-one (the default): kept.
        assert expired == {"gone": ["p-gone"], "gone2": [], "old": ["p-old"]}
        assert await catalog.fetchval("SELECT count(*) FROM catalog.entries WHERE point_id = 'p-old'") == 0
        assert await catalog.fetchval("SELECT count(*) FROM catalog.entries WHERE point_id = 'p-new'") == 1
        assert await catalog.fetch("SELECT * FROM catalog.expire_due_versions(100)") == []  # nothing twice
        # The trusted clock, set by the owner (standalone's --clock-offset-days), moves expiry; the
        # catalog's own clock has no say.
        await set_clock_offset(owner, 2 * DAY)
        assert [r["version_id"] for r in await catalog.fetch("SELECT * FROM catalog.expire_due_versions(100)")] == []
        await owner.execute(
            "INSERT INTO catalog.versions (version_id, instance_id, account_id, created_at)"
            " VALUES ('newest', 'i1', 'acct', now())"
        )
        rows = await catalog.fetch("SELECT * FROM catalog.expire_due_versions(100)")
        assert [r["version_id"] for r in rows] == ["new"]  # 29 days + 2 of offset
        assert rows[0]["expired_at"] - await owner.fetchval("SELECT now()") > DAY
    finally:
        await catalog.close()


async def test_the_billing_ledger_clock_follows_the_trusted_offset(logins: PgLogins, owner: asyncpg.Connection) -> None:
    """Billing closes its days by the trusted time (ADR 0036 update): its role reads the offset the
    owner set, and its clock moves with it; the service clock underneath is unchanged."""
    base = FakeClock(utc(2026, 12, 6, 2, 0))
    pool = await asyncpg.create_pool(logins.service("billing"), min_size=1, max_size=1)
    try:
        assert (await trusted_clock(pool, base)).now() == base.now()
        await set_clock_offset(owner, 31 * DAY)
        assert (await trusted_clock(pool, base)).now() == base.now() + 31 * DAY
    finally:
        await pool.close()


async def test_a_service_refuses_to_serve_as_the_owner_or_a_superuser(
    logins: PgLogins, owner: asyncpg.Connection, pg_server_dsn: str
) -> None:
    [catalog_spec] = [s for s in installed_specs() if s.schema == "catalog"]
    with pytest.raises(LoginRefused, match="owns schema catalog"):
        await check_service_login(owner, catalog_spec)
    database = await owner.fetchval("SELECT current_database()")
    superuser = await asyncpg.connect(pg_server_dsn.rpartition("/")[0] + "/" + database)
    try:
        with pytest.raises(LoginRefused, match="superuser"):
            await check_service_login(superuser, catalog_spec)
    finally:
        await superuser.close()
    gateway = await as_role(logins, "gateway")
    try:
        with pytest.raises(LoginRefused, match="none of strongroom_catalog"):
            await check_service_login(gateway, catalog_spec)
    finally:
        await gateway.close()
    catalog = await as_role(logins, "catalog")
    try:
        assert await check_service_login(catalog, catalog_spec) == "strongroom_catalog"
    finally:
        await catalog.close()
    with pytest.raises(LoginRefused, match="must not be a superuser"):
        await migrate_schemas(pg_server_dsn.rpartition("/")[0] + "/" + database, installed_specs())


async def test_a_table_without_declared_privileges_stops_the_migration(
    logins: PgLogins, owner: asyncpg.Connection
) -> None:
    await owner.execute("CREATE TABLE catalog.undeclared (id int)")
    with pytest.raises(PrivilegeError, match=r"strongroom_catalog declares no privileges on catalog\.undeclared"):
        await migrate_schemas(logins.owner, installed_specs())
