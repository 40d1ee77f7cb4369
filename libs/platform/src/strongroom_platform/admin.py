"""``strongroom-admin``: operations that need the migration owner's database access (ADR 0024, 0031).

Both read the migration owner's DSN from ``STRONGROOM_PG_MIGRATE_DSN`` (and ``STRONGROOM_PG_TLS*``).

``strongroom-admin migrate [--passwords-dir D]`` creates or updates every installed schema (the
platform's and those of the services installed beside it, ``strongroom_platform.schemas``), the
services' login roles and their grants. With ``--passwords-dir``, a file named after a role
(``strongroom_catalog``) sets that role's password. A deployment runs it before the services
start (a Kubernetes Job), so that the services hold only their own roles' credentials.

``strongroom-admin token create --account A [--role admin] [--name N] [--ttl-days D]`` makes the
first API token of a deployment (every later one is made through ``TokenService``). The token is
printed once.

``strongroom-admin s3-policy gateway|reclaimer --bucket B [--principal ACCESS_KEY]`` prints the
least-privilege S3 policy of that identity (ADR 0035): an identity policy, or with ``--principal``
a bucket policy statement set naming that access key (no database access).

Services add their own commands through the ``strongroom.admin`` entry-point group (an object with
``name``, ``help``, ``configure(parser)`` and ``run(args, environ) -> exit code``), so that this
library never imports a service: the agent gateway's ``rebuild --from-bucket`` (ADR 0032).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import os
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import asyncpg

from strongroom_platform.auth import Role
from strongroom_platform.auth.token_api import bootstrap_token
from strongroom_platform.auth.tokens_pg import AUTH_SCHEMA, PgTokenStore
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.db import SchemaNewerThanCode, close_pool, create_pool
from strongroom_platform.pg_roles import SERVICE_ROLES, LoginRefused, PrivilegeError, migrate_schemas
from strongroom_platform.s3_policy import S3Identity, bucket_policy, identity_policy
from strongroom_platform.schemas import PLATFORM_SPECS, installed_specs
from strongroom_platform.settings import BackendTls, SettingsError, env_str
from strongroom_platform.tls import backend_ssl_context


async def create_admin_token(
    dsn: str,
    account: str | Sequence[str],
    *,
    role: Role = Role.ADMIN,
    name: str = "bootstrap",
    lifetime: dt.timedelta = dt.timedelta(days=90),
    pg_tls: ssl.SSLContext | None = None,
    clock: Clock | None = None,
) -> str:
    """As the migration owner (``dsn``): store a new token with ``role`` on ``account`` (or on each
    of several) directly in ``auth.api_tokens``; return it (shown once). Migrates the platform's
    schemas first."""
    accounts = [account] if isinstance(account, str) else list(account)
    await migrate_schemas(dsn, PLATFORM_SPECS, tls=pg_tls)
    pool = await create_pool(dsn, AUTH_SCHEMA, max_size=1, tls=pg_tls)
    try:
        return await bootstrap_token(
            accounts, role, name=name, lifetime=lifetime, store=PgTokenStore(pool), clock=clock or SystemClock()
        )
    finally:
        await close_pool(pool)


def read_passwords(directory: Path) -> dict[str, str]:
    """Role -> password from the files of ``directory`` named after a service role or a role of an
    installed schema, e.g. the REST edge's ``strongroom_api`` (others are ignored)."""
    passwords: dict[str, str] = {}
    for role in dict.fromkeys([*SERVICE_ROLES.values(), *(r for spec in installed_specs() for r in spec.roles)]):
        path = directory / role
        if path.is_file():
            password = path.read_text().strip()
            if not password:
                raise SettingsError(f"{path} is empty")
            passwords[role] = password
    return passwords


ENTRY_POINT_GROUP = "strongroom.admin"


class AdminCommand(Protocol):
    """A command a service distribution adds to ``strongroom-admin`` (entry-point group ``strongroom.admin``)."""

    name: str
    help: str

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments."""
        ...

    def run(self, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
        """Do it; the process's exit code."""
        ...


def installed_commands() -> list[AdminCommand]:
    """The commands of the installed service distributions, by name."""
    found = [entry.load() for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    return sorted(found, key=lambda command: command.name)


def _parser(plugins: Sequence[AdminCommand] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strongroom-admin", description=__doc__.split("\n\n")[0])
    groups = parser.add_subparsers(dest="group", required=True)
    for plugin in plugins:
        plugin.configure(groups.add_parser(plugin.name, help=plugin.help))
    migrate = groups.add_parser("migrate", help="create or update every installed schema, the roles and grants")
    migrate.add_argument("--passwords-dir", type=Path, default=None, help="files named after roles: their passwords")
    token = groups.add_parser("token", help="API tokens").add_subparsers(dest="action", required=True)
    create = token.add_parser("create", help="create a token with database access; printed once")
    create.add_argument("--account", required=True)
    create.add_argument("--role", default="admin", choices=[r.value for r in Role])
    create.add_argument("--name", default="bootstrap")
    create.add_argument("--ttl-days", type=int, default=90)
    policy = groups.add_parser("s3-policy", help="print the least-privilege S3 policy of an identity")
    policy.add_argument("identity", choices=[i.value for i in S3Identity])
    policy.add_argument("--bucket", required=True)
    policy.add_argument("--principal", help="render a bucket policy naming this access key (or ARN)")
    return parser


def _print_s3_policy(args: argparse.Namespace) -> int:
    identity = S3Identity(args.identity)
    try:
        if args.principal:
            document = bucket_policy(args.bucket, {identity: args.principal})
        else:
            document = identity_policy(identity, args.bucket)
    except ValueError as exc:
        print(f"strongroom-admin: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(document, indent=2))
    return 0


def run(argv: Sequence[str], environ: Mapping[str, str], plugins: Sequence[AdminCommand] | None = None) -> int:
    plugins = installed_commands() if plugins is None else plugins
    args = _parser(plugins).parse_args(list(argv))
    for plugin in plugins:
        if args.group == plugin.name:
            return plugin.run(args, environ)
    if args.group == "s3-policy":
        return _print_s3_policy(args)
    if args.group == "token" and not 1 <= args.ttl_days <= 366:
        print("strongroom-admin: --ttl-days must be between 1 and 366", file=sys.stderr)
        return 2
    try:
        dsn = env_str(environ, "STRONGROOM_PG_MIGRATE_DSN")
        pg_tls = backend_ssl_context(BackendTls.from_env(environ, "STRONGROOM_PG_TLS"))
        passwords = read_passwords(args.passwords_dir) if args.group == "migrate" and args.passwords_dir else {}
    except (SettingsError, OSError) as exc:
        print(f"strongroom-admin: {exc}", file=sys.stderr)
        return 2
    if args.group == "migrate":
        try:
            applied = asyncio.run(migrate_schemas(dsn, installed_specs(), tls=pg_tls, passwords=passwords))
        except (LoginRefused, PrivilegeError, SchemaNewerThanCode, asyncpg.PostgresError, OSError) as exc:
            print(f"strongroom-admin: migration failed: {exc}", file=sys.stderr)
            return 1
        for schema, count in applied.items():
            print(f"{schema}: {count} migration(s) applied")
        return 0
    token = asyncio.run(
        create_admin_token(
            dsn,
            args.account,
            role=Role(args.role),
            name=args.name,
            lifetime=dt.timedelta(days=args.ttl_days),
            pg_tls=pg_tls,
        )
    )
    print(token)
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:], os.environ))
