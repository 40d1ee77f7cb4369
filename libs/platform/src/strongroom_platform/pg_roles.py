"""PostgreSQL roles: a migration owner runs the migrations, each service logs in as its own role (ADR 0031).

The **migration owner** (a non-superuser login with ``CREATEROLE`` that owns the database) creates
the schemas and tables, the service roles, and their grants. Each **service role**
(``strongroom_<service>``, :data:`SERVICE_ROLES`) owns nothing: it may only do what its
:class:`SchemaSpec` declares, per table, and nothing in another service's schema.

A schema's grants are applied after every migration run: all privileges of the spec's roles and
of ``PUBLIC`` on the schema's tables, sequences and functions are revoked, then each declared one
is granted again, so a table added by a later migration gets exactly the line added for it. A table
of the schema that a role of the spec does not declare (or a declared table that does not exist)
stops the migration with :class:`PrivilegeError`: privileges are never left to chance.

Roles are cluster-wide, databases and grants are not: creating a role tolerates a concurrent
creation of the same role from another database, and the steps that touch the database's own
row (``GRANT CONNECT``) run under an advisory lock of the database.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from strongroom_platform.db import Migration, apply_migrations

__all__ = [
    "SERVICE_ROLES",
    "LoginRefused",
    "PrivilegeError",
    "SchemaSpec",
    "apply_grants",
    "check_service_login",
    "OWNER_ROLE",
    "ensure_login_role",
    "login_dsn",
    "migrate_schema",
    "migrate_schemas",
    "set_role_password",
]

# The migration owner's role in the deployments Strongroom provisions itself (standalone, tests,
# benchmarks): no superuser, CREATEROLE, owner of the database. Production may name it otherwise.
OWNER_ROLE = "strongroom_owner"

# The login role of each service; the schema of a service is its name (``gateway`` for agent-gateway).
SERVICE_ROLES: Mapping[str, str] = {
    "scheduler": "strongroom_scheduler",
    "catalog": "strongroom_catalog",
    "billing": "strongroom_billing",
    "gateway": "strongroom_gateway",
    "restore": "strongroom_restore",
}

# "SELECT, INSERT, UPDATE (revoked_at)": privilege keywords, optionally with a column list.
_COLUMNS = r"\([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*\)"
_PRIVILEGE = rf"(?:SELECT|INSERT|UPDATE|DELETE|TRUNCATE|REFERENCES|TRIGGER)(?: {_COLUMNS})?"
_PRIVILEGES = re.compile(f"{_PRIVILEGE}(?:, {_PRIVILEGE})*")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_FUNCTION = re.compile(r"[a-z_][a-z0-9_]{0,62}\((?:[a-z ]+(?:, [a-z ]+)*)?\)")
# Advisory lock (per database) around the steps that write the database's own catalog row.
_DATABASE_LOCK = int.from_bytes(hashlib.sha256(b"strongroom.roles").digest()[:8], "big", signed=True)
_MIGRATIONS_TABLE = "schema_migrations"


class PrivilegeError(ValueError):
    """A schema's tables and its declared privileges disagree (a table without a line, or a line without a table)."""


class LoginRefused(RuntimeError):
    """A service's database login is not a plain service role, or its schema is not migrated far enough."""


@dataclass(frozen=True, slots=True)
class SchemaSpec:
    """A schema, its migrations, and what each role may do in it.

    ``grants``: role -> table -> privileges (``"SELECT, INSERT"``, ``"SELECT, UPDATE (revoked_at)"``;
    ``""`` declares that the role gets nothing on that table). Every role named must declare every
    table of the schema. ``executes``: role -> function signatures (``"expire_due_versions(integer)"``)
    it may call; every other function of the schema is callable by its owner only. ``schema_migrations``
    is readable by every role of the spec (a service checks its schema's version at start).
    """

    schema: str
    migrations: Sequence[Migration]
    grants: Mapping[str, Mapping[str, str]]
    executes: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _IDENTIFIER.fullmatch(self.schema):
            raise ValueError(f"invalid schema name {self.schema!r}")
        for role, tables in self.grants.items():
            if not _IDENTIFIER.fullmatch(role):
                raise ValueError(f"invalid role name {role!r}")
            for table, privileges in tables.items():
                if not _IDENTIFIER.fullmatch(table):
                    raise ValueError(f"invalid table name {table!r} in the grants of {role}")
                if privileges and not _PRIVILEGES.fullmatch(privileges):
                    raise ValueError(f"invalid privileges {privileges!r} of {role} on {self.schema}.{table}")
        for role, functions in self.executes.items():
            if role not in self.grants:
                raise ValueError(f"role {role!r} executes functions of {self.schema} but has no grants there")
            for function in functions:
                if not _FUNCTION.fullmatch(function):
                    raise ValueError(f"invalid function signature {function!r}")

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.grants)

    @property
    def latest_version(self) -> int:
        return max((m.version for m in self.migrations), default=0)


def _quote(identifier: str) -> str:
    if not _IDENTIFIER.fullmatch(identifier):
        raise ValueError(f"invalid identifier {identifier!r}")
    return f'"{identifier}"'


async def ensure_login_role(conn: asyncpg.Connection, role: str) -> bool:
    """Create ``role`` as a plain login role (no superuser, no CREATEDB/CREATEROLE, no BYPASSRLS) if missing.

    Returns whether this call created it. A concurrent creation of the same role (another database
    of the cluster migrating at the same moment) counts as present. An existing role is left as it is.
    """
    if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
        return False
    try:
        async with conn.transaction():  # a savepoint when called inside a transaction
            await conn.execute(
                f"CREATE ROLE {_quote(role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
            )
    except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
        return False
    return True


async def set_role_password(conn: asyncpg.Connection, role: str, password: str) -> None:
    """Set ``role``'s password (the migration owner may: it created the role, or was given ADMIN on it)."""
    if not password or "\x00" in password:
        raise ValueError(f"the password of {role} must be non-empty and hold no NUL")
    statement = await conn.fetchval("SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", role, password)
    await conn.execute(statement)


async def _relations(conn: asyncpg.Connection, schema: str, kinds: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind::text = ANY($2::text[]) ORDER BY c.relname",
        schema,
        list(kinds),
    )
    return [r["relname"] for r in rows]


async def apply_grants(conn: asyncpg.Connection, spec: SchemaSpec) -> None:
    """Revoke everything the spec's roles and PUBLIC hold on the schema, then grant what the spec declares.

    Raises PrivilegeError (nothing granted: the caller's transaction rolls back) when a role of the
    spec does not declare a table of the schema, or declares one that does not exist.
    """
    schema = _quote(spec.schema)
    tables = [t for t in await _relations(conn, spec.schema, "rpvm") if t != _MIGRATIONS_TABLE]
    problems: list[str] = []
    for role, declared in spec.grants.items():
        missing = sorted(set(tables) - set(declared))
        unknown = sorted(set(declared) - set(tables))
        if missing:
            problems.append(f"{role} declares no privileges on {', '.join(f'{spec.schema}.{t}' for t in missing)}")
        if unknown:
            problems.append(f"{role} declares privileges on missing tables {', '.join(unknown)}")
    if problems:
        raise PrivilegeError(
            "; ".join(problems) + " (declare every table in the service's migrations module, ADR 0031)"
        )
    grantees = ", ".join(["PUBLIC", *(_quote(r) for r in spec.roles)])
    await conn.execute(f"REVOKE ALL ON SCHEMA {schema} FROM {grantees}")
    await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {grantees}")
    await conn.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {grantees}")
    await conn.execute(f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {schema} FROM {grantees}")
    sequences = await conn.fetch(
        "SELECT s.relname AS sequence, t.relname AS owner_table FROM pg_class s"
        " JOIN pg_namespace n ON n.oid = s.relnamespace"
        " JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid AND d.deptype IN ('a', 'i')"
        " JOIN pg_class t ON t.oid = d.refobjid"
        " WHERE n.nspname = $1 AND s.relkind = 'S'",
        spec.schema,
    )
    for role, declared in spec.grants.items():
        grantee = _quote(role)
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {grantee}")
        await conn.execute(f"GRANT SELECT ON {schema}.{_MIGRATIONS_TABLE} TO {grantee}")
        for table, privileges in declared.items():
            if privileges:
                await conn.execute(f"GRANT {privileges} ON {schema}.{_quote(table)} TO {grantee}")
        for row in sequences:
            if "INSERT" in declared.get(row["owner_table"], ""):
                await conn.execute(f"GRANT USAGE ON SEQUENCE {schema}.{_quote(row['sequence'])} TO {grantee}")
        for function in spec.executes.get(role, ()):
            await conn.execute(f"GRANT EXECUTE ON FUNCTION {schema}.{function} TO {grantee}")


async def migrate_schema(conn: asyncpg.Connection, spec: SchemaSpec) -> int:
    """As the migration owner: the spec's roles, the schema, its pending migrations, then its grants.

    One transaction under the schema's migration lock; returns how many migrations were applied.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _DATABASE_LOCK)
        database = await conn.fetchval("SELECT current_database()")
        for role in spec.roles:
            await ensure_login_role(conn, role)
            statement = await conn.fetchval(
                "SELECT format('GRANT CONNECT ON DATABASE %I TO %I', $1::text, $2::text)", database, role
            )
            await conn.execute(statement)
        applied = await apply_migrations(conn, spec.schema, spec.migrations)
        await apply_grants(conn, spec)
    return applied


async def migrate_schemas(
    dsn: str,
    specs: Iterable[SchemaSpec],
    *,
    tls: ssl.SSLContext | None = None,
    passwords: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Connect as the migration owner (``dsn``) and migrate each spec in order; set ``passwords`` (role -> password).

    Returns schema -> number of migrations applied. Refuses a superuser login: the owner holds no
    more than it needs either.
    """
    ssl_args: dict[str, Any] = {} if tls is None else {"ssl": tls}
    conn = await asyncpg.connect(dsn, **ssl_args)
    try:
        if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            raise LoginRefused(
                "the migration owner must not be a superuser: create a role with LOGIN CREATEROLE that owns "
                "the database (ADR 0031) and use its DSN"
            )
        applied = {spec.schema: await migrate_schema(conn, spec) for spec in specs}
        for role, password in (passwords or {}).items():
            await set_role_password(conn, role, password)
    finally:
        await conn.close()
    return applied


async def check_service_login(conn: asyncpg.Connection, spec: SchemaSpec) -> str:
    """Refuse to serve unless the login is one of the spec's roles, owns nothing of the schema, and the
    schema is migrated to ``spec.latest_version`` or later. Returns the login role."""
    row = await conn.fetchrow(
        "SELECT current_user AS login, r.rolsuper, r.rolbypassrls,"
        " (SELECT pg_has_role(current_user, n.nspowner, 'USAGE') FROM pg_namespace n WHERE n.nspname = $1) AS owns"
        " FROM pg_roles r WHERE r.rolname = current_user",
        spec.schema,
    )
    assert row is not None
    login = str(row["login"])
    hint = (
        f"each service logs in as its own role ({', '.join(spec.roles)} here) and the migration owner's "
        "DSN goes in STRONGROOM_PG_MIGRATE_DSN or to `strongroom-admin migrate` (ADR 0031)"
    )
    if row["rolsuper"] or row["rolbypassrls"]:
        raise LoginRefused(f"STRONGROOM_PG_DSN logs in as {login}, a superuser: {hint}")
    if row["owns"] is None:
        raise LoginRefused(f"schema {spec.schema} does not exist: run the migrations first; {hint}")
    if row["owns"]:
        raise LoginRefused(f"STRONGROOM_PG_DSN logs in as {login}, which owns schema {spec.schema}: {hint}")
    member = await conn.fetchval(
        "SELECT coalesce(bool_or(pg_has_role(current_user, oid, 'USAGE')), false) FROM pg_roles"
        " WHERE rolname = ANY($1::text[])",
        list(spec.roles),
    )
    if not member:
        raise LoginRefused(f"STRONGROOM_PG_DSN logs in as {login}, which is none of {', '.join(spec.roles)}: {hint}")
    version = await conn.fetchval(f"SELECT max(version) FROM {_quote(spec.schema)}.{_MIGRATIONS_TABLE}")
    if (version or 0) < spec.latest_version:
        raise LoginRefused(
            f"schema {spec.schema} is at migration {version or 0}, this build needs {spec.latest_version}: "
            "run `strongroom-admin migrate` with the migration owner's DSN, or give the service "
            "STRONGROOM_PG_MIGRATE_DSN"
        )
    return login


def login_dsn(dsn: str, role: str, password: str | None = None) -> str:
    """``dsn`` with its user (and password) replaced: the same server and database, as ``role``."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    user = quote(role, safe="")
    if password:
        user += ":" + quote(password, safe="")
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def service_roles(services: Sequence[str] | None = None) -> list[str]:
    """The roles of ``services`` (all five when None)."""
    return [SERVICE_ROLES[s] for s in (services or SERVICE_ROLES)]
