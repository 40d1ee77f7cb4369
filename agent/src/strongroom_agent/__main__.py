"""``strongroom-agent enroll`` and ``strongroom-agent run``.

Exit codes: 0 success, 1 unexpected failure, 2 bad input or missing state,
3 gateway unreachable, 4 token or credential rejected. Expected failures
print one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Sequence

from strongroom.agent.v1 import gateway_pb2
from strongroom_telemetry.config import TelemetrySettings, TelemetrySettingsError
from strongroom_telemetry.process import Telemetry
from strongroom_telemetry.process import start as start_telemetry

from strongroom_agent import __version__
from strongroom_agent.backup import native
from strongroom_agent.collector import tune_collector
from strongroom_agent.config import (
    AgentState,
    StateError,
    load_state,
    remove_state,
    resolve_state_dir,
    save_state,
)
from strongroom_agent.gateway_client import (
    GatewayError,
    GrpcGatewayClient,
    enroll,
    open_channel,
    renew_by_bearer,
)
from strongroom_agent.identity import (
    CertificateKeeper,
    ClientCertificate,
    IdentityError,
    load_identity,
    new_key_and_csr,
    save_identity,
)
from strongroom_agent.memory import tune_allocator
from strongroom_agent.session import (
    CredentialRejected,
    Session,
    UninstallRequested,
    enroll_request,
    make_backup_runner,
    make_hello,
    make_restore_runner,
)
from strongroom_agent.transport import GatewayTrust, PinMismatch, channel_credentials, mtls_target, pinned_roots
from strongroom_agent.uninstall import uninstall_package

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
    key_pem, csr_pem = new_key_and_csr()
    request = enroll_request(token)
    if not trust.plaintext:
        request.csr_pem = csr_pem
    try:
        response = await enroll(address, request, trust)
    except GatewayError as exc:
        if exc.code in _UNREACHABLE:
            raise CliError(
                f"cannot reach the gateway at {address}: {exc.details or exc.code}", EXIT_UNREACHABLE
            ) from exc
        if exc.code == "FAILED_PRECONDITION":  # e.g. this agent's version is outside the gateway's window
            raise CliError(f"the gateway refused the enrollment: {exc.details or exc.code}", EXIT_REJECTED) from exc
        if exc.code in {"UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "INVALID_ARGUMENT"}:
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
        mtls_address=response.certificate.mtls_address if response.certificate.certificate_pem else "",
    )
    try:
        if state.mtls_address:
            save_identity(state_dir, ClientCertificate(bytes(response.certificate.certificate_pem), key_pem))
        path = save_state(state_dir, state)
    except OSError as exc:
        raise CliError(f"cannot store the credential in {state_dir}: {exc.strerror or exc}", EXIT_ERROR) from exc
    return f"enrolled as instance {response.instance_id}; credential stored in {path}"


# An old channel keeps serving the calls in flight on it this long after a renewal.
OLD_CHANNEL_GRACE_SECONDS = 3600.0
# Gateways that issue no certificates answer these to RenewCertificate.
_NO_CERTIFICATES = frozenset({"FAILED_PRECONDITION", "UNIMPLEMENTED"})


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _with_answer(state: AgentState, answer: gateway_pb2.AgentCertificate) -> AgentState:
    """The state after a renewal: the listener it names and, when the gateway sent them, its CA
    pins (received over a channel pinned to the current ones, so trusted: how a CA rotation
    reaches agents before it happens)."""
    state = dataclasses.replace(state, mtls_address=answer.mtls_address or state.mtls_address)
    pins = tuple(answer.gateway_ca_pins)
    if pins and answer.gateway_ca_pem and not state.plaintext:
        try:
            pinned_roots(bytes(answer.gateway_ca_pem), pins)
        except PinMismatch:
            log.warning("ignoring the gateway's CA bundle: it matches none of its pins")
        else:
            state = dataclasses.replace(
                state, gateway_ca=bytes(answer.gateway_ca_pem).decode("ascii"), gateway_pins=pins
            )
    return state


async def _certificate(state: AgentState, state_dir: str) -> tuple[AgentState, ClientCertificate | None]:
    """The agent's certificate, renewed by bearer when missing or expired (ADR 0028).

    None: this agent keeps the bearer (plaintext development setup, or a gateway without an agent
    CA). An agent enrolled before certificates existed gets its first one here.
    """
    if state.plaintext:
        return state, None
    try:
        identity = load_identity(state_dir)
    except IdentityError as exc:
        log.warning("%s; asking for a new certificate", exc)
        identity = None
    if identity is not None and state.mtls_address and not identity.expired(_now()):
        return state, identity
    key_pem, csr_pem = new_key_and_csr()
    try:
        answer = await renew_by_bearer(state.gateway, state.trust, state.instance_id, state.credential, csr_pem)
    except GatewayError as exc:
        if exc.code in _NO_CERTIFICATES:
            log.info("the gateway issues no agent certificates; using the bearer credential")
            return state, None
        if exc.code in _UNREACHABLE and identity is None:
            log.warning("cannot reach the gateway for a certificate (%s); using the bearer credential", exc)
            return state, None
        if exc.code in _UNREACHABLE:
            message = f"cannot reach the gateway at {state.gateway} to renew the expired certificate: {exc}"
            raise CliError(message, EXIT_UNREACHABLE) from exc
        raise CliError(
            f"the gateway refused this agent's certificate renewal ({exc}); enroll again with a new token",
            EXIT_REJECTED,
        ) from exc
    identity = ClientCertificate(bytes(answer.certificate_pem), key_pem)
    save_identity(state_dir, identity)
    state = _with_answer(state, answer)
    save_state(state_dir, state)
    log.info("obtained an agent certificate valid until %s", identity.not_after.isoformat())
    return state, identity


async def _run(state: AgentState, state_dir: str, roots: Sequence[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        state, identity = await _certificate(state, state_dir)
        if identity is not None and state.mtls_address:
            target = mtls_target(state.gateway, state.mtls_address)
            channel = open_channel(target, state.trust, (identity.cert_pem, identity.key_pem))
            client = GrpcGatewayClient(channel, state.instance_id, None)
        else:
            channel = open_channel(state.gateway, state.trust)
            client = GrpcGatewayClient(channel, state.instance_id, state.credential)
    except PinMismatch as exc:
        raise CliError(f"{exc}; enroll again with the current CA and pins", EXIT_REJECTED) from None
    session = Session(
        client,
        hello=make_hello(state_dir),
        # The native small-file reader where it is built, unless STRONGROOM_AGENT_NATIVE=0 (ADR 0080).
        run_backup=make_backup_runner(client, state_dir, roots, native=native.from_env(os.environ)),
        run_restore=make_restore_runner(client),
    )
    channels = [channel]
    closing: set[asyncio.Task[None]] = set()

    async def switch(renewed: ClientCertificate, answer: gateway_pb2.AgentCertificate) -> None:
        nonlocal state
        state = _with_answer(state, answer)
        save_state(state_dir, state)
        target = mtls_target(state.gateway, state.mtls_address)
        channels.append(open_channel(target, state.trust, (renewed.cert_pem, renewed.key_pem)))
        client.use_channel(channels[-1])
        old = channels.pop(0)
        task = asyncio.create_task(old.close(grace=OLD_CHANNEL_GRACE_SECONDS))
        closing.add(task)
        task.add_done_callback(closing.discard)
        session.reconnect()  # the control stream moves to the new certificate

    async def renew_bearer(csr_pem: bytes) -> gateway_pb2.AgentCertificate:
        return await renew_by_bearer(state.gateway, state.trust, state.instance_id, state.credential, csr_pem)

    keeper_failed: list[BaseException] = []

    async def keep(keeper: CertificateKeeper) -> None:
        try:
            await keeper.run(stop)
        except GatewayError as exc:
            keeper_failed.append(exc)
            stop.set()

    keeper_task = None
    if identity is not None:
        keeper = CertificateKeeper(
            state_dir,
            identity,
            renew_mtls=client.renew_certificate,
            renew_bearer=renew_bearer,
            on_renewed=switch,
            now=_now,
        )
        keeper_task = asyncio.create_task(keep(keeper))
    mode = f"mTLS {mtls_target(state.gateway, state.mtls_address)}" if identity is not None else "bearer"
    log.info("strongroom-agent %s: instance %s, gateway %s (%s)", __version__, state.instance_id, state.gateway, mode)
    try:
        await session.run(stop)
        if keeper_failed:
            raise CredentialRejected(str(keeper_failed[0]))
    except UninstallRequested as exc:
        # Uninstall (ADR 0040, 0045): the state, then the package when the agent came from one.
        removed = remove_state(state_dir)
        log.warning(
            "backup of instance %s was canceled (%s): %s; %s; exiting",
            state.instance_id,
            exc,
            f"removed {state_dir}" if removed else "no state to remove",
            uninstall_package(),
        )
    except CredentialRejected as exc:
        raise CliError(
            f"the gateway rejected this agent's credential ({exc}); enroll again with a new token", EXIT_REJECTED
        ) from exc
    finally:
        if keeper_task is not None:
            keeper_task.cancel()
        for task in list(closing):
            task.cancel()
        for open_ in channels:
            await open_.close(None)
    log.info("stopped")


def _check_roots(roots: Sequence[str]) -> list[str]:
    for root in roots:
        if not os.path.isabs(root):
            raise CliError(f"--roots must be absolute paths, got {root!r}", EXIT_USAGE)
        if not os.path.isdir(root):
            raise CliError(f"--roots: {root} is not an existing directory", EXIT_USAGE)
    return [os.path.realpath(r) for r in roots]


def _start_telemetry(log_level: str) -> Telemetry:
    """Logs (text unless STRONGROOM_LOG_FORMAT=json), traces and metrics as the environment says (ADR 0039)."""
    try:
        settings = TelemetrySettings.from_env(os.environ, default_log_format="text")
        return start_telemetry("agent", dataclasses.replace(settings, log_level=log_level), announce=sys.stdout)
    except (TelemetrySettingsError, OSError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def run_cli(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state_dir = resolve_state_dir(args.state_dir, os.environ)
    try:
        if args.command == "enroll":
            print(asyncio.run(_enroll(args.gateway, args.token, state_dir, *_trust(args))))
            return EXIT_OK
        telemetry = _start_telemetry(args.log_level)
        try:
            roots = _check_roots(args.roots)
            try:
                state = load_state(state_dir)
            except StateError as exc:
                raise CliError(str(exc), EXIT_USAGE) from exc
            tune_allocator()  # before the job threads allocate
            tune_collector()  # after start-up: its heap is frozen (ADR 0076)
            asyncio.run(_run(state, state_dir, roots))
        finally:
            telemetry.shutdown()
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
