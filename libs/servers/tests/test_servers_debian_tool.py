"""``debian_tool``: a tool the image and package builds need is installed with apt-get when missing."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from strongroom_servers import PrerequisiteMissing
from strongroom_servers import _process as process
from strongroom_servers._process import debian_tool


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only an ``apt-get`` (never run: the tests pass their own ``run``)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    _executable(directory / "apt-get")
    monkeypatch.setenv("PATH", str(directory))
    monkeypatch.setattr(process.os, "geteuid", lambda: 0)
    return directory


def _executable(path: Path) -> None:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


class AptGet:
    """Records apt-get calls; ``installs_after`` is the install call (1-based) that puts the tool on PATH."""

    def __init__(self, tool: Path, installs_after: int | None) -> None:
        self.tool, self.installs_after = tool, installs_after
        self.calls: list[str] = []
        self.installs = 0

    def __call__(self, argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv[argv.index("install") if "install" in argv else -1])
        if "install" not in argv:
            return subprocess.CompletedProcess(argv, 0, "", "")
        self.installs += 1
        if self.installs == self.installs_after:
            _executable(self.tool)
            return subprocess.CompletedProcess(argv, 0, "", "")
        return subprocess.CompletedProcess(argv, 100, "", "E: Unable to locate package umoci")


def test_a_tool_on_path_is_used_as_it_is(bin_dir: Path) -> None:
    _executable(bin_dir / "umoci")
    apt = AptGet(bin_dir / "umoci", installs_after=None)
    assert debian_tool("umoci", "umoci", run=apt) == str(bin_dir / "umoci")
    assert apt.calls == []


def test_a_missing_tool_is_installed_refreshing_the_lists_once(bin_dir: Path) -> None:
    apt = AptGet(bin_dir / "umoci", installs_after=2)
    assert debian_tool("umoci", "umoci", run=apt) == str(bin_dir / "umoci")
    assert apt.calls == ["install", "update", "install"]


def test_an_install_that_fails_says_why(bin_dir: Path) -> None:
    apt = AptGet(bin_dir / "umoci", installs_after=None)
    with pytest.raises(PrerequisiteMissing, match="apt-get install umoci failed: E: Unable to locate package umoci"):
        debian_tool("umoci", "umoci", run=apt)


def test_without_root_nothing_is_installed(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process.os, "geteuid", lambda: 1000)
    apt = AptGet(bin_dir / "umoci", installs_after=1)
    with pytest.raises(PrerequisiteMissing, match=r"apt-get install umoci\)"):
        debian_tool("umoci", "umoci", run=apt)
    assert apt.calls == []
