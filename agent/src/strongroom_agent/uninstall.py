"""What "uninstall" means on this host when backup of the instance is canceled (ADR 0040, 0045).

The agent always removes its state directory itself. Installed from the strongroom-agent package
(the package ships a ``PACKAGE`` marker beside ``lib/``), it also removes the package through the
package manager that installed it (``dpkg --purge`` or ``rpm -e``): the unit, the files and,
through the package's maintainer scripts, whatever is left of the state.

The removal must outlive the agent: the package's pre-removal script stops the agent's unit, which
would kill a child of the unit with it. Under systemd the removal therefore runs as its own
transient service (``systemd-run``); elsewhere (a chroot, a container) as a detached process that
waits for the agent to exit first.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE_MARKER = "PACKAGE"
DPKG_INFO_DIR = Path("/var/lib/dpkg/info")
SYSTEMD_RUN_DIR = Path("/run/systemd/system")
_PACKAGE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+-.")
# $0 is the agent's pid: wait until it exited, then run the removal ("$@").
_WAIT_THEN_RUN = 'while kill -0 "$0" 2>/dev/null; do sleep 0.2; done; exec "$@"'


@dataclass(frozen=True, slots=True)
class Removal:
    """How the agent's package is removed: ``command`` (the package manager's), run as ``argv`` (which
    wraps it so it outlives the agent), started ``detached`` or waited for."""

    package: str
    command: tuple[str, ...]
    argv: tuple[str, ...]
    detached: bool


def install_dir() -> Path:
    """The directory the agent runs from: ``/opt/strongroom/agent`` for the package (``lib/strongroom_agent``)."""
    return Path(__file__).resolve().parents[2]


def installed_package(directory: Path) -> str | None:
    """The package name in the directory's marker, or None when the agent was not installed by a package."""
    try:
        name = (directory / PACKAGE_MARKER).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not name or not set(name) <= _PACKAGE_NAME_CHARS:
        log.warning("ignoring the package marker in %s: %r is not a package name", directory, name)
        return None
    return name


def plan_removal(
    package: str,
    *,
    pid: int,
    which: Callable[[str], str | None] = shutil.which,
    dpkg_info_dir: Path = DPKG_INFO_DIR,
    systemd_run_dir: Path = SYSTEMD_RUN_DIR,
) -> Removal | None:
    """How to remove ``package`` on this host; None when no package manager here knows it."""
    remove: tuple[str, ...]
    if which("dpkg") and (dpkg_info_dir / f"{package}.list").is_file():
        remove = ("dpkg", "--purge", package)
    elif which("rpm"):
        remove = ("rpm", "-e", package)
    else:
        return None
    if systemd_run_dir.is_dir() and which("systemd-run"):
        unit = f"{package}-uninstall"
        argv = ("systemd-run", f"--unit={unit}", "--collect", "--quiet", "--description=Remove the Strongroom agent")
        return Removal(package, remove, (*argv, "--", *remove), detached=False)
    return Removal(package, remove, ("sh", "-c", _WAIT_THEN_RUN, str(pid), *remove), detached=True)


def start_removal(removal: Removal, *, popen: Callable[..., object] = subprocess.Popen) -> None:
    """Start the removal; it continues after this process exits."""
    if removal.detached:
        popen(list(removal.argv), start_new_session=True, stdin=subprocess.DEVNULL, close_fds=True)
    else:
        subprocess.run(list(removal.argv), check=True, stdin=subprocess.DEVNULL, timeout=60)


def uninstall_package(directory: Path | None = None) -> str:
    """Start removing the agent's package if it was installed from one; say what happened."""
    directory = directory or install_dir()
    package = installed_package(directory)
    if package is None:
        return "not installed from a package: nothing else to remove"
    removal = plan_removal(package, pid=os.getpid())
    if removal is None:
        return f"installed from package {package}, but no package manager here knows it; remove {directory} by hand"
    try:
        start_removal(removal)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not start removing package {package} ({exc}); remove it by hand"
    return f"removing package {package}: {' '.join(removal.command)}"
