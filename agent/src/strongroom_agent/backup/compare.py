"""The backup's scan compared with the cache: a walk in manifest order, one worker-thread step at a time.

``TreeCompare.step`` (run in a worker thread, one step at a time) walks the
tree in manifest order (``scan.py``'s ordering contract), pairs each entry with
its record of the cached point and settles in the thread whatever needs no
read: an unchanged regular file (its stored cache record is copied as-is), a
directory or a symlink (its entry is built, its cache record encoded, and it
is sent only when it differs from the cached one), and the cached paths the
walk passes without finding (deleted since). These settle into ``Known`` runs
of encoded bytes for the new cache and the spool. Only a regular file that has
to be read comes back as a ``Changed`` item for the event loop's reader.

Why: a no-change backup of the benchmark tree (~84k entries) spent most of its
CPU in per-entry Python work on the event loop (pairing each entry with its
cache record, routing it, recording it) and in one executor round trip per
directory. Now the loop handles one ``Step`` per ``STEP_ENTRIES`` entries and
one ``Known`` run per up to ``RUN_ENTRIES`` of them.

Guarantees kept: a regular file is taken from the cache only when its record is
trusted and its (dev, inode, size, mtime, ctime) is unchanged
(``CacheRecord.unchanged``); everything else is read again. Memory: a step
holds at most ``STEP_ENTRIES`` entries (and the listings of the directories on
the walk's current path); a run at most ``RUN_ENTRIES``, which bounds what the
spool writer's queue of ``ordered_queue`` items holds.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field

from strongroom_agent import cache
from strongroom_agent.backup.scan import ScanItem, _Level, _list_dir, file_entry
from strongroom_agent.exclusions import Exclusions
from strongroom_agent.jobs import FileError

# Entries the walk handles per worker-thread step (bounds a step's memory and the time between cancel checks).
STEP_ENTRIES = 4096
# Entries per ``Known`` run (bounds what one item of the spool writer's queue holds).
RUN_ENTRIES = 64

_SPOOL_HEADER = struct.Struct(">I")


@dataclass(slots=True)
class Known:
    """A run of settled entries in manifest order, encoded for the new cache and for the spool.

    ``cache_records`` are ``cache_count`` length-prefixed cache records, paths
    ``first`` to ``last``; ``spool`` holds the spool's records (``Spool``'s
    layout) of the ``spool_entries`` entries to send and the deleted paths.
    """

    cache_records: bytes
    cache_count: int
    first: bytes
    last: bytes
    spool: bytes
    spool_entries: int


@dataclass(slots=True)
class Changed:
    """A regular file to read (no trusted cache record with its stat identity), with its cache record if any."""

    item: ScanItem
    path: bytes
    cached: cache.CacheRecord | None


@dataclass
class Step:
    """What one step of the walk settled and found, in manifest order, and its scan counters."""

    items: list[Known | Changed] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    files_scanned: int = 0
    bytes_scanned: int = 0
    files_unchanged: int = 0
    bytes_unchanged: int = 0
    done: bool = False  # the walk (and the cache) is finished


class _Run:
    """Builds one ``Known`` run."""

    __slots__ = ("cache_parts", "spool_parts", "count", "spool_entries", "first", "last", "entries")

    def __init__(self) -> None:
        self.cache_parts: list[bytes] = []
        self.spool_parts: list[bytes] = []
        self.count = 0  # cache records
        self.spool_entries = 0
        self.first = b""
        self.last = b""
        self.entries = 0  # cache records and deleted paths

    def add_cache(self, path: bytes, record: bytes) -> None:
        if self.count:
            if path <= self.last:
                raise ValueError(f"cache entries must be sorted: {path!r}")
        else:
            self.first = path
        self.last = path
        self.cache_parts.append(record)
        self.count += 1
        self.entries += 1

    def send(self, body: bytes) -> None:
        self.spool_parts.append(b"E" + _SPOOL_HEADER.pack(len(body)) + body)
        self.spool_entries += 1

    def delete(self, path: bytes) -> None:
        self.spool_parts.append(b"D" + _SPOOL_HEADER.pack(len(path)) + path)
        self.entries += 1

    def seal(self) -> Known:
        records, spool = b"".join(self.cache_parts), b"".join(self.spool_parts)
        return Known(records, self.count, self.first, self.last, spool, self.spool_entries)


class TreeCompare:
    """The walk of one point's tree against its cache, in bounded steps (``step``, one at a time, in a thread).

    ``racy_before_ns`` None: no cache is written, so no cache records are encoded.
    """

    def __init__(
        self,
        root: str,
        exclusions: Exclusions,
        cursor: cache.CacheCursor | None,
        racy_before_ns: int | None,
        *,
        step_entries: int = STEP_ENTRIES,
        run_entries: int = RUN_ENTRIES,
    ) -> None:
        # Public: the native walk (``native.NativeExtension.tree_compare``) is made from the same arguments.
        self.root = root
        self.exclusions = exclusions
        self.cursor = cursor
        self.racy_before_ns = racy_before_ns
        self.step_entries = step_entries
        self.run_entries = run_entries
        self._stack: list[_Level] | None = None  # None until the first step lstat()s the root
        self._device = 0

    def end_walk(self) -> None:
        """Walk no further (the root could not be walked): the next steps delete the cached paths left."""
        self._stack = []

    def step(self) -> Step:
        """Walk on for up to ``step_entries`` entries (runs in a worker thread; never two at once)."""
        out = Step()
        if self._stack is None:
            st = os.lstat(self.root)
            self._device = st.st_dev
            root_item = ScanItem("", self.root, st)
            self._stack = [_Level([(b"", False, root_item), (b"/", True, root_item)])]
        stack = self._stack
        run = _Run()
        budget = self.step_entries
        while stack and budget > 0:
            level = stack[-1]
            items = level.items
            if level.next >= len(items):
                stack.pop()
                continue
            _key, descend, item = items[level.next]
            if descend:
                level.next += 1
                listing = _list_dir(item.path, item.rel, self._device, self.exclusions)
                out.errors.extend(listing.errors)
                stack.append(_Level(listing.items))
                continue
            path = item.rel.encode()
            budget, run = self._deleted_before(out, run, path, budget)
            if budget <= 0:
                break  # cached paths before this entry are still to delete: the entry is the next step's
            level.next += 1
            budget -= 1
            run = self._entry(out, run, item, path)
        if not stack:
            budget, run = self._deleted_before(out, run, None, budget)
            out.done = self.cursor is None or self.cursor.peek() is None
        if run.entries or run.spool_parts:
            out.items.append(run.seal())
        return out

    def _maybe_seal(self, out: Step, run: _Run) -> _Run:
        if run.entries >= self.run_entries:
            out.items.append(run.seal())
            return _Run()
        return run

    def _deleted_before(self, out: Step, run: _Run, path: bytes | None, budget: int) -> tuple[int, _Run]:
        """Delete the cached paths before ``path`` (None: all that are left), up to ``budget`` of them.

        They are paths of the cached point the walk passed without finding:
        deleted since. Returns the budget left (0: more may remain) and the run.
        """
        cursor = self.cursor
        if cursor is None:
            return budget, run
        record = cursor.peek()
        while record is not None and (path is None or record.path < path):
            if budget <= 0:
                return 0, run
            budget -= 1
            run.delete(cursor.take().path)
            run = self._maybe_seal(out, run)
            record = cursor.peek()
        return budget, run

    def _entry(self, out: Step, run: _Run, item: ScanItem, path: bytes) -> _Run:
        """Settle one entry into ``run`` or hand it out as ``Changed``; the run to go on with.

        The cached paths before ``path`` are deleted already (``_deleted_before``).
        """
        cached = None
        cursor = self.cursor
        if cursor is not None:
            record = cursor.peek()
            if record is not None and record.path == path:
                cached = cursor.take()
        out.files_scanned += 1
        st = item.st
        if stat.S_ISREG(st.st_mode):
            out.bytes_scanned += st.st_size
            if cached is None or not cached.unchanged(st):
                if run.entries or run.spool_parts:
                    out.items.append(run.seal())
                    run = _Run()
                out.items.append(Changed(item, path, cached))
                return run
            # Same inode, size, mtime and ctime: mode and owner are unchanged too (they move
            # ctime), so the cached entry is this file's entry as it stands.
            out.files_unchanged += 1
            out.bytes_unchanged += st.st_size
            if self.racy_before_ns is not None:
                run.add_cache(path, cache.encode_unchanged(cached))
            else:
                run.entries += 1
        else:
            entry = file_entry(item)
            body = entry.SerializeToString()
            if self.racy_before_ns is not None:
                run.add_cache(path, cache.encode_record(path, body, st, self.racy_before_ns))
            else:
                run.entries += 1
            if cached is None or not cached.same_entry(body, entry):
                run.send(body)
        return self._maybe_seal(out, run)
