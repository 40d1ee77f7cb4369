"""The per-server watchdog: starts one server and makes sure it does not outlive the process that asked for it.

Run by :class:`strongroom_servers._process.ManagedProcess` as
``python -I -S _watchdog.py --ppid PID --stop-signal N --grace SECONDS [--uid U --gid G] -- ARGV...``
with its stdin being one end of a socket pair whose other end only the starter holds (the
*lifeline*). Standard library only, and run by path with ``-I -S``, so it starts in milliseconds
and never imports the project.

Contract:

- The server runs as the watchdog's child in a new session (so its process group is everything it
  forks), with stdin from /dev/null and the watchdog's stdout/stderr (the server log). On Linux it
  also gets ``PR_SET_PDEATHSIG(SIGKILL)``: the watchdog is single-threaded, so the signal fires
  exactly when the watchdog dies, even by SIGKILL.
- Once started, the watchdog writes ``pid <server pid>\\n`` on the lifeline (or ``error <text>\\n``
  and exits 127 when the server cannot be executed).
- ``signal <n>\\n`` on the lifeline sends signal n to the server's process group (the starter's
  graceful stop). The watchdog still owns the unreaped server then, so the group id cannot have
  been reused.
- The starter is gone when the lifeline reaches EOF, when the watchdog's parent pid changes (covers
  a copy of the lifeline kept open by a forked child of the starter), or when the watchdog itself
  gets SIGTERM, SIGINT or SIGHUP. Then it sends the server's stop signal to the group, waits up to
  ``--grace`` seconds and SIGKILLs the group.
- When the server exits, whatever is left in its group is SIGKILLed before the server is reaped,
  and the watchdog exits with the server's status (``128 + n`` for death by signal n).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

_POLL_INTERVAL = 0.5  # seconds between parent-pid checks; EOF on the lifeline is seen at once
_PR_SET_PDEATHSIG = 1


def _note(message: str) -> None:
    sys.stderr.write(f"[strongroom watchdog {os.getpid()}] {message}\n")
    sys.stderr.flush()


def _pdeathsig_setter(parent: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when ``parent`` (the watchdog) dies; None off Linux.

    libc is loaded here, in the watchdog, so the forked child only makes two system calls.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the watchdog died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return set_pdeathsig


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, signum)


def _exited(pid: int) -> bool:
    """True once the child has exited; WNOWAIT leaves it a zombie, so its pid (= its group id) stays reserved."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


class _Watchdog:
    def __init__(self, args: argparse.Namespace, lifeline: socket.socket) -> None:
        self.args = args
        self.lifeline = lifeline
        self.starter_gone = False
        self.buffer = b""
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        # A Python-level handler (not SIG_IGN) so the server, after exec, gets default dispositions.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_terminate)

    def _on_terminate(self, signum: int, frame: FrameType | None) -> None:
        self.starter_gone = True

    def spawn(self) -> subprocess.Popen[bytes] | None:
        args = self.args
        try:
            return subprocess.Popen(
                args.argv,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=args.uid,
                group=args.gid,
                extra_groups=[] if args.uid is not None else None,
                preexec_fn=_pdeathsig_setter(os.getpid()),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            self._send(f"error {exc}".replace("\n", " "))
            return None

    def run(self, server: subprocess.Popen[bytes]) -> int:
        pid = server.pid
        self._send(f"pid {pid}")
        while not _exited(pid):
            if self.starter_gone or os.getppid() != self.args.ppid:
                self._stop_orphan(pid)
                break
            lifeline = self.lifeline.fileno()
            readable, _, _ = select.select([lifeline, self.wake_r], [], [], _POLL_INTERVAL)
            if self.wake_r in readable:
                os.read(self.wake_r, 512)
            if lifeline in readable:
                self._read_commands(pid)
        _signal_group(pid, signal.SIGKILL)  # stragglers of an exited server; its zombie still holds the id
        code = server.wait()
        return code if code >= 0 else 128 - code

    def _read_commands(self, pid: int) -> None:
        try:
            data = self.lifeline.recv(4096)
        except OSError:
            data = b""
        if not data:
            self.starter_gone = True
            return
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            verb, _, value = line.decode("ascii", "replace").partition(" ")
            if verb == "signal" and value.isdigit():
                _signal_group(pid, int(value))

    def _stop_orphan(self, pid: int) -> None:
        grace = self.args.grace
        _note(f"starter gone; stopping process group {pid} (signal {self.args.stop_signal}, SIGKILL after {grace:g}s)")
        _signal_group(pid, self.args.stop_signal)
        deadline = time.monotonic() + grace
        while not _exited(pid) and time.monotonic() < deadline:
            select.select([self.wake_r], [], [], min(0.1, max(0.0, deadline - time.monotonic())))
        if not _exited(pid):
            _note(f"process group {pid} still running after {grace:g}s; SIGKILL")
            _signal_group(pid, signal.SIGKILL)

    def _send(self, line: str) -> None:
        try:
            self.lifeline.sendall(f"{line}\n".encode())
        except OSError:
            self.starter_gone = True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="_watchdog.py")
    parser.add_argument("--ppid", type=int, required=True, help="pid of the starter")
    parser.add_argument("--stop-signal", type=int, required=True)
    parser.add_argument("--grace", type=float, required=True, help="seconds between stop signal and SIGKILL")
    parser.add_argument("--uid", type=int, default=None)
    parser.add_argument("--gid", type=int, default=None)
    parser.add_argument("argv", nargs="+")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    lifeline = socket.socket(fileno=os.dup(0))
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)  # fd 0 again, so nothing else reads the lifeline
    watchdog = _Watchdog(args, lifeline)
    server = watchdog.spawn()
    if server is None:
        return 127
    return watchdog.run(server)


if __name__ == "__main__":
    sys.exit(main())
