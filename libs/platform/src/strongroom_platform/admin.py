"""``strongroom-admin``: operations that need database access instead of a credential (ADR 0024).

``strongroom-admin token create --account A [--role admin] [--name N] [--ttl-days D]`` makes the
first API token of a deployment (every later one is made through ``TokenService``), reading
``STRONGROOM_PG_DSN`` (and ``STRONGROOM_PG_TLS*``) from the environment. The token is printed once.

``strongroom-admin s3-policy gateway|reclaimer --bucket B [--principal ACCESS_KEY]`` prints the
least-privilege S3 policy of that identity (ADR 0035): an identity policy, or with ``--principal``
a bucket policy statement set naming that access key.

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
from typing import Protocol

from strongroom_platform.auth import Role
from strongroom_platform.auth.token_api import bootstrap_token
from strongroom_platform.auth.tokens_pg import AUTH_MIGRATIONS, AUTH_SCHEMA, PgTokenStore
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.db import create_pool, migrate
from strongroom_platform.s3_policy import S3Identity, bucket_policy, identity_policy
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
    """Store a new token with ``role`` on ``account`` (or on each of several) directly in
    ``auth.api_tokens``; return it (shown once)."""
    accounts = [account] if isinstance(account, str) else list(account)
    pool = await create_pool(dsn, AUTH_SCHEMA, max_size=1, tls=pg_tls)
    try:
        await migrate(pool, AUTH_SCHEMA, AUTH_MIGRATIONS)
        return await bootstrap_token(
            accounts, role, name=name, lifetime=lifetime, store=PgTokenStore(pool), clock=clock or SystemClock()
        )
    finally:
        await pool.close()


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
    if not 1 <= args.ttl_days <= 366:
        print("strongroom-admin: --ttl-days must be between 1 and 366", file=sys.stderr)
        return 2
    try:
        dsn = env_str(environ, "STRONGROOM_PG_DSN")
        pg_tls = backend_ssl_context(BackendTls.from_env(environ, "STRONGROOM_PG_TLS"))
    except SettingsError as exc:
        print(f"strongroom-admin: {exc}", file=sys.stderr)
        return 2
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
