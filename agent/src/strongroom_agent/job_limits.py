"""A backup job's CPU and read-bandwidth limits, enforced by systemd where it runs the agent (ADR 0045).

Under systemd (PID 1 is systemd and the agent is a unit's process: ``INVOCATION_ID`` set, its
cgroup names a ``.service``) the job's limits are set on the agent's own unit for the job's
duration with ``systemctl set-property --runtime UNIT CPUQuota=... IOReadBandwidthMax=...`` and
reset afterwards: systemd owns the cgroup tree and would undo hand-made changes. The job runs in
the agent's process (worker threads, ADR 0034), so the unit is the process's cgroup; a scope of its
own per job needs a job process of its own (ADR 0045's plan).

Elsewhere (a container, a chroot, another init) the agent's own mechanisms apply: the process CPU
limit of :mod:`strongroom_agent.cpu_limit` and the read throttle of the job (always on).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from strongroom_agent.cpu_limit import process_cpu_limit

log = logging.getLogger(__name__)

SYSTEMD_RUN_DIR = Path("/run/systemd/system")
SYSTEMCTL_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class JobLimits:
    """What a job may use: ``cores`` CPUs and ``read_bytes_per_second`` (0: unlimited) from each of ``paths``."""

    cores: int
    read_bytes_per_second: int
    paths: tuple[str, ...]


def systemd_unit(
    environ: Mapping[str, str], *, proc_self: Path = Path("/proc/self"), systemd_run_dir: Path = SYSTEMD_RUN_DIR
) -> str | None:
    """The service unit this process runs as when systemd is PID 1 and started it, else None."""
    if not systemd_run_dir.is_dir() or not environ.get("INVOCATION_ID"):
        return None
    try:
        lines = (proc_self / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        # The unified entry (v2) or systemd's named hierarchy (v1) carry the unit's path.
        if controllers in ("", "name=systemd"):
            unit = path.rstrip("/").rpartition("/")[2]
            if unit.endswith(".service"):
                return unit
    return None


def set_property_argv(unit: str, limits: JobLimits) -> list[list[str]]:
    """The ``systemctl`` commands that apply ``limits`` to ``unit`` until reset (runtime only): the CPU
    quota, then the read bandwidth per path (apart: a path without a block device, tmpfs for
    instance, fails that call alone)."""
    base = ["systemctl", "set-property", "--runtime", "--", unit]
    commands = [[*base, f"CPUQuota={limits.cores * 100}%"]]
    if limits.read_bytes_per_second > 0 and limits.paths:
        # A path of a file system stands for its backing block device (systemd.resource-control(5)).
        commands.append([*base, *(f"IOReadBandwidthMax={p} {limits.read_bytes_per_second}" for p in limits.paths)])
    return commands


def reset_argv(unit: str) -> list[str]:
    """The ``systemctl`` command that lifts every limit :func:`set_property_argv` set (empty values reset)."""
    return ["systemctl", "set-property", "--runtime", "--", unit, "CPUQuota=", "IOReadBandwidthMax="]


Runner = Callable[[Sequence[str]], None]


def _systemctl(argv: Sequence[str]) -> None:
    executable = shutil.which(argv[0])
    if executable is None:
        raise OSError(f"{argv[0]} not found")
    subprocess.run(
        [executable, *argv[1:]],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=SYSTEMCTL_TIMEOUT_SECONDS,
    )


@contextlib.contextmanager
def job_limits(
    limits: JobLimits, *, environ: Mapping[str, str] = os.environ, run: Runner = _systemctl, unit: str | None = None
) -> Iterator[str]:
    """Enforce ``limits`` for the ``with`` block; yields how (``systemd <unit>`` or the cpu_limit method).

    ``unit`` overrides the detection (tests). A failing ``systemctl`` falls back to the process
    CPU limit, logged; never fatal.
    """
    unit = unit or systemd_unit(environ)
    if unit is not None:
        cpu, *io = set_property_argv(unit, limits)
        try:
            run(cpu)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("systemctl set-property on %s failed (%s); limiting the process itself", unit, exc)
        else:
            read_limit = "no read limit"
            for command in io:
                try:
                    run(command)
                    read_limit = f"{limits.read_bytes_per_second} B/s read per device"
                except (OSError, subprocess.SubprocessError) as exc:
                    read_limit = f"read limit not set by systemd ({exc}); the job's own throttle applies"
            log.info("job limits via systemd %s: %d core(s), %s", unit, limits.cores, read_limit)
            try:
                yield f"systemd {unit}"
            finally:
                try:
                    run(reset_argv(unit))
                except (OSError, subprocess.SubprocessError) as exc:
                    log.warning("could not lift the job limits on %s: %s", unit, exc)
            return
    with process_cpu_limit(limits.cores) as applied:
        yield applied.method
