"""ManagedProcess and its watchdog with small shell "servers": graceful stop, orphan clean-up, run_checked.

No real server here; test_servers_lifetime.py does the same with PostgreSQL, Kafka, versitygw and Tansu.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from strongroom_servers import ServerStartError
from strongroom_servers._process import ManagedProcess, run_checked
from test_servers_lifetime import live_group_members

# A "server" that forks a grandchild which leaves its parent (reparented to init, still in the
# group), writes both pids to a file and records the signal it gets.
_SERVER = """
trap 'echo "got TERM" >> "$1"; kill $kid 2>/dev/null; exit 0' TERM
( sleep 300 & echo $! > "$1.grandchild" ) &
sleep 300 & kid=$!
echo ready >> "$1"
wait $kid
"""

# The starter: launches _SERVER (or a TERM-ignoring one), prints the pids, then sleeps until killed.
_STARTER = """
import signal, sys, time
from pathlib import Path
from strongroom_servers._process import ManagedProcess
script, marker, grace = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
proc = ManagedProcess("shell", ["sh", "-c", script, "sh", str(marker)], marker.with_suffix(".log"),
                      stop_signal=signal.SIGTERM, orphan_grace=grace)
proc.start()
deadline = time.monotonic() + 10
while not (marker.is_file() and Path(f"{marker}.grandchild").is_file()) and time.monotonic() < deadline:
    time.sleep(0.02)
print(proc.pid, proc.watchdog_pid, flush=True)
time.sleep(3600)
"""


def _wait_gone(pgid: int, within: float) -> float:
    started = time.monotonic()
    while live_group_members(pgid):
        assert time.monotonic() - started < within, f"group {pgid} still has {live_group_members(pgid)}"
        time.sleep(0.02)
    return time.monotonic() - started


def _start_starter(script: str, marker: Path, grace: float) -> tuple[subprocess.Popen[str], int, int]:
    starter = subprocess.Popen(
        [sys.executable, "-c", _STARTER, script, str(marker), str(grace)], stdout=subprocess.PIPE, text=True
    )
    assert starter.stdout is not None
    line = starter.stdout.readline()
    starter.stdout.close()
    pid, watchdog = (int(word) for word in line.split())
    return starter, pid, watchdog


def _cleanup(starter: subprocess.Popen[str], pgid: int) -> None:
    if starter.poll() is None:
        starter.kill()
    starter.wait()
    if live_group_members(pgid):
        os.killpg(pgid, signal.SIGKILL)


def test_graceful_stop_reaches_the_whole_group(tmp_path: Path) -> None:
    marker = tmp_path / "server"
    proc = ManagedProcess("shell", ["sh", "-c", _SERVER, "sh", str(marker)], tmp_path / "server.log")
    proc.start()
    pid = proc.pid
    assert pid is not None and proc.watchdog_pid not in (None, pid)
    try:
        proc.wait_until(lambda: Path(f"{marker}.grandchild").is_file(), timeout=10, what="grandchild started")
        grandchild = int(Path(f"{marker}.grandchild").read_text())
        assert grandchild in live_group_members(pid)
    finally:
        proc.stop()
    assert "got TERM" in marker.read_text()  # the stop signal, not SIGKILL
    assert live_group_members(pid) == []  # the grandchild too: what the server left in its group is killed
    assert proc.pid is None and proc.exit_code() is None


def test_sigkilled_starter_takes_server_and_grandchild_along(tmp_path: Path) -> None:
    marker = tmp_path / "server"
    starter, pid, watchdog = _start_starter(_SERVER, marker, grace=5.0)
    try:
        grandchild = int(Path(f"{marker}.grandchild").read_text())
        assert {pid, grandchild} <= set(live_group_members(pid))
        starter.kill()
        starter.wait()
        _wait_gone(pid, within=5.0)
        assert "got TERM" in marker.read_text()  # graceful first
        assert "starter gone" in marker.with_suffix(".log").read_text()
    finally:
        _cleanup(starter, pid)


def test_server_ignoring_the_stop_signal_is_sigkilled_after_the_grace(tmp_path: Path) -> None:
    marker = tmp_path / "stubborn"
    stubborn = 'trap \'\' TERM; ( sleep 300 & echo $! > "$1.grandchild" ) & echo ready > "$1"; sleep 300'
    starter, pid, _ = _start_starter(stubborn, marker, grace=0.5)
    try:
        starter.kill()
        starter.wait()
        elapsed = _wait_gone(pid, within=5.0)
        assert elapsed >= 0.4  # it really waited for the grace before SIGKILL
        assert "SIGKILL" in marker.with_suffix(".log").read_text()
    finally:
        _cleanup(starter, pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_sigkilled_watchdog_takes_server_along(tmp_path: Path) -> None:
    marker = tmp_path / "server"
    starter, pid, watchdog = _start_starter(_SERVER, marker, grace=5.0)
    try:
        os.kill(watchdog, signal.SIGKILL)
        started = time.monotonic()
        while pid in live_group_members(pid):  # the server itself; its grandchild is not covered
            assert time.monotonic() - started < 5.0
            time.sleep(0.02)
    finally:
        _cleanup(starter, pid)


def test_run_checked_reports_status_and_kills_on_timeout(tmp_path: Path) -> None:
    log = tmp_path / "cmd.log"
    run_checked(["sh", "-c", "echo fine"], what="echo", log_path=log)
    assert "fine" in log.read_text()
    with pytest.raises(ServerStartError, match=r"exit 3"):
        run_checked(["sh", "-c", "echo broken; exit 3"], what="broken", log_path=log)
    pid_file = tmp_path / "slow.pid"
    with pytest.raises(ServerStartError, match="timed out"):
        run_checked(["sh", "-c", f"echo $$ > {pid_file}; sleep 300"], what="slow", log_path=log, timeout=1)
    # SIGKILL is delivered asynchronously: the group is gone moments later, never left running.
    _wait_gone(int(pid_file.read_text()), within=10)


def test_unstartable_executable_is_a_start_error(tmp_path: Path) -> None:
    proc = ManagedProcess("missing", [str(tmp_path / "no-such-server")], tmp_path / "missing.log")
    with pytest.raises(ServerStartError, match="cannot start missing"):
        proc.start()
    assert proc.exit_code() is None
