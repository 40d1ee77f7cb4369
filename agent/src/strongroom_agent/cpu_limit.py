"""Process-wide CPU quota for a backup job: the job command's ``max_cores`` (the gateway maps priority to it).

The worker pool already has ``cores`` threads, but the event loop thread and
gRPC's threads also burn CPU, so the limit must cover the whole process. In
order of preference:

1. cgroup v2: ``cpu.max`` of the agent's own cgroup (the agent runs as its own
   service unit, so that cgroup is the agent);
2. cgroup v1: a child cgroup ``strongroom-agent`` of the agent's ``cpu``
   cgroup with ``cpu.cfs_quota_us``, the agent process moved into it;
3. CPU affinity of every thread of the process to ``cores`` CPUs (threads
   created later inherit it);
4. nothing (not Linux, no permission) — reported, never fatal.

The limit is lifted when the job ends (quota removed, affinity restored).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SHARES_PER_CORE = 1024  # cgroup v1's weight of one nice-0 task
PERIOD_US = 100_000
V1_CHILD = "strongroom-agent"


@dataclass(frozen=True, slots=True)
class CpuLimit:
    """How a job's CPU limit was applied: ``method`` is cgroup-v2, cgroup-v1, affinity or none."""

    cores: int
    method: str
    detail: str


@dataclass(frozen=True, slots=True)
class _Undo:
    path: Path | None = None
    value: str = ""
    move_back_to: Path | None = None
    affinity: frozenset[int] | None = None


def _own_cgroups(proc_self: Path) -> dict[str, str]:
    """Controller list -> cgroup path, from /proc/self/cgroup ('' is the v2 unified entry)."""
    cgroups: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in (proc_self / "cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            cgroups[controllers] = path
    return cgroups


def _try_cgroup_v2(cores: int, cgroup_root: Path, cgroups: dict[str, str]) -> tuple[CpuLimit, _Undo] | None:
    path = cgroups.get("")
    if path is None:
        return None
    for base in (cgroup_root, cgroup_root / "unified"):
        cpu_max = base / path.lstrip("/") / "cpu.max"
        if not cpu_max.is_file():
            continue
        try:
            previous = cpu_max.read_text().strip()
            cpu_max.write_text(f"{cores * PERIOD_US} {PERIOD_US}\n")
        except OSError:
            return None
        return CpuLimit(cores, "cgroup-v2", str(cpu_max)), _Undo(path=cpu_max, value=previous)
    return None


def _try_cgroup_v1(cores: int, cgroup_root: Path, cgroups: dict[str, str], pid: int) -> tuple[CpuLimit, _Undo] | None:
    for controllers, path in cgroups.items():
        names = controllers.split(",")
        if "cpu" not in names:
            continue
        for mount in (cgroup_root / "cpu", cgroup_root / ",".join(names), cgroup_root / "cpu,cpuacct"):
            own = mount / path.lstrip("/")
            if not (own / "cgroup.procs").is_file():
                continue
            child = own if own.name == V1_CHILD else own / V1_CHILD
            try:
                child.mkdir(exist_ok=True)
                (child / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
                (child / "cpu.cfs_quota_us").write_text(f"{cores * PERIOD_US}\n")
                # In cgroup v1 the child competes with each task of its parent as ONE task of weight
                # cpu.shares (default 1024): a busy neighbour with many threads starved the whole
                # agent. Weigh it as the ``cores`` threads it may run.
                (child / "cpu.shares").write_text(f"{cores * SHARES_PER_CORE}\n")
                (child / "cgroup.procs").write_text(f"{pid}\n")
            except OSError:
                return None
            undo = _Undo(path=child / "cpu.cfs_quota_us", value="-1", move_back_to=None if own == child else own)
            return CpuLimit(cores, "cgroup-v1", str(child)), undo
    return None


def _thread_ids(proc_self: Path) -> list[int]:
    try:
        return [int(name) for name in os.listdir(proc_self / "task")]
    except OSError:
        return [0]


def _try_affinity(cores: int, proc_self: Path) -> tuple[CpuLimit, _Undo] | None:
    getaffinity = getattr(os, "sched_getaffinity", None)
    setaffinity = getattr(os, "sched_setaffinity", None)
    if getaffinity is None or setaffinity is None:
        return None
    allowed = frozenset(getaffinity(0))
    chosen = frozenset(sorted(allowed)[:cores])
    try:
        for tid in _thread_ids(proc_self):
            with contextlib.suppress(ProcessLookupError):  # a thread may end meanwhile
                setaffinity(tid, chosen)
    except OSError:
        return None
    return CpuLimit(cores, "affinity", ",".join(map(str, sorted(chosen)))), _Undo(affinity=allowed)


def _release(undo: _Undo, pid: int, proc_self: Path) -> None:
    try:
        if undo.path is not None:
            undo.path.write_text(f"{undo.value}\n")
        if undo.move_back_to is not None:
            (undo.move_back_to / "cgroup.procs").write_text(f"{pid}\n")
        if undo.affinity is not None:
            for tid in _thread_ids(proc_self):
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(tid, undo.affinity)
    except OSError as exc:
        log.warning("could not lift the CPU limit: %s", exc)


@contextlib.contextmanager
def process_cpu_limit(
    cores: int, *, cgroup_root: Path = Path("/sys/fs/cgroup"), proc_self: Path = Path("/proc/self")
) -> Iterator[CpuLimit]:
    """Limit this process to ``cores`` CPUs for the duration of the ``with`` block."""
    if cores < 1:
        raise ValueError("a CPU limit needs at least one core")
    pid = os.getpid()
    cgroups = _own_cgroups(proc_self)
    applied = (
        _try_cgroup_v2(cores, cgroup_root, cgroups)
        or _try_cgroup_v1(cores, cgroup_root, cgroups, pid)
        or _try_affinity(cores, proc_self)
    )
    if applied is None:
        limit = CpuLimit(cores, "none", "no cgroup or affinity control available")
        log.warning("CPU limit of %d core(s) not enforced: %s", cores, limit.detail)
        yield limit
        return
    limit, undo = applied
    log.info("CPU limit %d core(s) via %s (%s)", cores, limit.method, limit.detail)
    try:
        yield limit
    finally:
        _release(undo, pid, proc_self)
