"""Shared plumbing for the launchers: ports, cache dir, file locks, and one managed child process.

Nothing here runs at import time; every function touches the system only when called.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "ManagedProcess",
    "PrerequisiteMissing",
    "ServerStartError",
    "cache_root",
    "file_lock",
    "free_port",
    "log_tail",
    "port_open",
    "run_checked",
    "which_or_raise",
]


_ERROR_MARK = re.compile(r"\b(ERROR|FATAL|PANIC|Exception)\b|error:")


class ServerStartError(RuntimeError):
    """A server (or the download/build it needs) failed; the message carries the tail of its log."""


class PrerequisiteMissing(RuntimeError):
    """A tool the launcher needs (java, mvn, go, PostgreSQL binaries, ...) is not installed.

    Fixtures treat this as "server unavailable" (skip, or fail under REQUIRE_SERVICES=1), unlike
    ServerStartError, which always means a broken launch.
    """


def cache_root() -> Path:
    """Directory for downloads and builds shared between runs.

    ``$STRONGROOM_CACHE``, else ``$XDG_CACHE_HOME/strongroom``, else ``~/.cache/strongroom``.
    Created on first use.
    """
    explicit = os.environ.get("STRONGROOM_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "strongroom"
    root.mkdir(parents=True, exist_ok=True)
    return root


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago.

    There is a short race between closing the probe socket and the server binding the port;
    launchers that care retry once on "address already in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connect to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    """The first error line (if any) and the last ``lines`` lines of a log file, or a note that it is missing.

    The error line is put first because a crashing server often logs its cause early and then
    dozens of shutdown lines.
    """
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    all_lines = data.splitlines()
    tail = all_lines[-lines:]
    first_error = next((line for line in all_lines if _ERROR_MARK.search(line)), None)
    if first_error is not None and first_error not in tail:
        return f"first error: {first_error}\n...\n" + "\n".join(tail)
    return "\n".join(tail)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if missing).

    Serialises downloads and builds into the shared cache across processes, e.g. two pytest runs or
    ``make prefetch`` racing a test session.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def run_checked(
    argv: Sequence[str],
    *,
    what: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 1800.0,
    user: str | None = None,
) -> None:
    """Run a one-shot command with output appended to ``log_path``; raise ServerStartError with the tail on failure."""
    uid, gid, groups = _user_ids(user)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                timeout=timeout,
                check=False,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerStartError(
                f"{what} timed out after {timeout:.0f}s; log {log_path}:\n{log_tail(log_path)}"
            ) from exc
    if proc.returncode != 0:
        raise ServerStartError(f"{what} failed (exit {proc.returncode}); log {log_path}:\n{log_tail(log_path)}")


def _user_ids(user: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """(uid, gid, extra_groups) for Popen to drop privileges to ``user``; all None for no change."""
    if user is None:
        return None, None, None
    entry = pwd.getpwnam(user)
    # extra_groups=[] drops root's supplementary groups; Popen does setgroups/setgid/setuid in the child.
    return entry.pw_uid, entry.pw_gid, []


# Launchers still running at interpreter exit are stopped, so an exception or a forgotten stop()
# does not leave a JVM or a postmaster behind. Registered lazily on first start (no import-time work).
_RUNNING: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()
_ATEXIT_LOCK = threading.Lock()
_atexit_registered = False


def _stop_all_at_exit() -> None:
    for proc in list(_RUNNING):
        with contextlib.suppress(Exception):
            proc.stop()


class ManagedProcess:
    """One long-running child process whose stdout/stderr go to a log file.

    The child runs in its own session (process group) so a terminal Ctrl-C reaches only the
    parent, which then stops it in order; stop() signals the whole group.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Spawn the child. Raises ServerStartError if the executable cannot be started."""
        global _atexit_registered
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        uid, gid, groups = _user_ids(self.user)
        self._log = self.log_path.open("ab")
        self._log_offset = self._log.tell()
        self._log.write(f"$ {' '.join(self.argv)}\n".encode())
        self._log.flush()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        except OSError as exc:
            self._close_log()
            raise ServerStartError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        with _ATEXIT_LOCK:
            if not _atexit_registered:
                atexit.register(_stop_all_at_exit)
                _atexit_registered = True
        _RUNNING.add(self)

    def exit_code(self) -> int | None:
        """The child's exit status, or None while it runs (or before start)."""
        return self._proc.poll() if self._proc is not None else None

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
        """Poll ``ready()`` until it is true.

        Raises ServerStartError (with the log tail) when the child exits first or ``timeout`` passes;
        the child is stopped in both cases so nothing is left running.
        """
        deadline = time.monotonic() + timeout
        while True:
            code = self.exit_code()
            if code is not None:
                self.stop()
                raise ServerStartError(
                    f"{self.name} exited with status {code} before {what}; log {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            if ready():
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise ServerStartError(
                    f"{self.name} not ready ({what}) after {timeout:.0f}s; log {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            time.sleep(interval)

    def log_contains(self, needle: str) -> bool:
        """True when the log written since the last start() contains ``needle``.

        Earlier runs appending to the same log file are ignored, so a restart does not see the
        previous run's ready line.
        """
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return needle.encode() in fh.read()
        except OSError:
            return False

    def stop(self) -> None:
        """Send ``stop_signal`` to the process group, wait ``stop_timeout``, then SIGKILL. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self._signal_group(proc, self.stop_signal)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait(timeout=30)
        finally:
            self._proc = None
            _RUNNING.discard(self)
            self._close_log()

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(sig)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def which_or_raise(tool: str, hint: str) -> str:
    """Absolute path of ``tool`` on PATH, else PrerequisiteMissing with an install hint."""
    found = shutil.which(tool)
    if found is None:
        raise PrerequisiteMissing(f"`{tool}` not found on PATH ({hint})")
    return found
