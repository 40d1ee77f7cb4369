"""Descriptor-relative filesystem operations below a restore's destination root.

Safety: an entry path must be relative, without ``.``/``..``/empty components
(``safe_parts``). Every directory on the way is opened with ``O_NOFOLLOW``
relative to its parent's descriptor, starting at the destination root, so no
symlink in the destination (pre-existing, or restored a moment ago) is ever
followed and nothing is written outside the root. A file whose name the
conflict check found free is created under its final name with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (which never follows or reuses anything that
appeared since) and unlinked again if anything fails before it is complete, so
no partial file stays. A file that replaces an existing one (OVERWRITE), or
whose name was taken after the check, is written to a temporary name in its
directory (also ``O_EXCL``) and renamed over the destination, which replaces
(never follows) whatever was there.

The agent keeps its own copy of the point-relative path rule on purpose: it
must not trust the server's checks.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import threading
from collections.abc import Callable, Sequence

from strongroom.common.v1 import common_pb2

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Temporary names: this process's id and a counter are unique among live restores (a name left by a
# crashed run is skipped by O_EXCL) and cost nothing, unlike a random name per file.
_temp_numbers = itertools.count()
_TEMP_ATTEMPTS = 100
_WRITEV_MAX = 1024  # IOV_MAX on Linux: pieces per writev call


def _temp_name() -> str:
    return f".strongroom-restore-{os.getpid()}-{next(_temp_numbers)}.tmp"


def _process_umask() -> int | None:
    """This process's umask without changing it (``os.umask`` can only be read by setting it); None if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def _open_temp(pfd: int) -> tuple[int, str]:
    """A new temporary file in the directory ``pfd`` (mode 0600) and its name."""
    for _ in range(_TEMP_ATTEMPTS):
        name = _temp_name()
        try:
            return os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=pfd), name
        except FileExistsError:
            continue  # left behind by an earlier process with the same id
    raise FileExistsError(errno.EEXIST, "no free temporary name", name)


class UnsafePath(ValueError):
    """An entry path that could escape the destination root."""


def safe_parts(path: str) -> list[str]:
    """The components of a point-relative path; UnsafePath for anything that is not plainly relative."""
    if path == "":
        return []
    if path.startswith("/") or "\x00" in path:
        raise UnsafePath(f"refusing unsafe path {path!r}")
    parts = path.split("/")
    if "" in parts or "." in parts or ".." in parts:
        raise UnsafePath(f"refusing unsafe path {path!r}")
    return parts


class EntryProblem(Exception):
    """A per-entry failure (the job becomes PARTIAL_COMPLETE)."""


class Destination:
    """Descriptor-relative operations below the destination root (run in threads, serialized)."""

    def __init__(self, root: str, *, as_root: bool) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.as_root = as_root
        self._umask = _process_umask()
        self._lock = threading.Lock()
        self._walker = DirWalker(self)  # the parents of the serialized operations below

    def _creation_mode(self, entry: common_pb2.FileEntry, owned: bool) -> int | None:
        """The mode to create a file in place with that needs no ``fchmod`` afterwards; None when one is needed.

        Only without set-id or sticky bits, without a chown (which would clear
        them anyway, so root chmods unless the file is ``owned`` already) and
        when the umask removes nothing.
        """
        mode = entry.mode & 0o7777
        if (self.as_root and not owned) or self._umask is None or mode & 0o7000 or mode & self._umask:
            return None
        return mode

    def new_file_owner(self, pfd: int) -> tuple[int, int] | None:
        """The owner a file created in the directory ``pfd`` gets, when it is sure; None when not known.

        The caller's effective ids, when the directory's group is the effective
        group: whether the directory passes its group on (set-gid bit, ``grpid``
        mount) or not, a new file then gets that group. Only for a directory
        nobody else can change meanwhile (one this restore created: root's, 0700).
        """
        egid = os.getegid()
        return (os.geteuid(), egid) if os.fstat(pfd).st_gid == egid else None

    def close(self) -> None:
        with self._lock:
            self._walker.close()
            os.close(self.root_fd)

    def open_child(self, fd: int, part: str, parts: Sequence[str], *, create: bool) -> int:
        """A new descriptor of the directory ``part`` in the directory ``fd`` (never through a symlink).

        ``create``: made (0755) when missing. ``parts``: the path it is on, for
        the error when ``part`` is not a directory (EntryProblem).
        """
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            return self.open_child(fd, part, parts, create=False)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise EntryProblem(
                    f"refusing to write through {'/'.join(parts)!r}: {part!r} is not a directory"
                ) from exc
            raise

    def parent(self, parts: list[str]) -> int:
        """Descriptor of the parent directory of ``parts`` (kept until the next call; creates missing directories)."""
        return self._walker.open(parts[:-1])

    def existing(self, parts: list[str]) -> os.stat_result | None:
        with self._lock:
            try:
                return os.stat(parts[-1], dir_fd=self.parent(parts), follow_symlinks=False)
            except FileNotFoundError:
                return None

    def make_dir(self, parts: list[str]) -> bool:
        """Create the directory; False when a directory was already there."""
        with self._lock:
            pfd = self.parent(parts)
            try:
                os.mkdir(parts[-1], 0o700, dir_fd=pfd)
                return True
            except FileExistsError:
                st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise EntryProblem("exists and is not a directory") from None
                return False

    def create_file(self, parts: list[str], *, fresh: bool, overwrite: bool) -> tuple[int, str | None] | None:
        """Open a file to stream into: ``(fd, temp)``, ``temp`` None when it is the final name itself.

        ``fresh`` (the check found the name free): created in place; if the
        name was taken since, SKIP gives None and OVERWRITE a temporary file.
        """
        with self._lock:
            pfd = self.parent(parts)
            if fresh:
                try:
                    return os.open(parts[-1], _NEW_FILE_FLAGS, 0o600, dir_fd=pfd), None
                except FileExistsError:
                    if not overwrite:
                        return None
            return _open_temp(pfd)

    @staticmethod
    def write(fd: int, data: Sequence[bytes | memoryview]) -> None:
        """Write ``data`` in order: one ``writev`` for all of it when the kernel takes it whole (the usual case)."""
        if not data:
            return
        if len(data) <= _WRITEV_MAX:
            written = os.writev(fd, data) if len(data) > 1 else os.write(fd, data[0])
            if written == sum(map(len, data)):
                return
        else:
            written = 0
        for piece in data:  # the rest, after a short write
            if written >= len(piece):
                written -= len(piece)
                continue
            view = memoryview(piece)[written:]
            written = 0
            while view:
                view = view[os.write(fd, view) :]

    def finish_file(self, parts: list[str], fd: int, temp: str | None, entry: common_pb2.FileEntry) -> None:
        """Apply the metadata, close ``fd`` and rename a temporary file into place (``temp`` None: in place)."""
        with self._lock:
            pfd = self.parent(parts)
            try:
                self._apply_metadata(fd, entry, chmod=True)
            finally:
                os.close(fd)
            if temp is not None:
                self._replace(pfd, temp, parts[-1])

    def _apply_metadata(self, fd: int, entry: common_pb2.FileEntry, *, chmod: bool, chown: bool = True) -> None:
        """Owner (as root, unless the file has it already), mode (unless created with it), mtime of a written file."""
        if self.as_root and chown:
            os.fchown(fd, entry.uid, entry.gid)  # before chmod: chown clears set-id bits
        if chmod:
            os.fchmod(fd, entry.mode & 0o7777)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    def _replace(self, pfd: int, temp: str, name: str) -> None:
        try:
            os.rename(temp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except OSError as exc:
            os.unlink(temp, dir_fd=pfd)
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise EntryProblem("a directory is in the way") from exc
            raise

    def discard_file(self, parts: list[str], fd: int, temp: str | None) -> None:
        """Close and unlink a file that ``create_file`` made (the final name itself when ``temp`` is None)."""
        with self._lock:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(parts[-1] if temp is None else temp, dir_fd=self.parent(parts))

    def make_symlink(self, parts: list[str], entry: common_pb2.FileEntry) -> None:
        with self._lock:
            pfd = self.parent(parts)
            temp = _temp_name()
            os.symlink(entry.link_target, temp, dir_fd=pfd)
            try:
                if self.as_root:
                    os.chown(temp, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
                with contextlib.suppress(NotImplementedError):
                    os.utime(temp, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=pfd, follow_symlinks=False)
            except BaseException:
                os.unlink(temp, dir_fd=pfd)
                raise
            self._replace(pfd, temp, parts[-1])

    def write_new(
        self,
        pfd: int,
        parts: list[str],
        entry: common_pb2.FileEntry,
        fill: Callable[[int], object],
        *,
        fresh: bool,
        overwrite: bool,
        owned: bool = False,
    ) -> bool:
        """Write a whole file into ``pfd`` with its metadata; False when SKIP leaves a name taken since the check.

        ``fill(fd)`` writes the content into the new file.

        ``fresh`` (the check found the name free): created under its final name
        (``O_EXCL``) and unlinked again on any failure. Otherwise, or when the
        name was taken meanwhile under OVERWRITE: a temporary file renamed over it.
        ``owned``: a file created in ``pfd`` gets the entry's owner and group
        already (``new_file_owner``), so root needs no ``fchown`` (nor, then,
        an ``fchmod`` when the mode can be given at creation).
        """
        name = parts[-1]
        if fresh:
            # Created with its final mode when that is exact (one system call less per file), else 0600.
            mode = self._creation_mode(entry, owned)
            try:
                fd = os.open(name, _NEW_FILE_FLAGS, 0o600 if mode is None else mode, dir_fd=pfd)
            except FileExistsError:
                if not overwrite:
                    return False
            else:
                self._fill(pfd, fd, name, entry, fill, chmod=mode is None, chown=not owned)
                return True
        fd, temp = _open_temp(pfd)
        self._fill(pfd, fd, temp, entry, fill, chmod=True, chown=not owned)
        self._replace(pfd, temp, name)
        return True

    def _fill(
        self,
        pfd: int,
        fd: int,
        name: str,
        entry: common_pb2.FileEntry,
        fill: Callable[[int], object],
        *,
        chmod: bool,
        chown: bool,
    ) -> None:
        """Fill, apply the metadata and close the new file ``name``; unlink it if any of that fails."""
        try:
            try:
                fill(fd)
                self._apply_metadata(fd, entry, chmod=chmod, chown=chown)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=pfd)
            raise

    def finish_dir(self, parts: list[str], entry: common_pb2.FileEntry) -> None:
        with self._lock:
            fd = self._walker.open(parts, create=False)  # the walker's: the next directory up is usually next
            if self.as_root:
                os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, entry.mode & 0o7777)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


class DirWalker:
    """Descriptors of the directories on the way from the root to the current one (one thread's).

    Moving to the next directory of a walk reopens only what differs: going
    into a subdirectory is one ``open``, to a sibling a ``close`` and an
    ``open``; each directory is opened relative to its parent's descriptor
    with ``O_NOFOLLOW`` exactly as ``Destination`` opens a path from the root
    (reopening every directory from the root whenever a writer moved on cost
    ~5% of the restore's CPU, ADR 0073).
    """

    def __init__(self, dest: Destination) -> None:
        self._dest = dest
        self._names: list[str] = []
        self._fds: list[int] = []

    def open(self, parts: list[str], *, create: bool = True) -> int:
        """The descriptor of the directory ``parts`` (the root when empty), valid until the walker moves on.

        ``create``: missing directories are made (0755). EntryProblem when one
        on the way is not a directory (a symlink among them).
        """
        names, fds = self._names, self._fds
        depth = len(parts)
        if depth == len(names) and names == parts:
            return fds[-1] if fds else self._dest.root_fd
        same = 0
        for mine, theirs in zip(names, parts, strict=False):
            if mine != theirs:
                break
            same += 1
        self._pop(same)
        for part in parts[same:]:
            fds.append(self._dest.open_child(fds[-1] if fds else self._dest.root_fd, part, parts, create=create))
            names.append(part)
        return fds[-1] if fds else self._dest.root_fd

    def _pop(self, depth: int) -> None:
        while len(self._fds) > depth:
            self._names.pop()
            os.close(self._fds.pop())

    def close(self) -> None:
        """Close every descriptor the walker holds."""
        self._pop(0)
