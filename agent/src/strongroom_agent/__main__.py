"""``strongroom-agent enroll`` and ``strongroom-agent run``.

Exit codes: 0 success, 1 unexpected failure, 2 bad input or missing state,
3 gateway unreachable, 4 token or credential rejected. Expected failures
print one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from strongroom_agent import __version__
from strongroom_agent.config import AgentState, StateError, load_state, resolve_state_dir, save_state
from strongroom_agent.gateway_client import GatewayError, GrpcGatewayClient, enroll, open_channel
from strongroom_agent.session import (
    CredentialRejected,
    Session,
    enroll_request,
    make_backup_runner,
    make_hello,
    make_restore_runner,
)
from strongroom_agent.transport import GatewayTrust, PinMismatch, channel_credentials

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REJECTED = 0, 1, 2, 3, 4
_UNREACHABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})

log = logging.getLogger("strongroom_agent")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def gateway_address(value: str) -> str:
    """HOST:PORT with a numeric port (argparse type)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strongroom-agent", description="Strongroom on-host backup agent")
    parser.add_argument("--version", action="version", version=f"strongroom-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    enroll_cmd = commands.add_parser("enroll", help="exchange an enrollment token for an agent credential")
    enroll_cmd.add_argument("--gateway", required=True, type=gateway_address, help="agent gateway HOST:PORT")
    enroll_cmd.add_argument("--token", required=True, help="one-time enrollment token")
    enroll_cmd.add_argument("--state-dir", help="where the credential is stored (default /var/lib/strongroom-agent)")
    enroll_cmd.add_argument("--ca-file", help="the gateway's CA bundle (PEM); default: the system's trusted CAs")
    enroll_cmd.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="SHA256",
        help="SPKI pin of a CA of --ca-file the gateway's certificate must chain to (from the activation)",
    )
    enroll_cmd.add_argument(
        "--insecure-plaintext", action="store_true", help="no TLS to the gateway (development only)"
    )
    run_cmd = commands.add_parser("run", help="connect to the gateway and run backup and restore jobs")
    run_cmd.add_argument("--state-dir", help="state directory written by 'enroll'")
    run_cmd.add_argument(
        "--roots", nargs="+", metavar="PATH", default=[], help="back up these directories instead of all filesystems"
    )
    run_cmd.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _trust(args: argparse.Namespace) -> tuple[GatewayTrust, str | None]:
    """The gateway trust of the enroll command's flags, and the CA bundle to keep in the state."""
    if args.insecure_plaintext:
        if args.ca_file or args.pin:
            raise CliError("--insecure-plaintext contradicts --ca-file and --pin", EXIT_USAGE)
        return GatewayTrust(plaintext=True), None
    if args.pin and not args.ca_file:
        raise CliError("--pin needs --ca-file (the bundle the pins select from)", EXIT_USAGE)
    ca_pem: str | None = None
    if args.ca_file:
        try:
            with open(args.ca_file, encoding="ascii") as source:
                ca_pem = source.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read the CA bundle {args.ca_file}: {exc}", EXIT_USAGE) from None
    trust = GatewayTrust(ca_pem=ca_pem.encode() if ca_pem else None, pins=tuple(args.pin))
    try:
        channel_credentials(trust)
    except PinMismatch as exc:
        raise CliError(str(exc), EXIT_REJECTED) from None
    return trust, ca_pem


async def _enroll(address: str, token: str, state_dir: str, trust: GatewayTrust, ca_pem: str | None) -> str:
    if not token.strip():
        raise CliError("the enrollment token is empty", EXIT_USAGE)
    try:
        response = await enroll(address, enroll_request(token), trust)
    except GatewayError as exc:
        if exc.code in _UNREACHABLE:
            raise CliError(
                f"cannot reach the gateway at {address}: {exc.details or exc.code}", EXIT_UNREACHABLE
            ) from exc
        if exc.code in {"UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION"}:
            raise CliError(
                f"the gateway rejected the enrollment token: {exc.details or exc.code}", EXIT_REJECTED
            ) from exc
        raise CliError(f"enrollment failed: {exc}", EXIT_ERROR) from exc
    if not response.instance_id or not response.credential:
        raise CliError("enrollment failed: the gateway returned no credential", EXIT_ERROR)
    state = AgentState(
        gateway=address,
        instance_id=response.instance_id,
        credential=response.credential,
        gateway_ca=ca_pem,
        gateway_pins=trust.pins,
        plaintext=trust.plaintext,
    )
    try:
        path = save_state(state_dir, state)
    except OSError as exc:
        raise CliError(f"cannot store the credential in {state_dir}: {exc.strerror or exc}", EXIT_ERROR) from exc
    return f"enrolled as instance {response.instance_id}; credential stored in {path}"


async def _run(state: AgentState, state_dir: str, roots: Sequence[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        channel = open_channel(state.gateway, state.trust)
    except PinMismatch as exc:
        raise CliError(f"{exc}; enroll again with the current CA and pins", EXIT_REJECTED) from None
    async with channel:
        client = GrpcGatewayClient(channel, state.instance_id, state.credential)
        session = Session(
            client,
            hello=make_hello(state_dir),
            run_backup=make_backup_runner(client, state_dir, roots),
            run_restore=make_restore_runner(client),
        )
        log.info("strongroom-agent %s: instance %s, gateway %s", __version__, state.instance_id, state.gateway)
        try:
            await session.run(stop)
        except CredentialRejected as exc:
            raise CliError(
                f"the gateway rejected this agent's credential ({exc}); enroll again with a new token", EXIT_REJECTED
            ) from exc
    log.info("stopped")


def _check_roots(roots: Sequence[str]) -> list[str]:
    for root in roots:
        if not os.path.isabs(root):
            raise CliError(f"--roots must be absolute paths, got {root!r}", EXIT_USAGE)
        if not os.path.isdir(root):
            raise CliError(f"--roots: {root} is not an existing directory", EXIT_USAGE)
    return [os.path.realpath(r) for r in roots]


def run_cli(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state_dir = resolve_state_dir(args.state_dir, os.environ)
    try:
        if args.command == "enroll":
            print(asyncio.run(_enroll(args.gateway, args.token, state_dir, *_trust(args))))
            return EXIT_OK
        logging.basicConfig(
            level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        roots = _check_roots(args.roots)
        try:
            state = load_state(state_dir)
        except StateError as exc:
            raise CliError(str(exc), EXIT_USAGE) from exc
        asyncio.run(_run(state, state_dir, roots))
        return EXIT_OK
    except CliError as exc:
        print(f"strongroom-agent: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_OK


def main() -> None:
    sys.exit(run_cli())


if __name__ == "__main__":
    main()
