"""The per-job CPU limit: cgroup v2, cgroup v1, affinity fallback, and real enforcement."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from strongroom_agent.cpu_limit import process_cpu_limit


def fake_proc(tmp_path: Path, cgroup_lines: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "task").mkdir(parents=True)
    (proc / "task" / str(os.getpid())).mkdir()
    (proc / "cgroup").write_text(cgroup_lines)
    return proc


def test_cgroup_v2_writes_cpu_max_of_own_cgroup_and_restores_it(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "0::/system.slice/strongroom-agent.service\n")
    own = tmp_path / "cg" / "system.slice" / "strongroom-agent.service"
    own.mkdir(parents=True)
    (own / "cpu.max").write_text("max 100000\n")
    with process_cpu_limit(2, cgroup_root=tmp_path / "cg", proc_self=proc) as limit:
        assert (limit.method, limit.cores) == ("cgroup-v2", 2)
        assert (own / "cpu.max").read_text() == "200000 100000\n"
    assert (own / "cpu.max").read_text() == "max 100000\n"


def test_cgroup_v1_moves_process_into_child_with_quota_and_back(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "4:memory:/\n3:cpu,cpuacct:/jobs\n0::/\n")
    own = tmp_path / "cg" / "cpu,cpuacct" / "jobs"
    own.mkdir(parents=True)
    (own / "cgroup.procs").write_text("")
    with process_cpu_limit(2, cgroup_root=tmp_path / "cg", proc_self=proc) as limit:
        child = own / "strongroom-agent"
        assert limit.method == "cgroup-v1"
        assert (child / "cpu.cfs_quota_us").read_text() == "200000\n"
        assert (child / "cpu.shares").read_text() == "2048\n"  # weighed as two threads, not one
        assert (child / "cpu.cfs_period_us").read_text() == "100000\n"
        assert (child / "cgroup.procs").read_text() == f"{os.getpid()}\n"
    assert (child / "cpu.cfs_quota_us").read_text() == "-1\n"
    assert (own / "cgroup.procs").read_text() == f"{os.getpid()}\n"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_affinity_fallback_pins_every_thread_and_restores(tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text("0::/\n")
    real_tasks = Path("/proc/self/task")
    (proc / "task").symlink_to(real_tasks)
    with process_cpu_limit(1, cgroup_root=tmp_path / "none", proc_self=proc) as limit:
        assert limit.method == "affinity"
        assert os.sched_getaffinity(0) == {min(before)}
    assert os.sched_getaffinity(0) == before


def test_zero_cores_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one core"), process_cpu_limit(0):
        pass


ENFORCEMENT = textwrap.dedent(
    """
    import os, sys, threading, time, zstandard
    from strongroom_agent.cpu_limit import process_cpu_limit
    data = os.urandom(1 << 20) * 8
    def burn(until):
        c = zstandard.ZstdCompressor(level=3)
        while time.monotonic() < until:
            c.compress(data)   # releases the GIL: two threads could use two cores
    with process_cpu_limit(1) as limit:
        start_cpu, start = time.process_time(), time.monotonic()
        threads = [threading.Thread(target=burn, args=(start + 3,)) for _ in range(2)]
        [t.start() for t in threads]; [t.join() for t in threads]
        cores = (time.process_time() - start_cpu) / (time.monotonic() - start)
        member = open("/proc/self/cgroup").read()
    print(limit.method, f"{cores:.3f}", limit.detail)
    print(member)
    """
)


@pytest.mark.skipif(sys.platform != "linux" or os.cpu_count() == 1, reason="needs Linux with 2+ CPUs")
def test_one_core_limit_holds_for_two_busy_native_threads() -> None:
    result = subprocess.run([sys.executable, "-c", ENFORCEMENT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    first, membership = result.stdout.split("\n", 1)
    method, cores, detail = first.split(" ", 2)
    assert method in {"cgroup-v2", "cgroup-v1", "affinity"}
    assert float(cores) <= 1.1, (method, cores)
    if method == "cgroup-v1":  # the process really ran inside the quota'd child cgroup
        assert detail.endswith("/strongroom-agent")
        assert any(line.endswith("/strongroom-agent") for line in membership.splitlines() if ":cpu" in line)
