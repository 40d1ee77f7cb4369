"""Argument parsing, dispatch to the subcommand modules, and error reporting.

Exit codes: 0 success, 1 an operation failed (a gRPC error, a failed restore
with ``--wait``, a missing address), 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from strongroom_zones import parse_zone

from strongroom_cli import (
    alerts,
    audit,
    billing,
    browse,
    certs,
    credentials,
    instances,
    inventory,
    jobs,
    output,
    overview,
    restores,
    search,
    tokens,
    verify,
    versions,
)
from strongroom_cli.config import SERVICES, ConfigError, resolve_addresses
from strongroom_cli.context import Context, UsageError

Command = Callable[[Context], Awaitable[int]]
DEFAULT_TIMEOUT = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strongroom",
        description="Operate a Strongroom deployment: instances, backup jobs, versions, restores, overview, alerts.",
    )
    for service in SERVICES:
        parser.add_argument(
            f"--{service}",
            metavar="ADDR",
            help=f"{service} gRPC address host:port (default: $STRONGROOM_{service.upper()}_ADDR or "
            ".strongroom/standalone.json)",
        )
    parser.add_argument(
        "--account",
        default=None,
        help="account to act on, among those of the credential (default: $STRONGROOM_ACCOUNT_ID, the login's "
        "account, or the credential's only account)",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per request (default 30)")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output (errors too)")
    parser.add_argument("--version", action="version", version=f"strongroom {_version()}")
    parser.add_argument(
        "--tz",
        metavar="ZONE",
        default=None,
        help="show times in ZONE, an offset (UTC+8) or IANA name (default: $STRONGROOM_TZ, else this machine's zone)",
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    # `--json` is also accepted after the subcommand; SUPPRESS keeps the top-level value when absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable JSON output")
    for module in (
        instances,
        inventory,
        jobs,
        versions,
        browse,
        search,
        restores,
        verify,
        overview,
        billing,
        alerts,
        certs,
        tokens,
        audit,
    ):
        module.register(groups, common)
    # listed for --help only: run() hands `standalone ...` to the runner before parsing
    groups.add_parser("standalone", help="run the whole platform locally (strongroom standalone --help)")
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("strongroom-cli")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run(argv: list[str]) -> int:
    """Parse ``argv`` and run the command; errors become one ``error: ...`` line on stderr (under
    ``--json``, one ``{"error": {"code", "message"}}`` object on stdout)."""
    standalone_argv = _standalone_argv(argv)
    if standalone_argv is not None:
        return _standalone(standalone_argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    zone_text = args.tz or os.environ.get("STRONGROOM_TZ", "")
    try:
        output.set_display_zone(parse_zone(zone_text) if zone_text else None)
    except ValueError as exc:
        print(f"error: --tz: {exc}", file=sys.stderr)
        return 2
    try:
        # local commands (certs) reach no service: a broken state file must not stop them
        local = getattr(args, "local", False)
        addresses = {} if local else resolve_addresses({s: getattr(args, s) for s in SERVICES}, os.environ, Path.cwd())
        credential = None if local else credentials.resolve(os.environ, Path.cwd())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    context = Context(
        args=args,
        addresses=addresses,
        account_id=args.account
        or os.environ.get("STRONGROOM_ACCOUNT_ID")
        or (credential.account if credential else ""),
        json=args.json,
        timeout=args.timeout,
        token=credential.token if credential else "",
        ca_file=credentials.ca_file(os.environ, Path.cwd(), credential),
        plaintext=os.environ.get("STRONGROOM_INSECURE_PLAINTEXT") == "1",
    )
    command: Command = args.command
    return asyncio.run(_run(command, context))


_FLAGS_WITHOUT_VALUE = frozenset({"--json"})


def _standalone_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``standalone`` when it is the command (global options may precede it)."""
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "standalone":
            return argv[index + 1 :]
        if not token.startswith("-") or token in ("-h", "--help"):
            return None
        index += 1 if token in _FLAGS_WITHOUT_VALUE or "=" in token else 2
    return None


def _standalone(argv: list[str]) -> int:
    # the standalone runner has its own options; imported lazily (it pulls in the embedded servers,
    # which only the extra [standalone] installs)
    try:
        module = importlib.import_module("strongroom_cli.standalone")
    except ImportError as exc:
        print(
            f"error: standalone mode needs the platform ({exc.name} is not installed): "
            "pip install 'strongroom-cli[standalone]'",
            file=sys.stderr,
        )
        return 2
    code: int = module.main(argv)
    return code


def _error(context: Context, code: str, message: str, *, show_code: bool = True) -> None:
    """One ``error: ...`` line on stderr; under ``--json`` an error object on stdout, where a script reads."""
    if context.json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    else:
        print(f"error: {code}: {message}" if show_code else f"error: {message}", file=sys.stderr)


async def _run(command: Command, context: Context) -> int:
    try:
        return await command(context)
    except grpc.aio.AioRpcError as exc:
        _error(context, exc.code().name, exc.details() or "no details")
        return 1
    except ConfigError as exc:
        _error(context, "CONFIG", str(exc), show_code=False)
        return 1
    except UsageError as exc:
        _error(context, "USAGE", str(exc), show_code=False)
        return 2
    finally:
        await context.close()
