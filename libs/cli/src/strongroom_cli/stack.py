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

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# Start order: the catalog reads manifests from the gateway and the restore service calls the
# catalog, so the gateway starts first, then the catalog, then the others together.
SERVICES: tuple[str, ...] = ("gateway", "catalog", "scheduler", "billing", "restore")
_STARTED_ONE_BY_ONE = 2
MODULES: Mapping[str, str] = {
    "catalog": "strongroom_catalog",
    "scheduler": "strongroom_scheduler",
    "billing": "strongroom_billing",
    "gateway": "strongroom_gateway",
    "restore": "strongroom_restore",
}


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
    start_within: float = 90.0,
) -> ManagedProcess:
    """Start ``argv``; when ``announce`` is given, wait for ``LISTENING <announce> <addr>`` on stdout.

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
                        if text.startswith(prefix):
                            managed.address = text[len(prefix) :].strip()
                            break
        except TimeoutError:
            await managed.stop(grace=2)
            raise ServiceStartError(
                f"{name} did not start serving within {start_within:.0f}s; log {log_path}:\n{_log_tail(log_path)}"
            ) from None
    managed._pump = asyncio.create_task(_pump_output(process.stdout, log_path))
    return managed


def service_env(base: Mapping[str, str], addresses: Mapping[str, str]) -> dict[str, str]:
    """The environment of a service process: ``base`` plus every known peer address."""
    env = dict(base)
    for name, address in addresses.items():
        env[f"STRONGROOM_{name.upper()}_ADDR"] = address
    env.setdefault("STRONGROOM_GRPC_LISTEN", "127.0.0.1:0")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class Stack:
    """The five services, each in its own process."""

    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    @property
    def addresses(self) -> dict[str, str]:
        return {name: p.address for name, p in self.processes.items()}

    async def start(
        self,
        base_env: Mapping[str, str],
        log_dir: Path,
        *,
        listen: Mapping[str, str] | None = None,
        start_within: float = 90.0,
    ) -> None:
        """Start every service; on any failure stop those already started and re-raise.

        ``listen`` maps a service name to its fixed listen address (default: any free port).
        """
        listen = listen or {}
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
        except BaseException:
            await self.stop()
            raise

    async def _start_one(
        self, name: str, base_env: Mapping[str, str], log_dir: Path, listen: str | None, start_within: float
    ) -> ManagedProcess:
        env = service_env(base_env, self.addresses)
        if listen:
            env["STRONGROOM_GRPC_LISTEN"] = listen
        argv = [sys.executable, "-m", MODULES[name]]
        return await spawn(name, argv, env, log_dir, announce=name, start_within=start_within)

    async def stop(self) -> None:
        """Stop every process (in reverse start order)."""
        for name in reversed(list(self.processes)):
            await self.processes[name].stop()
        self.processes.clear()


def current_env() -> dict[str, str]:
    """The supervisor's own environment (read once, by the caller's composition root)."""
    return dict(os.environ)
