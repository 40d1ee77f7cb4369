"""Servers die with the process that started them (ADR 0022), even when it is killed with SIGKILL.

Each test starts a throwaway Python process that launches one real server and prints its pid and
port, SIGKILLs that process, and then requires the server's whole process group to be gone and its
port to refuse connections within a bounded time.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from strongroom_servers._process import port_open

pytestmark = pytest.mark.integration

# Generous: the watchdog gives the server 5 s for its graceful stop before SIGKILL.
_GONE_WITHIN = 20.0

_STARTER = """
import json, sys, time
from pathlib import Path
from strongroom_servers import LocalKafka, LocalPostgres, LocalTansu, LocalVersityGW, PrerequisiteMissing

kind, work = sys.argv[1], Path(sys.argv[2])
make = {
    "postgres": lambda: LocalPostgres(None, work / "pgdata"),
    "kafka": lambda: LocalKafka(work / "kafka"),
    "s3": lambda: LocalVersityGW(work / "s3"),
    "tansu": lambda: LocalTansu(work_dir=work / "tansu"),
}[kind]
try:
    server = make().start()
except PrerequisiteMissing as exc:
    print(json.dumps({"skip": str(exc)}), flush=True)
    sys.exit(0)
print(json.dumps({"pid": server.pid, "port": server.port}), flush=True)
time.sleep(3600)
"""


def live_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies (an orphaned zombie holds no port or memory)."""
    out = subprocess.run(["ps", "-A", "-o", "pid=,pgid=,stat="], capture_output=True, text=True, check=True)
    members = []
    for line in out.stdout.splitlines():
        pid, group, stat = line.split(None, 2)
        if int(group) == pgid and not stat.startswith("Z"):
            members.append(int(pid))
    return members


@pytest.fixture
def starter() -> Iterator[list[subprocess.Popen[str]]]:
    """Holds the starter process; kills it (and whatever server survived the test) at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    assert readable, f"starter printed nothing within {timeout:.0f}s"
    line = proc.stdout.readline()
    assert line, f"starter exited with {proc.wait()} before the server was up"
    info: dict[str, Any] = json.loads(line)
    return info


@pytest.mark.parametrize("kind", ["postgres", "kafka", "s3", "tansu"])
def test_server_dies_when_its_starter_is_sigkilled(
    kind: str, tmp_path: Path, starter: list[subprocess.Popen[str]], record_property: Any
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _STARTER, kind, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    starter.append(proc)
    info = _read_line(proc, timeout=240.0)  # includes a first Kafka download or versitygw build
    if "skip" in info:
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(info["skip"])
        pytest.skip(info["skip"])
    pid, port = int(info["pid"]), int(info["port"])
    try:
        assert pid in live_group_members(pid), "the server leads its own process group"
        assert port_open("127.0.0.1", port)

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while live_group_members(pid) or port_open("127.0.0.1", port, timeout=0.2):
            assert time.monotonic() - killed < _GONE_WITHIN, (
                f"{kind} still running {_GONE_WITHIN:.0f}s after its starter was SIGKILLed: "
                f"group members {live_group_members(pid)}, port open {port_open('127.0.0.1', port)}"
            )
            time.sleep(0.05)
        elapsed = time.monotonic() - killed
    finally:
        if live_group_members(pid):  # only after a failure: leave no stray server behind
            os.killpg(pid, signal.SIGKILL)
    record_property(f"{kind}_gone_after_s", round(elapsed, 2))
    print(f"{kind}: process group and port gone {elapsed:.2f}s after the starter's SIGKILL")
