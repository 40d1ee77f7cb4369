"""The backup's scan: the points of a job, and the walk of one point's tree in manifest order.

Ordering: the gateway wants the entries of a point sorted by the UTF-8 bytes
of their paths. Within a directory, children are visited by name, and the
subtree of a child directory ``d`` is visited where the string ``d/`` sorts
among its siblings (so ``a``, ``a-c``, ``a/b`` come out in that order). Files
are read concurrently later on, but their entries are emitted in scan order
(``point.py``). The walk stays on the point's filesystem and leaves out
sockets, devices, FIFOs and what the exclusions drop. The walk itself, in
worker-thread steps compared with the cache, is ``compare.TreeCompare``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from strongroom.common.v1 import common_pb2

from strongroom_agent.exclusions import Exclusions
from strongroom_agent.jobs import FileError, reason


def plan_points(
    roots: Sequence[str],
    *,
    discover: Callable[[], list[common_pb2.Filesystem]],
    describe_root: Callable[[str], common_pb2.Filesystem],
) -> tuple[list[common_pb2.Filesystem], list[FileError]]:
    """The points of a job: each explicit root, or every discovered block-storage filesystem.

    Roots that are not absolute existing directories (or lie on network
    storage) are reported as errors instead of points.
    """
    if not roots:
        return discover(), []
    points: list[common_pb2.Filesystem] = []
    errors: list[FileError] = []
    for root in roots:
        if not os.path.isabs(root):
            errors.append(FileError(root, "backup root must be an absolute path"))
            continue
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            errors.append(FileError(root, "backup root is not an existing directory"))
            continue
        try:
            points.append(describe_root(real))
        except ValueError as exc:
            errors.append(FileError(root, str(exc)))
    return points, errors


@dataclass
class ScanItem:
    rel: str  # point-relative, '/'-separated, "" for the point root
    path: str  # absolute host path
    st: os.stat_result
    link_target: str = ""


@dataclass
class _Listing:
    # (sort key, descend?, item): descend items stand for a child directory's subtree.
    items: list[tuple[bytes, bool, ScanItem]] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _list_dir(path: str, rel: str, device: int, exclusions: Exclusions) -> _Listing:
    """List one directory (runs in a thread): lstat each child, drop excluded, foreign-device and special files."""
    listing = _Listing()
    try:
        with os.scandir(path) as entries:
            children = list(entries)
    except OSError as exc:
        listing.errors.append(FileError(path, f"cannot list directory: {reason(exc)}"))
        return listing
    check_exclusions = exclusions.may_exclude_below(path)
    for child in children:
        child_path = child.path
        try:
            name_bytes = child.name.encode("utf-8")
        except UnicodeEncodeError:
            listing.errors.append(FileError(child_path, "name is not valid UTF-8"))
            continue
        try:
            st = child.stat(follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # vanished since listing: nothing to back up
                listing.errors.append(FileError(child_path, reason(exc)))
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if not (is_dir or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            continue  # sockets, devices, FIFOs
        if st.st_dev != device or (check_exclusions and exclusions.excluded(child_path, is_dir=is_dir)):
            continue  # another filesystem (its own point) or excluded by policy
        item = ScanItem(_join(rel, child.name), child_path, st)
        if stat.S_ISLNK(st.st_mode):
            try:
                item.link_target = os.readlink(child_path)
                item.link_target.encode("utf-8")
            except OSError as exc:
                listing.errors.append(FileError(child_path, reason(exc)))
                continue
            except UnicodeEncodeError:
                listing.errors.append(FileError(child_path, "symlink target is not valid UTF-8"))
                continue
        listing.items.append((name_bytes, False, item))
        if is_dir:
            listing.items.append((name_bytes + b"/", True, item))
    listing.items.sort(key=lambda t: t[0])
    return listing


class _Level:
    """One directory of the walk: its sorted listing and the walk's position in it."""

    __slots__ = ("items", "next")

    def __init__(self, items: list[tuple[bytes, bool, ScanItem]]) -> None:
        self.items = items
        self.next = 0  # next item the walk settles or descends into


def file_entry(item: ScanItem, st: os.stat_result | None = None) -> common_pb2.FileEntry:
    """The manifest entry of a scanned item, from ``st`` (a fresher stat) or the scan's own."""
    st = st or item.st
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        kind, size = common_pb2.ENTRY_TYPE_DIRECTORY, 0
    elif stat.S_ISLNK(mode):
        kind, size = common_pb2.ENTRY_TYPE_SYMLINK, 0
    else:
        kind, size = common_pb2.ENTRY_TYPE_FILE, st.st_size
    return common_pb2.FileEntry(
        path=item.rel,
        type=kind,
        mode=stat.S_IMODE(mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=size,
        mtime_ns=st.st_mtime_ns,
        link_target=item.link_target,
    )
