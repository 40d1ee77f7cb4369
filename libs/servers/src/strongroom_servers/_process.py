"""Shared plumbing for the launchers: ports, cache dir, file locks, and one managed child process.

Nothing here runs at import time; every function touches the system only when called.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import fcntl
import functools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = [
    "LocalServer",
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


_WATCHDOG = Path(__file__).resolve().with_name("_watchdog.py")
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
    """Run a one-shot command with output appended to ``log_path``; raise ServerStartError with the tail on failure.

    The command runs under a watchdog like a server (see :class:`ManagedProcess`), so a build or
    ``initdb`` does not outlive a starter that is killed meanwhile.
    """
    proc = ManagedProcess(what, argv, log_path, env=env, cwd=cwd, user=user, stop_signal=signal.SIGKILL)
    proc.start()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired as exc:
        raise ServerStartError(f"{what} timed out after {timeout:.0f}s; log {log_path}:\n{log_tail(log_path)}") from exc
    finally:
        proc.stop()
    if code != 0:
        raise ServerStartError(f"{what} failed (exit {code}); log {log_path}:\n{log_tail(log_path)}")


def _user_ids(user: str | None) -> tuple[int | None, int | None]:
    """(uid, gid) the watchdog drops to (also dropping root's supplementary groups); None for no change."""
    if user is None:
        return None, None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


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
    """One long-running child process whose stdout/stderr go to a log file, tied to this process.

    The child is started by a watchdog (``_watchdog.py``, a tiny stdlib-only Python process in its
    own session) that holds one end of a socket pair; only this process holds the other end. When
    this process dies, however it dies (SIGKILL included), the watchdog sees EOF (or its parent pid
    change), sends ``stop_signal`` to the child's process group, SIGKILLs it after ``orphan_grace``
    seconds and exits. On Linux the child also gets SIGKILL if the watchdog itself is killed.

    The child runs in its own session (process group), so a terminal Ctrl-C reaches only the
    parent, which then stops it in order; stop() signals the whole group (through the watchdog,
    which still owns the unreaped child, so the group id cannot have been reused). ``pid`` is the
    child's, not the watchdog's. See docs/adr/0022-servers-die-with-their-starter.md.
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
        orphan_grace: float = 5.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.orphan_grace = orphan_grace
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._lifeline: socket.socket | None = None
        self._pid: int | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        """The server's pid (also its process group id), None before start() and after stop()."""
        return self._pid

    @property
    def watchdog_pid(self) -> int | None:
        return self._watchdog.pid if self._watchdog is not None else None

    def start(self) -> None:
        """Spawn the watchdog and, through it, the child. Raises ServerStartError if the child cannot be started."""
        global _atexit_registered
        if self._watchdog is not None:
            raise RuntimeError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        uid, gid = _user_ids(self.user)
        self._log = self.log_path.open("ab")
        self._log_offset = self._log.tell()
        self._log.write(f"$ {' '.join(self.argv)}\n".encode())
        self._log.flush()
        argv = [
            sys.executable,
            "-I",  # ignore PYTHON* variables and user site-packages: the watchdog needs the stdlib only
            "-S",
            str(_WATCHDOG),
            "--ppid",
            str(os.getpid()),
            "--stop-signal",
            str(int(self.stop_signal)),
            "--grace",
            str(self.orphan_grace),
            *(["--uid", str(uid), "--gid", str(gid)] if uid is not None else []),
            "--",
            *self.argv,
        ]
        ours, theirs = socket.socketpair()  # not inheritable: later children of ours do not get a copy
        try:
            self._watchdog = subprocess.Popen(
                argv,
                stdin=theirs.fileno(),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # a kill aimed at our process group must not take the watchdog too
            )
        except OSError as exc:
            ours.close()
            self._close_log()
            raise ServerStartError(f"cannot start the watchdog for {self.name}: {exc}") from exc
        finally:
            theirs.close()
        self._lifeline = ours
        with _ATEXIT_LOCK:
            if not _atexit_registered:
                atexit.register(_stop_all_at_exit)
                _atexit_registered = True
        _RUNNING.add(self)
        reply = self._read_reply()
        verb, _, value = reply.partition(" ")
        if verb != "pid" or not value.isdigit():
            self.stop()
            detail = value if verb == "error" else f"watchdog said {reply!r}; log {self.log_path}"
            raise ServerStartError(f"cannot start {self.name} ({self.argv[0]}): {detail}")
        self._pid = int(value)

    def _read_reply(self, timeout: float = 30.0) -> str:
        assert self._lifeline is not None
        self._lifeline.settimeout(timeout)
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = self._lifeline.recv(256)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        finally:
            self._lifeline.settimeout(None)
        return data.decode("utf-8", "replace").strip()

    def exit_code(self) -> int | None:
        """The child's exit status (128 + n after signal n), or None while it runs (or before start)."""
        return self._watchdog.poll() if self._watchdog is not None else None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit and return its status; raises subprocess.TimeoutExpired."""
        if self._watchdog is None:
            raise RuntimeError(f"{self.name} not started")
        return self._watchdog.wait(timeout=timeout)

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
        watchdog = self._watchdog
        if watchdog is None:
            return
        try:
            if watchdog.poll() is None:
                self._signal_group(self.stop_signal)
                try:
                    watchdog.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    try:
                        watchdog.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        watchdog.kill()  # an unresponsive watchdog: on Linux its child gets SIGKILL too
                        watchdog.wait(timeout=30)
        finally:
            self._watchdog = None
            self._pid = None
            _RUNNING.discard(self)
            if self._lifeline is not None:
                self._lifeline.close()  # after the watchdog exited, so closing it kills nothing
                self._lifeline = None
            self._close_log()

    def _signal_group(self, sig: signal.Signals) -> None:
        """Ask the watchdog to send ``sig`` to the child's process group."""
        if self._lifeline is None:
            return
        try:
            self._lifeline.sendall(f"signal {int(sig)}\n".encode())
        except OSError:
            pass  # the watchdog is gone, and with it (or before it) the child

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def debian_tool(
    tool: str, package: str, *, run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
) -> str:
    """Absolute path of ``tool`` from the Debian package ``package``: installed with apt-get when it is
    missing and this process is root with apt-get at hand (``make test`` installs what it needs; the
    package lists are refreshed once if the first install fails), else PrerequisiteMissing."""
    found = shutil.which(tool)
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PrerequisiteMissing(f"`{tool}` not found on PATH (apt-get install {package})")
    # Other builds on the machine may hold the dpkg lock for a while: wait for it instead of failing.
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y", "-q", "--no-install-recommends", package]
    done = run(install, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        run(["apt-get", "-q", "update"], capture_output=True, text=True, timeout=1800, check=False)
        done = run(install, capture_output=True, text=True, timeout=1800, check=False)
    found = shutil.which(tool)
    if found is None:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
        raise PrerequisiteMissing(f"`{tool}` not found on PATH; apt-get install {package} failed: {' / '.join(tail)}")
    return found


def which_or_raise(tool: str, hint: str) -> str:
    """Absolute path of ``tool`` on PATH, else PrerequisiteMissing with an install hint."""
    found = shutil.which(tool)
    if found is None:
        raise PrerequisiteMissing(f"`{tool}` not found on PATH ({hint})")
    return found


class StartedOnEnter(abc.ABC):
    """A context manager from ``start()``/``stop()``: entering starts unless already started (so
    ``with X(...).start() as x`` works too), leaving stops."""

    @property
    @abc.abstractmethod
    def started(self) -> bool:
        """True between a successful ``start()`` and ``stop()``."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start; returns self."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop. Idempotent."""

    def __enter__(self) -> Self:
        return self if self.started else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class LocalServer(StartedOnEnter):
    """The common shape of the launchers: ``start()`` on a free (or given) port with one retry on
    "address already in use", ``stop()``, ``port`` / ``log_path`` / ``alive``, context manager.

    Subclasses provide ``_launch(port)`` (an unstarted :class:`ManagedProcess` for that port),
    ``_ready(proc, port)`` and ``log_path``; ``_prepare()`` runs once per start before the first
    attempt (downloads, initdb) and ``_start_failed()`` after a start that gave up.
    """

    #: Log text that means the port was taken between free_port() and the server's bind.
    _bind_errors: tuple[str, ...] = ("Address already in use",)
    #: What readiness means, for the timeout message; ``{port}`` is filled in.
    _ready_what = "port {port} open"

    def __init__(self, *, port: int | None, start_timeout: float, stop_timeout: float) -> None:
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._fixed_port = port
        self._port: int | None = None
        self._proc: ManagedProcess | None = None

    @property
    def port(self) -> int:
        if self._port is None or self._proc is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._port

    @property
    @abc.abstractmethod
    def log_path(self) -> Path:
        """The server's log file."""

    @property
    def alive(self) -> bool:
        """True while the started server process is still running."""
        return self._proc is not None and self._proc.exit_code() is None

    @property
    def pid(self) -> int | None:
        """The server process's id (also its process group id) while started, else None."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        """Prepare, launch and wait until ready; returns self. Raises ServerStartError with the log tail."""
        if self._proc is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._prepare()
        # A port chosen by us can be taken between probe and bind; retry once with a new one.
        attempts = 1 if self._fixed_port is not None else 2
        for attempt in range(attempts):
            port = self._fixed_port or free_port()
            proc = self._launch(port)
            try:
                proc.start()
                proc.wait_until(
                    functools.partial(self._ready, proc, port),
                    timeout=self.start_timeout,
                    what=self._ready_what.format(port=port),
                )
            except ServerStartError:
                if attempt + 1 < attempts and any(proc.log_contains(e) for e in self._bind_errors):
                    continue
                self._start_failed()
                raise
            self._proc, self._port = proc, port
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """The server's graceful stop signal to its process group, SIGKILL after ``stop_timeout``. Idempotent."""
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    @property
    def started(self) -> bool:
        return self._proc is not None

    def _prepare(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Work before the first launch attempt (provisioning, initdb)."""

    @abc.abstractmethod
    def _launch(self, port: int) -> ManagedProcess:
        """The server process for ``port``, not yet started."""

    @abc.abstractmethod
    def _ready(self, proc: ManagedProcess, port: int) -> bool:
        """True once the server launched as ``proc`` on ``port`` serves."""

    def _start_failed(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Clean-up after a start that gave up (the process is already stopped)."""
