"""Filesystem adapter of the :class:`~strongroom_platform.objectstore.ObjectStore` port (standalone mode).

Layout under ``root``: key ``a/b/c`` is the file ``a.d/b.d/c.obj``, its
retention the sidecar ``a.d/b.d/c.lock.json`` (``{"retain_until": ISO-8601}``).
Directory names always end in ``.d`` and object files in ``.obj``, so keys
``a`` and ``a/b`` can coexist (a file and a directory never share a name) and
the mapping is reversible for :meth:`FilesystemObjectStore.list`. Temporary
files end in ``.tmp`` and are never listed.

Versions: every put writes the bytes once, as ``a.d/b.d/c.versions/<id>.obj``
(with its own lock sidecar ``<id>.lock.json``), and then hard-links that file
over ``c.obj``, the current version. The id is 32 random hex digits. A later
put only moves the ``c.obj`` link, so reading by version id returns the bytes
that version was written with; objects written before versions existed have
only ``c.obj`` and are read without an id. ``.versions`` directories do not end
in ``.d`` and are never listed.

Writes are atomic: a temporary file in the target directory is written,
fsynced and renamed over the target, then the directory is fsynced. The
sidecar is written before the data, so a crash in between leaves a lock
without new data rather than new data without its lock.

Retention is enforced by this adapter (there is no WORM filesystem
underneath): delete and overwrite are refused while the sidecar's date is
after ``clock.now()``. As a second line of defence locked data files are made
read-only (``chmod a-w``), which stops accidental writes by other tools.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import json
import os
import re
import secrets
import shutil
import stat as stat_mod
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from strongroom_platform.clock import Clock
from strongroom_platform.objectstore import ObjectInfo, ObjectLocked, ObjectNotFound, ObjectVersion
from strongroom_platform.threads import WorkerThreads

__all__ = ["FilesystemObjectStore", "key_to_parts"]

T = TypeVar("T")

_DIR_SUFFIX = ".d"
_OBJ_SUFFIX = ".obj"
_LOCK_SUFFIX = ".lock.json"
_TMP_SUFFIX = ".tmp"
_VERSIONS_SUFFIX = ".versions"
_VERSION_ID = re.compile(r"[0-9a-f]{32}")
# Leaves room for the suffixes within the usual 255-byte file name limit.
_MAX_SEGMENT = 200


def key_to_parts(key: str) -> list[str]:
    """Split and validate a key; raises ValueError naming the problem.

    A key is non-empty printable ASCII, '/'-separated, with no leading or
    trailing '/', no empty segment and no '.' or '..' segment.
    """
    if not key:
        raise ValueError("object key must not be empty")
    if not all(" " <= ch <= "~" for ch in key):
        raise ValueError(f"object key {key!r} must be printable ASCII")
    if key.startswith("/"):
        raise ValueError(f"object key {key!r} must not be absolute (leading '/')")
    parts = key.split("/")
    for part in parts:
        if part == "":
            raise ValueError(f"object key {key!r} has an empty segment")
        if part in {".", ".."}:
            raise ValueError(f"object key {key!r} must not contain '.' or '..' segments")
        if len(part) > _MAX_SEGMENT:
            raise ValueError(f"object key {key!r} has a segment longer than {_MAX_SEGMENT} characters")
    return parts


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_over(source: Path, target: Path) -> None:
    """Make ``target`` another name of ``source``'s file, atomically (link to a temporary name, rename)."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
    os.link(source, tmp)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _atomic_write(target: Path, data: bytes, *, read_only: bool) -> None:
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if read_only:
            os.chmod(tmp, stat_mod.S_IRUSR | stat_mod.S_IRGRP | stat_mod.S_IROTH)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


class FilesystemObjectStore:
    """ObjectStore in a local directory, with adapter-enforced retention.

    Args:
        root: directory holding the objects (created if missing).
        clock: decides when retention has passed.
        max_concurrency: file operations in flight at once (worker threads).
    """

    def __init__(self, root: Path, clock: Clock, *, max_concurrency: int = 8) -> None:
        self._root = Path(root)
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrency)
        # Threads of its own: a transaction may wait on a bucket write (see strongroom_platform.threads).
        self._threads = WorkerThreads(max_concurrency, "objects")

    @property
    def root(self) -> Path:
        return self._root

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            return await self._threads.run(fn, *args)

    def _paths(self, key: str) -> tuple[Path, Path]:
        """(data file, lock sidecar) of ``key``."""
        parts = key_to_parts(key)
        directory = self._root.joinpath(*(p + _DIR_SUFFIX for p in parts[:-1]))
        return directory / (parts[-1] + _OBJ_SUFFIX), directory / (parts[-1] + _LOCK_SUFFIX)

    def _version_paths(self, key: str, version_id: str | None) -> tuple[Path, Path]:
        """(data file, lock sidecar) of ``version_id`` of ``key``; the current version's when None."""
        data_path, lock_path = self._paths(key)
        if version_id is None:
            return data_path, lock_path
        if not _VERSION_ID.fullmatch(version_id):
            raise ObjectNotFound(f"{key} (no version {version_id!r})")
        directory = data_path.with_name(data_path.name[: -len(_OBJ_SUFFIX)] + _VERSIONS_SUFFIX)
        return directory / (version_id + _OBJ_SUFFIX), directory / (version_id + _LOCK_SUFFIX)

    @staticmethod
    def _read_lock(lock_path: Path) -> dt.datetime | None:
        try:
            raw = json.loads(lock_path.read_text())
        except FileNotFoundError:
            return None
        return dt.datetime.fromisoformat(raw["retain_until"])

    def _locked_until(self, data_path: Path, lock_path: Path) -> dt.datetime | None:
        """The retention date if the object exists and is still locked, else None."""
        if not data_path.exists():
            return None
        until = self._read_lock(lock_path)
        return until if until is not None and until > self._clock.now() else None

    async def put(
        self, key: str, data: bytes, *, retain_until: dt.datetime | None = None, new_key: bool = False
    ) -> str:
        """Atomically store ``data`` as a new version; refuse with ObjectLocked while the key is locked.

        The lock check is a local file read: done even with ``new_key``.
        """
        if retain_until is not None and retain_until.tzinfo is None:
            raise ValueError("retain_until must be timezone-aware")
        version_id = secrets.token_hex(16)
        await self._call(self._put_sync, key, version_id, bytes(data), retain_until)
        return version_id

    def _put_sync(self, key: str, version_id: str, data: bytes, retain_until: dt.datetime | None) -> None:
        data_path, lock_path = self._paths(key)
        until = self._locked_until(data_path, lock_path)
        if until is not None:
            raise ObjectLocked(f"{key} is locked until {until.isoformat()}")
        version_path, version_lock = self._version_paths(key, version_id)
        version_path.parent.mkdir(parents=True, exist_ok=True)
        if retain_until is not None:
            payload = json.dumps({"retain_until": retain_until.astimezone(dt.UTC).isoformat()}).encode()
            _atomic_write(version_lock, payload, read_only=True)
            _atomic_write(lock_path, payload, read_only=True)
        else:
            lock_path.unlink(missing_ok=True)
        _atomic_write(version_path, data, read_only=retain_until is not None)
        _link_over(version_path, data_path)

    async def get(
        self, key: str, *, offset: int = 0, length: int | None = None, version_id: str | None = None
    ) -> bytes:
        """The object's bytes (of that version when given), or ``length`` bytes from ``offset``."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        data_path, _ = self._version_paths(key, version_id)
        return await self._call(self._get_sync, key, data_path, offset, length)

    @staticmethod
    def _get_sync(key: str, data_path: Path, offset: int, length: int | None) -> bytes:
        try:
            with open(data_path, "rb") as f:
                f.seek(offset)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    async def stat(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        data_path, lock_path = self._version_paths(key, version_id)
        return await self._call(self._stat_sync, key, data_path, lock_path)

    def _stat_sync(self, key: str, data_path: Path, lock_path: Path) -> ObjectInfo:
        try:
            size = data_path.stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        return ObjectInfo(key=key, size=size, retain_until=self._read_lock(lock_path))

    async def delete(self, key: str) -> None:
        """Remove every version and sidecar; ObjectLocked while any version is locked; missing is fine."""
        data_path, lock_path = self._paths(key)
        await self._call(self._delete_sync, key, data_path, lock_path)

    def _delete_sync(self, key: str, data_path: Path, lock_path: Path) -> None:
        until = self._locked_until(data_path, lock_path)
        versions = data_path.with_name(data_path.name[: -len(_OBJ_SUFFIX)] + _VERSIONS_SUFFIX)
        if until is None and versions.is_dir():
            for version_lock in versions.glob("*" + _LOCK_SUFFIX):
                version_until = self._read_lock(version_lock)
                if version_until is not None and version_until > self._clock.now():
                    until = version_until
                    break
        if until is not None:
            raise ObjectLocked(f"{key} is locked until {until.isoformat()}")
        # Data first: without it the sidecar is inert (an object exists only with its data file).
        data_path.unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)
        shutil.rmtree(versions, ignore_errors=True)

    async def extend_retention(self, key: str, retain_until: dt.datetime, *, version_id: str | None = None) -> None:
        """Lock (that version) until at least ``retain_until``; an earlier date changes nothing."""
        if retain_until.tzinfo is None:
            raise ValueError("retain_until must be timezone-aware")
        await self._call(self._extend_sync, key, version_id, retain_until)

    def _extend_sync(self, key: str, version_id: str | None, retain_until: dt.datetime) -> None:
        data_path, lock_path = self._version_paths(key, version_id)
        if not data_path.exists():
            raise ObjectNotFound(key)
        targets = [lock_path]
        current_path, current_lock = self._paths(key)
        if version_id is None:
            # The current version's own sidecar too, when it has one (written since versions exist).
            for candidate in self._current_version_locks(current_path):
                targets.append(candidate)
        elif current_path.exists() and os.path.samefile(current_path, data_path):
            targets.append(current_lock)
        payload = json.dumps({"retain_until": retain_until.astimezone(dt.UTC).isoformat()}).encode()
        for target in targets:
            current = self._read_lock(target)
            if current is None or retain_until > current:
                _atomic_write(target, payload, read_only=True)
        os.chmod(data_path, stat_mod.S_IRUSR | stat_mod.S_IRGRP | stat_mod.S_IROTH)

    @staticmethod
    def _current_version_locks(current_path: Path) -> builtins.list[Path]:
        """The lock sidecar of the version file ``current_path`` links to (same inode), if any."""
        versions = current_path.with_name(current_path.name[: -len(_OBJ_SUFFIX)] + _VERSIONS_SUFFIX)
        if not versions.is_dir():
            return []
        inode = current_path.stat().st_ino
        return [
            versions / (entry.name[: -len(_OBJ_SUFFIX)] + _LOCK_SUFFIX)
            for entry in os.scandir(versions)
            if entry.name.endswith(_OBJ_SUFFIX) and entry.inode() == inode
        ]

    async def list(self, prefix: str) -> AsyncIterator[str]:
        """Keys starting with ``prefix``, in lexicographic order."""
        keys = await self._call(self._list_sync, prefix)
        for key in keys:
            yield key

    def _entries(self, prefix: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """``(key prefix, entry)`` of every entry other than a key directory, in the directories whose
        keys can start with ``prefix`` (only those are descended into)."""
        if not self._root.is_dir():
            return
        stack: builtins.list[tuple[Path, str]] = [(self._root, "")]
        while stack:
            directory, key_prefix = stack.pop()
            with os.scandir(directory) as entries:
                for entry in entries:
                    name = entry.name
                    if entry.is_dir(follow_symlinks=False) and name.endswith(_DIR_SUFFIX):
                        sub = key_prefix + name[: -len(_DIR_SUFFIX)] + "/"
                        if sub.startswith(prefix) or prefix.startswith(sub):
                            stack.append((Path(entry.path), sub))
                    else:
                        yield key_prefix, entry

    def _list_sync(self, prefix: str) -> builtins.list[str]:
        keys: builtins.list[str] = []
        for key_prefix, entry in self._entries(prefix):
            if entry.is_file(follow_symlinks=False) and entry.name.endswith(_OBJ_SUFFIX):
                key = key_prefix + entry.name[: -len(_OBJ_SUFFIX)]
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        return keys

    async def list_versions(self, prefix: str) -> AsyncIterator[ObjectVersion]:
        """Every version under ``<name>.versions/`` of the keys under ``prefix``, and a ``<name>.obj``
        written before versions existed (version id None); also keys whose ``.obj`` was removed."""
        versions = await self._call(self._list_versions_sync, prefix)
        for version in versions:
            yield version

    def _list_versions_sync(self, prefix: str) -> builtins.list[ObjectVersion]:
        current: dict[str, int] = {}
        versioned: dict[str, builtins.list[tuple[str, int]]] = {}
        for key_prefix, entry in self._entries(prefix):
            name = entry.name
            if entry.is_dir(follow_symlinks=False) and name.endswith(_VERSIONS_SUFFIX):
                key = key_prefix + name[: -len(_VERSIONS_SUFFIX)]
                if key.startswith(prefix):
                    versioned[key] = [
                        (v.name[: -len(_OBJ_SUFFIX)], v.inode())
                        for v in os.scandir(entry.path)
                        if v.name.endswith(_OBJ_SUFFIX) and _VERSION_ID.fullmatch(v.name[: -len(_OBJ_SUFFIX)])
                    ]
            elif entry.is_file(follow_symlinks=False) and name.endswith(_OBJ_SUFFIX):
                key = key_prefix + name[: -len(_OBJ_SUFFIX)]
                if key.startswith(prefix):
                    current[key] = entry.inode()
        found: builtins.list[ObjectVersion] = []
        for key in set(current) | set(versioned):
            ids = versioned.get(key, [])
            found.extend(ObjectVersion(key, version_id) for version_id, _ in ids)
            if key in current and current[key] not in {inode for _, inode in ids}:
                found.append(ObjectVersion(key, None))  # written before versions existed
        found.sort(key=lambda v: v.key)
        return found
