"""A job's limits: the systemctl commands under systemd, the agent's own CPU limit elsewhere (ADR 0045).

Enforcement by systemd is not tested on this machine (PID 1 is not systemd, cgroups are v1): these
tests pin the commands the agent runs and the choice between the two paths.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from strongroom_agent import job_limits as job_limits_module
from strongroom_agent.cpu_limit import CpuLimit
from strongroom_agent.job_limits import JobLimits, job_limits, reset_argv, set_property_argv, systemd_unit

UNIT = "strongroom-agent.service"


def fake_proc(tmp_path: Path, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "cgroup").write_text(cgroup)
    return proc


def test_the_commands_for_a_job() -> None:
    limits = JobLimits(cores=2, read_bytes_per_second=50_000_000, paths=("/", "/srv/data"))
    assert set_property_argv(UNIT, limits) == [
        ["systemctl", "set-property", "--runtime", "--", UNIT, "CPUQuota=200%"],
        [
            "systemctl",
            "set-property",
            "--runtime",
            "--",
            UNIT,
            "IOReadBandwidthMax=/ 50000000",
            "IOReadBandwidthMax=/srv/data 50000000",
        ],
    ]
    assert reset_argv(UNIT) == [
        "systemctl",
        "set-property",
        "--runtime",
        "--",
        UNIT,
        "CPUQuota=",
        "IOReadBandwidthMax=",
    ]


def test_no_read_limit_sets_the_cpu_quota_only() -> None:
    assert set_property_argv(UNIT, JobLimits(1, 0, ("/",))) == [
        ["systemctl", "set-property", "--runtime", "--", UNIT, "CPUQuota=100%"]
    ]


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        ("0::/system.slice/strongroom-agent.service\n", UNIT),
        ("12:cpu,cpuacct:/system.slice/x.service\n1:name=systemd:/system.slice/strongroom-agent.service\n", UNIT),
        ("0::/user.slice/user-0.slice/session-3.scope\n", None),
    ],
)
def test_the_unit_is_read_from_the_cgroup(tmp_path: Path, cgroup: str, expected: str | None) -> None:
    systemd = tmp_path / "systemd"
    systemd.mkdir()
    proc = fake_proc(tmp_path, cgroup)
    found = systemd_unit({"INVOCATION_ID": "abc"}, proc_self=proc, systemd_run_dir=systemd)
    assert found == expected


def test_not_under_systemd(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "0::/system.slice/strongroom-agent.service\n")
    # No /run/systemd/system (PID 1 is something else), or not started by systemd (no INVOCATION_ID).
    assert systemd_unit({"INVOCATION_ID": "abc"}, proc_self=proc, systemd_run_dir=tmp_path / "none") is None
    (tmp_path / "systemd").mkdir()
    assert systemd_unit({}, proc_self=proc, systemd_run_dir=tmp_path / "systemd") is None


def test_limits_are_set_for_the_job_and_lifted_after() -> None:
    ran: list[Sequence[str]] = []
    limits = JobLimits(cores=3, read_bytes_per_second=1000, paths=("/",))
    with job_limits(limits, run=ran.append, unit=UNIT) as how:
        assert how == f"systemd {UNIT}"
        assert ran == set_property_argv(UNIT, limits)
    assert ran[-1] == reset_argv(UNIT)


def test_a_failing_read_limit_keeps_the_cpu_quota() -> None:
    ran: list[Sequence[str]] = []

    def run(argv: Sequence[str]) -> None:
        if any(a.startswith("IOReadBandwidthMax=/") for a in argv):
            raise subprocess.CalledProcessError(1, list(argv))
        ran.append(argv)

    with job_limits(JobLimits(1, 1000, ("/tmp",)), run=run, unit=UNIT) as how:
        assert how == f"systemd {UNIT}"
    assert ran == [set_property_argv(UNIT, JobLimits(1, 0, ()))[0], reset_argv(UNIT)]


@pytest.fixture
def process_limits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the process CPU limits taken instead of changing this test process's cgroups."""
    taken: list[int] = []

    @contextlib.contextmanager
    def fake(cores: int) -> Iterator[CpuLimit]:
        taken.append(cores)
        yield CpuLimit(cores, "affinity", "0")

    monkeypatch.setattr(job_limits_module, "process_cpu_limit", fake)
    return taken


def test_without_systemd_the_process_limit_applies(process_limits: list[int]) -> None:
    def never(argv: Sequence[str]) -> None:
        raise AssertionError(f"ran {argv}")

    with job_limits(JobLimits(2, 0, ("/",)), environ={}, run=never) as how:
        assert how == "affinity"
    assert process_limits == [2]


def test_a_failing_systemctl_falls_back_to_the_process_limit(process_limits: list[int]) -> None:
    def broken(argv: Sequence[str]) -> None:
        raise FileNotFoundError("systemctl")

    with job_limits(JobLimits(1, 0, ("/",)), run=broken, unit=UNIT) as how:
        assert how == "affinity"
    assert process_limits == [1]
