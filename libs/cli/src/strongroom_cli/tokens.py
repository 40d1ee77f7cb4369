"""``strongroom login | logout | whoami`` and ``strongroom tokens create | list | revoke``."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Awaitable

from strongroom.auth.v1 import auth_pb2

from strongroom_cli import credentials, output
from strongroom_cli.context import Context, UsageError
from strongroom_cli.pages import every_page

ROLES = {"viewer": auth_pb2.ROLE_VIEWER, "operator": auth_pb2.ROLE_OPERATOR, "admin": auth_pb2.ROLE_ADMIN}


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = groups.add_parser("login", parents=[common], help="check an API token and store it for later commands")
    p.add_argument("--token-file", metavar="FILE", help="read the token from FILE (default: prompt, or stdin)")
    p.add_argument("--ca-file", metavar="FILE", help="CA bundle that verifies the services (default: the system's)")
    p.set_defaults(command=login)
    p = groups.add_parser("logout", parents=[common], help="forget the stored token")
    p.set_defaults(command=logout)
    p = groups.add_parser("whoami", parents=[common], help="who the credential is, and its roles")
    p.set_defaults(command=whoami)

    group = groups.add_parser("tokens", help="API tokens (admins)")
    commands = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = commands.add_parser("create", parents=[common], help="create a token; it is printed once")
    p.add_argument("name")
    p.add_argument(
        "--grant",
        action="append",
        metavar="ACCOUNT:ROLE",
        help="account and role (viewer, operator, admin); repeatable (default: --account as viewer)",
    )
    p.add_argument("--ttl-days", type=int, default=90, help="lifetime in days (default 90, at most 366)")
    p.set_defaults(command=create)
    p = commands.add_parser("list", parents=[common], help="tokens holding a grant on the account")
    p.set_defaults(command=list_tokens)
    p = commands.add_parser("revoke", parents=[common], help="revoke a token at once")
    p.add_argument("token_id", metavar="ID")
    p.set_defaults(command=revoke)


def _read_token(args: argparse.Namespace) -> str:
    if args.token_file:
        with open(args.token_file) as source:
            return source.read().strip()
    if sys.stdin.isatty():
        return getpass.getpass("API token: ").strip()
    return sys.stdin.readline().strip()


def _grant_rows(grants: list[auth_pb2.Grant]) -> str:
    return ", ".join(f"{g.account_id}:{output.enum_name(auth_pb2.Role.Name(g.role), 'ROLE_')}" for g in grants)


async def login(context: Context) -> int:
    token = _read_token(context.args)
    if not token:
        raise UsageError("no token given")
    if context.args.ca_file:
        context.ca_file = os.path.abspath(context.args.ca_file)
    me = await context.tokens().WhoAmI(
        auth_pb2.WhoAmIRequest(), timeout=context.timeout, metadata=(("authorization", f"Bearer {token}"),)
    )
    credential = credentials.Credential(token=token, account=context.args.account or "", ca_file=context.ca_file)
    path = credentials.save(os.environ, credential)
    if context.json:
        output.as_json(me)
    else:
        print(f"logged in as {me.subject} ({_grant_rows(list(me.grants))}); token stored in {path}")
    return 0


async def logout(context: Context) -> int:
    path = credentials.forget(os.environ)
    print(f"removed {path}" if path else "no stored token")
    return 0


async def whoami(context: Context) -> int:
    me = await context.tokens().WhoAmI(auth_pb2.WhoAmIRequest(), **context.call)
    if context.json:
        output.as_json(me)
    else:
        output.fields([("Subject", me.subject), ("Roles", _grant_rows(list(me.grants)) or "(none)")])
    return 0


def _parse_grant(text: str) -> auth_pb2.Grant:
    account, sep, role = text.rpartition(":")
    if not sep or not account or role not in ROLES:
        raise UsageError(f"--grant takes ACCOUNT:ROLE with ROLE viewer, operator or admin, got {text!r}")
    return auth_pb2.Grant(account_id=account, role=ROLES[role])


async def create(context: Context) -> int:
    args = context.args
    grants = [_parse_grant(g) for g in args.grant] if args.grant else []
    if not grants:
        if not context.account_id:
            raise UsageError("name the accounts with --grant ACCOUNT:ROLE")
        grants = [auth_pb2.Grant(account_id=context.account_id, role=auth_pb2.ROLE_VIEWER)]
    if not 1 <= args.ttl_days <= 366:
        raise UsageError("--ttl-days must be between 1 and 366")
    request = auth_pb2.CreateTokenRequest(name=args.name, grants=grants, ttl_seconds=args.ttl_days * 86400)
    created = await context.tokens().CreateToken(request, **context.call)
    if context.json:
        output.as_json(created)
        return 0
    print(created.secret)
    print(
        f"token {created.token.token_id} ({_grant_rows(list(created.token.grants))}), expires "
        f"{output.timestamp(created.token.expires_at)}; it is shown only now",
        file=sys.stderr,
    )
    return 0


async def list_tokens(context: Context) -> int:
    def fetch(token: str, size: int) -> Awaitable[auth_pb2.ListTokensResponse]:
        request = auth_pb2.ListTokensRequest(account_id=context.account_id, page_size=size, page_token=token)
        return context.tokens().ListTokens(request, **context.call)

    tokens = await every_page(fetch, lambda page: page.tokens)
    if context.json:
        output.as_json(tokens)
        return 0
    rows = [
        [
            t.token_id,
            t.name,
            _grant_rows(list(t.grants)),
            output.timestamp(t.expires_at),
            output.timestamp(t.revoked_at) if t.HasField("revoked_at") else "",
        ]
        for t in tokens
    ]
    output.table(["ID", "NAME", "GRANTS", "EXPIRES", "REVOKED"], rows)
    return 0


async def revoke(context: Context) -> int:
    revoked = await context.tokens().RevokeToken(
        auth_pb2.RevokeTokenRequest(token_id=context.args.token_id), **context.call
    )
    if context.json:
        output.as_json(revoked)
    else:
        print(f"revoked token {revoked.token_id} ({revoked.name})")
    return 0
