"""Which paths a backup skips: the seed's system directories, plus the agent's own state.

Seed, "Backed-up directories":

* Linux: /bin/, /usr/bin/, /sbin/, /boot/, /proc/, /sys/, /srv/, /lib/, /selinux/,
  /usr/sbin/, /run/, /lib32/, /lib64/ and /lost+found/ (absolute paths; a path is
  excluded when it is one of them or lies below one).
* Windows: all directories named Windows, python27, Program Files (x86),
  Program Files, ProgramData, Boot, $RECYCLE.BIN, System Volume Information
  (at any depth), and the files Users\\Administrator\\NTUSER.DAT,
  Users\\Administrator\\ntuser.dat.LOG1 and pagefile.sys (relative to a drive
  root). Windows matching ignores case and accepts both separators.
"""

from __future__ import annotations

import ntpath
import posixpath
from collections.abc import Iterable
from typing import Protocol

LINUX_EXCLUDED_DIRS: tuple[str, ...] = (
    "/bin",
    "/usr/bin",
    "/sbin",
    "/boot",
    "/proc",
    "/sys",
    "/srv",
    "/lib",
    "/selinux",
    "/usr/sbin",
    "/run",
    "/lib32",
    "/lib64",
    "/lost+found",
)

WINDOWS_EXCLUDED_DIR_NAMES: tuple[str, ...] = (
    "Windows",
    "python27",
    "Program Files (x86)",
    "Program Files",
    "ProgramData",
    "Boot",
    "$RECYCLE.BIN",
    "System Volume Information",
)

# Relative to the root of a drive.
WINDOWS_EXCLUDED_FILES: tuple[str, ...] = (
    "Users\\Administrator\\NTUSER.DAT",
    "pagefile.sys",
    "Users\\Administrator\\ntuser.dat.LOG1",
)


class Exclusions(Protocol):
    """Decides whether an absolute path is left out of a backup."""

    def excluded(self, path: str, *, is_dir: bool) -> bool: ...

    def may_exclude_below(self, directory: str) -> bool:
        """False only when no path strictly below ``directory`` (absolute, not itself excluded) is excluded.

        The scan asks once per directory and skips the per-child checks when
        the answer is False; True is always a correct (if slower) answer.
        """
        ...


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class LinuxExclusions:
    """The seed's Linux system directories plus ``extra_dirs`` (e.g. the agent's state dir)."""

    def __init__(self, extra_dirs: Iterable[str] = ()) -> None:
        dirs = [*LINUX_EXCLUDED_DIRS, *extra_dirs]
        self._dirs = tuple(posixpath.normpath(d) for d in dirs if d)

    @property
    def dirs(self) -> tuple[str, ...]:
        """The excluded directories, normalized (the native walk applies the same rules to them, ADR 0085)."""
        return self._dirs

    def excluded(self, path: str, *, is_dir: bool = True) -> bool:
        """``path`` must be absolute; ``is_dir`` does not matter on Linux (whole subtrees are excluded)."""
        normalized = posixpath.normpath(path)
        if normalized.startswith("//"):
            normalized = "/" + normalized.lstrip("/")
        return any(_under(normalized, d) for d in self._dirs)

    def may_exclude_below(self, directory: str) -> bool:
        """Whole subtrees are excluded: only a directory above an excluded one can hold excluded paths."""
        normalized = posixpath.normpath(directory)
        if normalized.startswith("//"):
            normalized = "/" + normalized.lstrip("/")
        prefix = normalized.rstrip("/") + "/"
        return any(d.startswith(prefix) for d in self._dirs)


def _windows_parts(path: str) -> tuple[str, list[str]]:
    """(drive, casefolded components below the drive root)."""
    drive, rest = ntpath.splitdrive(path.replace("/", "\\"))
    parts = [p.casefold() for p in rest.split("\\") if p and p != "."]
    return drive.casefold(), parts


class WindowsExclusions:
    """The seed's Windows rules plus ``extra_dirs`` (absolute paths, excluded with their contents)."""

    def __init__(self, extra_dirs: Iterable[str] = ()) -> None:
        self._dir_names = frozenset(n.casefold() for n in WINDOWS_EXCLUDED_DIR_NAMES)
        self._files = frozenset(tuple(f.casefold().split("\\")) for f in WINDOWS_EXCLUDED_FILES)
        self._extra = tuple(_windows_parts(d) for d in extra_dirs if d)

    def may_exclude_below(self, directory: str) -> bool:
        """Directory names are excluded at any depth: anything below may be."""
        return True

    def excluded(self, path: str, *, is_dir: bool) -> bool:
        drive, parts = _windows_parts(path)
        if not parts:
            return False
        # Every component but the last is a directory; the last only when is_dir.
        directories = parts if is_dir else parts[:-1]
        if any(part in self._dir_names for part in directories):
            return True
        if not is_dir and tuple(parts) in self._files:
            return True
        for extra_drive, extra_parts in self._extra:
            if drive == extra_drive and parts[: len(extra_parts)] == extra_parts:
                return True
        return False
