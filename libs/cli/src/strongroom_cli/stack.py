"""Start and stop Strongroom service processes: one process per service.

Used by the standalone runner (``strongroom standalone``) and by the end-to-end
tests, so both exercise exactly the production entry points. A service binds
its gRPC port (0 = any free port) and prints ``LISTENING <name> <host:port>``
on stdout once it serves; everything else it prints goes to its log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# Start order: the catalog reads manifests from the gateway's internal listener and the restore
# service calls the catalog's and the scheduler's, so those three start one by one, first.
SERVICES: tuple[str, ...] = ("gateway", "catalog", "scheduler", "billing", "restore")
_STARTED_ONE_BY_ONE = 3
INTERNAL = "-internal"
AGENTS = "gateway-agents"  # the gateway's agent mTLS listener (ADR 0028)
MODULES: Mapping[str, str] = {
    "catalog": "strongroom_catalog",
    "scheduler": "strongroom_scheduler",
    "billing": "strongroom_billing",
    "gateway": "strongroom_gateway",
    "restore": "strongroom_restore",
    "api": "strongroom_api",
}
# The REST edge (ADR 0052): no database, no broker, no peer certificate; it starts last, once the
# services it forwards to have their addresses.
EDGE = "api"
# What the edge's environment keeps of the supervisor's STRONGROOM_* settings: none of the
# services' secrets (database, master key, object store, broker credentials) reach it.
_EDGE_SETTINGS = ("STRONGROOM_INSECURE_PLAINTEXT", "STRONGROOM_OTEL", "STRONGROOM_LOG_", "STRONGROOM_API_")


class ServiceStartError(RuntimeError):
    """A process exited or stayed silent before announcing its address; the message has its log tail."""


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ManagedProcess:
    """A child process whose output is copied to ``log_path``."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    address: str = ""
    announced: dict[str, str] = field(default_factory=dict)
    _pump: asyncio.Task[None] | None = field(default=None, repr=False)

    async def stop(self, grace: float = 15.0) -> int:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; return the exit code."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        return self.process.returncode if self.process.returncode is not None else -1


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM it when the supervisor dies.

    Children run in their own session (so a terminal's Ctrl-C reaches only the
    supervisor, which stops them in order); this keeps them from outliving a
    supervisor that was killed outright.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: best effort only
        pass


async def _pump_output(stream: asyncio.StreamReader, log_path: Path) -> None:
    with log_path.open("ab") as log:
        while line := await stream.readline():
            log.write(line)
            log.flush()


async def spawn(
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    log_dir: Path,
    *,
    announce: str | None = None,
    also_announce: tuple[str, ...] = (),
    start_within: float = 90.0,
) -> ManagedProcess:
    """Start ``argv``; when ``announce`` is given, wait for ``LISTENING <announce> <addr>`` on stdout.

    ``also_announce`` names further listeners (``gateway-internal``) announced before it; their
    addresses land in ``announced``.

    Raises ServiceStartError (with the log tail) if the process exits or does
    not announce itself within ``start_within`` seconds.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C in a terminal reaches the supervisor only
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    assert process.stdout is not None
    managed = ManagedProcess(name=name, process=process, log_path=log_path)
    if announce is not None:
        prefix = f"LISTENING {announce} "
        others = tuple(f"LISTENING {name} " for name in also_announce)
        try:
            async with asyncio.timeout(start_within):
                with log_path.open("ab") as log:
                    while True:
                        line = await process.stdout.readline()
                        if not line:
                            await process.wait()
                            raise ServiceStartError(
                                f"{name} exited with code {process.returncode} before serving; "
                                f"log {log_path}:\n{_log_tail(log_path)}"
                            )
                        log.write(line)
                        text = line.decode(errors="replace").strip()
                        for other, name in zip(others, also_announce, strict=True):
                            if text.startswith(other):
                                managed.announced[name] = text[len(other) :].strip()
                        if text.startswith(prefix):
                            managed.address = text[len(prefix) :].strip()
                            managed.announced[announce] = managed.address
                            break
        except TimeoutError:
            await managed.stop(grace=2)
            raise ServiceStartError(
                f"{name} did not start serving within {start_within:.0f}s; log {log_path}:\n{_log_tail(log_path)}"
            ) from None
    managed._pump = asyncio.create_task(_pump_output(process.stdout, log_path))
    return managed


def service_env(base: Mapping[str, str], addresses: Mapping[str, str]) -> dict[str, str]:
    """The environment of a service process: ``base`` plus every known peer address.

    ``gateway`` becomes ``STRONGROOM_GATEWAY_ADDR``, ``gateway-internal``
    ``STRONGROOM_GATEWAY_INTERNAL_ADDR``.
    """
    env = dict(base)
    for name, address in addresses.items():
        env[f"STRONGROOM_{name.upper().replace('-', '_')}_ADDR"] = address
    env.setdefault("STRONGROOM_GRPC_LISTEN", "127.0.0.1:0")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def tls_env(
    tls_dir: Path, service: str, *, internal_listen: str | None = None, agents_listen: str | None = None
) -> dict[str, str]:
    """TLS of one service from a local PKI (``certs.ensure_local_pki``), with its internal listener.

    The service presents ``<service>.pem`` on both listeners and to its peers; its internal
    listener accepts only certificates of the same CA (mutual TLS, ADR 0024). A restarted service
    gets its previous ``internal_listen`` back, so its peers' channels find it again.
    """
    from strongroom_platform.certs import AGENT_CA_CERT_FILE, AGENT_CA_KEY_FILE, service_tls_env

    env = service_tls_env(tls_dir, service, internal_listen=internal_listen)
    if service == "gateway":
        # Agents call with certificates of the agent CA on their own mTLS listener (ADR 0028).
        env["STRONGROOM_GATEWAY_AGENT_MTLS_LISTEN"] = agents_listen or "127.0.0.1:0"
        env["STRONGROOM_GATEWAY_AGENT_CA_CERT"] = str(tls_dir / AGENT_CA_CERT_FILE)
        env["STRONGROOM_GATEWAY_AGENT_CA_KEY"] = str(tls_dir / AGENT_CA_KEY_FILE)
    return env


MIGRATE_DSN = "STRONGROOM_PG_MIGRATE_DSN"


def edge_env(
    base: Mapping[str, str], addresses: Mapping[str, str], tls_dir: Path | None, listen: str | None
) -> dict[str, str]:
    """The REST edge's environment: the services' public addresses, its own certificate (server TLS
    only: it presents none to the services) and ``listen``; no other STRONGROOM_* setting of ``base``."""
    env = {k: v for k, v in base.items() if not k.startswith("STRONGROOM_") or k.startswith(_EDGE_SETTINGS)}
    for name in SERVICES:
        env[f"STRONGROOM_{name.upper()}_ADDR"] = addresses[name]
    if tls_dir is not None:
        from strongroom_platform.certs import CA_CERT_FILE, pair_paths

        cert, key = pair_paths(tls_dir, EDGE)
        env.update(
            STRONGROOM_TLS_CERT=str(cert), STRONGROOM_TLS_KEY=str(key), STRONGROOM_TLS_CA=str(tls_dir / CA_CERT_FILE)
        )
    env["STRONGROOM_API_LISTEN"] = listen or "127.0.0.1:0"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class Stack:
    """The five services, each in its own process, each logged in to PostgreSQL as its own role."""

    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    tls_dir: Path | None = None
    databases: dict[str, str] = field(default_factory=dict)

    @property
    def addresses(self) -> dict[str, str]:
        """Every listener's address: ``<service>`` and, with TLS, ``<service>-internal``."""
        return {name: address for p in self.processes.values() for name, address in p.announced.items()}

    async def start(
        self,
        base_env: Mapping[str, str],
        log_dir: Path,
        *,
        listen: Mapping[str, str] | None = None,
        tls_dir: Path | None = None,
        start_within: float = 90.0,
        databases: Mapping[str, str] | None = None,
        edge: bool = False,
    ) -> None:
        """Start every service; on any failure stop those already started and re-raise.

        ``databases`` maps each service to the DSN of its own PostgreSQL role (ADR 0031). With
        ``STRONGROOM_PG_MIGRATE_DSN`` (the migration owner) in ``base_env``, every installed schema
        is migrated first, as ``strongroom-admin migrate`` does, and no service gets the owner's DSN.
        ``listen`` maps a service name to its fixed listen address (default: any free port).
        ``tls_dir`` holds (or receives) a local PKI: every service then serves TLS, with an
        internal mutual-TLS listener for its peers; without it ``base_env`` must say how.
        ``edge`` starts the REST edge (``api``, ADR 0052) last, listening on ``listen["api"]``.
        """
        listen = listen or {}
        self.databases = dict(databases or {})
        owner = base_env.get(MIGRATE_DSN)
        if owner and self.databases:
            from strongroom_platform.pg_roles import migrate_schemas
            from strongroom_platform.schemas import installed_specs

            await migrate_schemas(owner, installed_specs())
        if tls_dir is not None:
            from strongroom_platform.certs import ensure_agent_ca, ensure_local_pki

            ensure_local_pki(tls_dir, (*SERVICES, EDGE) if edge else SERVICES)
            ensure_agent_ca(tls_dir)
            self.tls_dir = tls_dir
        try:
            for name in SERVICES[:_STARTED_ONE_BY_ONE]:
                self.processes[name] = await self._start_one(name, base_env, log_dir, listen.get(name), start_within)
            rest = SERVICES[_STARTED_ONE_BY_ONE:]
            started = await asyncio.gather(
                *(self._start_one(name, base_env, log_dir, listen.get(name), start_within) for name in rest),
                return_exceptions=True,
            )
            failure: BaseException | None = None
            for name, result in zip(rest, started, strict=True):
                if isinstance(result, BaseException):
                    failure = failure or result
                else:
                    self.processes[name] = result
            if failure is not None:
                raise failure
            if edge:
                env = edge_env(base_env, self.addresses, self.tls_dir, listen.get(EDGE))
                argv = [sys.executable, "-m", MODULES[EDGE]]
                self.processes[EDGE] = await spawn(EDGE, argv, env, log_dir, announce=EDGE, start_within=start_within)
        except BaseException:
            await self.stop()
            raise

    async def _start_one(
        self, name: str, base_env: Mapping[str, str], log_dir: Path, listen: str | None, start_within: float
    ) -> ManagedProcess:
        env = service_env(base_env, self.addresses)
        if name in self.databases:
            env["STRONGROOM_PG_DSN"] = self.databases[name]
            env.pop(MIGRATE_DSN, None)
        also: tuple[str, ...] = ()
        if self.tls_dir is not None:
            known = self.addresses
            internal, agents = known.get(name + INTERNAL), known.get(AGENTS)
            env.update(tls_env(self.tls_dir, name, internal_listen=internal, agents_listen=agents))
            also = (name + INTERNAL, AGENTS) if name == "gateway" else (name + INTERNAL,)
        if listen:
            env["STRONGROOM_GRPC_LISTEN"] = listen
        argv = [sys.executable, "-m", MODULES[name]]
        return await spawn(name, argv, env, log_dir, announce=name, also_announce=also, start_within=start_within)

    async def stop(self) -> None:
        """Stop every process (in reverse start order)."""
        for name in reversed(list(self.processes)):
            await self.processes[name].stop()
        self.processes.clear()


def current_env() -> dict[str, str]:
    """The supervisor's own environment (read once, by the caller's composition root)."""
    return dict(os.environ)


def operator_channel(address: str, *, ca_file: Path | None, token: str) -> grpc.aio.Channel:
    """A channel to a service's public listener that sends ``token`` on every call.

    With ``ca_file`` the channel speaks TLS, trusting that CA, and the token rides as call
    credentials. Without it the channel is plaintext, and gRPC refuses call credentials there:
    the caller must then send the token as metadata itself.
    """
    if ca_file is None:
        return grpc.aio.insecure_channel(address)
    from strongroom_platform.tls import bearer_channel

    return bearer_channel(address, ca_file.read_bytes(), token)
