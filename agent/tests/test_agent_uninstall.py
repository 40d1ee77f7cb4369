"""The self-uninstall of a packaged agent (ADR 0045): which command, and that it outlives the agent."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from strongroom_agent.uninstall import (
    Removal,
    install_dir,
    installed_package,
    plan_removal,
    start_removal,
    uninstall_package,
)


def tools(*present: str):  # type: ignore[no-untyped-def]
    return lambda name: f"/usr/bin/{name}" if name in present else None


def test_the_marker_names_the_package(tmp_path: Path) -> None:
    assert installed_package(tmp_path) is None
    (tmp_path / "PACKAGE").write_text("strongroom-agent\n")
    assert installed_package(tmp_path) == "strongroom-agent"
    (tmp_path / "PACKAGE").write_text("strongroom-agent; rm -rf /\n")
    assert installed_package(tmp_path) is None


def test_the_development_checkout_is_not_a_package() -> None:
    assert installed_package(install_dir()) is None
    assert uninstall_package() == "not installed from a package: nothing else to remove"


def test_dpkg_purge_runs_detached_without_systemd(tmp_path: Path) -> None:
    info = tmp_path / "info"
    info.mkdir()
    (info / "strongroom-agent.list").write_text("/opt/strongroom/agent\n")
    removal = plan_removal(
        "strongroom-agent", pid=4242, which=tools("dpkg", "rpm"), dpkg_info_dir=info, systemd_run_dir=tmp_path / "no"
    )
    assert removal is not None
    assert removal.command == ("dpkg", "--purge", "strongroom-agent")
    assert removal.detached
    assert removal.argv[:2] == ("sh", "-c") and removal.argv[3:] == ("4242", "dpkg", "--purge", "strongroom-agent")


def test_rpm_erase_in_a_transient_unit_under_systemd(tmp_path: Path) -> None:
    systemd = tmp_path / "systemd"
    systemd.mkdir()
    removal = plan_removal(
        "strongroom-agent",
        pid=1,
        which=tools("rpm", "systemd-run"),
        dpkg_info_dir=tmp_path,
        systemd_run_dir=systemd,
    )
    assert removal == Removal(
        "strongroom-agent",
        ("rpm", "-e", "strongroom-agent"),
        (
            "systemd-run",
            "--unit=strongroom-agent-uninstall",
            "--collect",
            "--quiet",
            "--description=Remove the Strongroom agent",
            "--",
            "rpm",
            "-e",
            "strongroom-agent",
        ),
        detached=False,
    )


def test_no_package_manager_knows_it(tmp_path: Path) -> None:
    assert plan_removal("strongroom-agent", pid=1, which=tools("dpkg"), dpkg_info_dir=tmp_path) is None


@pytest.mark.skipif(sys.platform != "linux", reason="uses sh and kill -0")
def test_the_detached_removal_waits_for_the_agent_to_exit(tmp_path: Path) -> None:
    """The wrapper really waits for the pid to go away, then runs the command (a stand-in for dpkg)."""
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])
    done = tmp_path / "done"
    removal = plan_removal("strongroom-agent", pid=agent.pid, which=tools("rpm"), systemd_run_dir=tmp_path / "no")
    assert removal is not None
    stand_in = Removal(removal.package, ("touch",), (*removal.argv[:4], "touch", str(done)), detached=True)
    started: list[subprocess.Popen[bytes]] = []
    start_removal(stand_in, popen=lambda argv, **kw: started.append(subprocess.Popen(argv, **kw)))
    time.sleep(0.5)
    assert not done.exists(), "ran before the agent exited"
    agent.wait()
    deadline = time.monotonic() + 10
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done.exists()
    assert started[0].wait(timeout=10) == 0
