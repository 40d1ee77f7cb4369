"""The complete manifest of a committed point, built in bounded memory.

CommitPoint receives either a full manifest or, with ``PointHeader.base_point_id``,
only the new or changed entries and the deleted paths. Both arrive in any order
and are spooled (``SortedSpool``: sorted runs of at most ``run_bytes`` on
local disk, merged on reading), then merged with the base point's manifest (a
stream in path order) by ``merge_entries`` and encoded by ``build_manifest``,
which also checks in batches that the account holds every referenced chunk.
Only one run, one batch of chunk ids and the compressed manifest are ever in
memory, whatever the number of entries (docs/formats/manifest.md).

All functions here are synchronous and run in a worker thread; I/O on the
event loop (object store, database) is reached through callables the caller
bridges (``asyncio.run_coroutine_threadsafe``).
"""

from __future__ import annotations

import collections
import heapq
import io
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import IO, Literal, TypeVar

from strongroom.common.v1 import common_pb2
from strongroom_platform.manifest import ManifestEncoder, record_path

from strongroom_gateway.errors import FailedPrecondition, InvalidArgument

RUN_BYTES = 32 << 20
LOOKUP_BATCH = 10_000
LOOKUPS_IN_FLIGHT = 2
_HEAD = struct.Struct("<II")
T = TypeVar("T")


class SortedSpool:
    """``(key, value)`` records added in any order, read back sorted by key (external merge sort)."""

    def __init__(self, *, run_bytes: int = RUN_BYTES, directory: str | None = None) -> None:
        self._run_bytes = run_bytes
        self._directory = directory
        self._memory: list[tuple[bytes, bytes]] = []
        self._memory_bytes = 0
        self._runs: list[IO[bytes]] = []
        self.count = 0

    def add(self, key: bytes, value: bytes) -> None:
        self._memory.append((key, value))
        self._memory_bytes += len(key) + len(value) + 64
        self.count += 1
        if self._memory_bytes >= self._run_bytes:
            self._flush()

    def _flush(self) -> None:
        self._memory.sort(key=lambda kv: kv[0])
        run = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 - closed in close()
        for key, value in self._memory:
            run.write(_HEAD.pack(len(key), len(value)) + key + value)
        run.flush()
        run.seek(0)
        self._runs.append(run)
        self._memory = []
        self._memory_bytes = 0

    @staticmethod
    def _read_run(run: IO[bytes]) -> Iterator[tuple[bytes, bytes]]:
        while head := run.read(_HEAD.size):
            key_length, value_length = _HEAD.unpack(head)
            key = run.read(key_length)
            yield key, run.read(value_length)

    def sorted(self) -> Iterator[tuple[bytes, bytes]]:
        self._memory.sort(key=lambda kv: kv[0])
        if not self._runs:
            return iter(self._memory)
        sources: list[Iterable[tuple[bytes, bytes]]] = [self._read_run(run) for run in self._runs]
        sources.append(self._memory)
        return heapq.merge(*sources, key=lambda kv: kv[0])

    @property
    def runs(self) -> int:
        return len(self._runs)

    def close(self) -> None:
        for run in self._runs:
            run.close()
        self._runs = []
        self._memory = []


def _parse(value: bytes) -> common_pb2.FileEntry:
    entry = common_pb2.FileEntry()
    entry.ParseFromString(value)
    return entry


# What ``merge_keyed`` says of each item: a base entry kept as is, an entry sent by the agent, or a
# base entry dropped (deleted, or replaced by a sent entry of the same path).
Kind = Literal["kept", "sent", "dropped"]
KEPT: Kind = "kept"
SENT: Kind = "sent"
DROPPED: Kind = "dropped"


def merge_keyed(
    base: Iterable[tuple[bytes, T]],
    changes: Iterable[tuple[bytes, bytes]],
    deleted: Iterable[tuple[bytes, bytes]],
) -> Iterator[tuple[Kind, bytes, T | bytes]]:
    """Every item of the point's merge as ``(kind, path, item)``, in path order: ``base`` items
    ``(path, item)`` kept or dropped, and each sent ``(path, serialized entry)`` of ``changes``
    (before the base item it replaces). All three inputs are sorted by path bytes; refuses
    duplicate changes and a path both changed and deleted; a deleted path not in the base is
    ignored."""
    base_iter = iter(base)
    change_iter = iter(changes)
    delete_iter = iter(deleted)
    b = _next_base(base_iter, None)
    c = next(change_iter, None)
    d = next(delete_iter, None)
    while b is not None or c is not None:
        if b is None:
            assert c is not None
            head = c[0]
        else:
            head = b[0] if c is None else min(b[0], c[0])
        # Deleted paths that sort before everything left are dropped or remove a base entry.
        while d is not None and d[0] < head:
            d = next(delete_iter, None)
        deleted_here = d is not None and d[0] == head
        if c is not None and c[0] == head:
            if deleted_here:
                raise InvalidArgument(f"path {head.decode(errors='replace')!r} is both sent and deleted")
            yield SENT, head, c[1]
            c = next(change_iter, None)
            if c is not None and c[0] == head:
                raise InvalidArgument(f"duplicate entry path {head.decode(errors='replace')!r}")
            if b is not None and b[0] == head:
                yield DROPPED, head, b[1]
                b = _next_base(base_iter, head)
            continue
        assert b is not None and b[0] == head
        yield (DROPPED if deleted_here else KEPT), head, b[1]
        b = _next_base(base_iter, head)


def _next_base(base: Iterator[tuple[bytes, T]], previous: bytes | None) -> tuple[bytes, T] | None:
    item = next(base, None)
    if item is not None and previous is not None and item[0] <= previous:
        raise FailedPrecondition("the base point's manifest is not sorted")
    return item


def merge_entries(
    base: Iterable[common_pb2.FileEntry],
    changes: Iterable[tuple[bytes, bytes]],
    deleted: Iterable[tuple[bytes, bytes]],
) -> Iterator[common_pb2.FileEntry]:
    """The point: ``base`` minus ``deleted`` paths, with ``changes`` added or replacing the same path
    (``changes``/``deleted`` as ``(path, serialized entry)``/``(path, b"")``; see ``merge_keyed``)."""
    for kind, _, item in merge_keyed(((e.path.encode(), e) for e in base), changes, deleted):
        if kind == KEPT:
            assert isinstance(item, common_pb2.FileEntry)
            yield item
        elif kind == SENT:
            assert isinstance(item, bytes)
            yield _parse(item)


def record_key(record: bytes) -> bytes:
    """The path of a serialized entry: read from its leading bytes, or parsed when it does not lead."""
    path = record_path(record)
    return path if path is not None else _parse(record).path.encode()


def merge_records(
    base: Iterable[bytes],
    changes: Iterable[tuple[bytes, bytes]],
    deleted: Iterable[tuple[bytes, bytes]],
) -> Iterator[tuple[Kind, bytes, bytes]]:
    """``merge_keyed`` over the base's serialized entries, none of them parsed to be merged:
    ``(kind, path, serialized entry)``."""
    for kind, path, item in merge_keyed(((record_key(r), r) for r in base), changes, deleted):
        assert isinstance(item, bytes)
        yield kind, path, item


@dataclass
class BuiltManifest:
    data: bytes
    entry_count: int = 0
    file_count: int = 0
    total_bytes: int = 0
    # The point's chunk references per pack: the packs it references (locked as long as it) and
    # how many of its entries' chunk ids each holds (recorded, ADR 0034 update of session 5).
    refs: dict[str, int] = field(default_factory=dict)
    # The refs were counted from the base point's recorded ones (which include the packs of its
    # manifest's segments, ADR 0065), not located from this point's entries alone.
    from_base: bool = False

    @property
    def packs(self) -> set[str]:
        return set(self.refs)


# Starts a lookup of chunk id -> references: the references per pack holding them, the ids not stored.
Locate = Callable[[dict[bytes, int]], Future[tuple[dict[str, int], list[bytes]]]]


def add_refs(total: dict[str, int], refs: dict[str, int], sign: int = 1) -> None:
    """``total`` plus (or minus) ``refs``, per pack; a pack left with none leaves it."""
    for pack, n in refs.items():
        left = total.get(pack, 0) + sign * n
        if left:
            total[pack] = left
        else:
            total.pop(pack, None)


class ChunkCheck:
    """Counts chunk references per pack in batches of distinct ids through ``locate``, with up to
    ``lookups_in_flight`` lookups running while the caller goes on.

    ``missing_ok`` False: ``finish`` fails the commit naming up to five ids not stored; True: it
    counts them in ``missing``.
    """

    def __init__(
        self,
        locate: Locate,
        *,
        lookup_batch: int = LOOKUP_BATCH,
        lookups_in_flight: int = LOOKUPS_IN_FLIGHT,
        missing_ok: bool = False,
    ) -> None:
        self._locate = locate
        self._batch = lookup_batch
        self._in_flight = max(1, lookups_in_flight)
        self._missing_ok = missing_ok
        self._pending: dict[bytes, int] = {}
        self._lookups: collections.deque[Future[tuple[dict[str, int], list[bytes]]]] = collections.deque()
        self.refs: dict[str, int] = {}
        self.missing = 0

    def add(self, chunk_ids: Iterable[bytes]) -> None:
        """One reference to each of ``chunk_ids`` (an id listed twice, two)."""
        pending = self._pending
        for cid in chunk_ids:
            key = bytes(cid)
            pending[key] = pending.get(key, 0) + 1
        if len(pending) >= self._batch:
            self._start()

    def add_counts(self, counts: dict[bytes, int]) -> None:
        """``counts[id]`` references to each id."""
        for cid, n in counts.items():
            self._pending[cid] = self._pending.get(cid, 0) + n
            if len(self._pending) >= self._batch:
                self._start()

    def _start(self) -> None:
        counts = self._pending
        self._pending = {}
        while len(self._lookups) >= self._in_flight:
            self._settle(self._lookups.popleft())
        self._lookups.append(self._locate(counts))

    def _settle(self, lookup: Future[tuple[dict[str, int], list[bytes]]]) -> None:
        refs, missing = lookup.result()
        if missing and not self._missing_ok:
            sample = ", ".join(sorted(c.hex() for c in missing)[:5])
            raise FailedPrecondition(f"{len(missing)} referenced chunks are not stored (upload them first): {sample}")
        self.missing += len(missing)
        add_refs(self.refs, refs)

    def finish(self) -> dict[str, int]:
        """The references per pack of every id added."""
        if self._pending:
            self._start()
        while self._lookups:
            self._settle(self._lookups.popleft())
        return self.refs


def build_manifest(
    entries: Iterable[common_pb2.FileEntry],
    locate: Locate,
    *,
    lookup_batch: int = LOOKUP_BATCH,
    lookups_in_flight: int = LOOKUPS_IN_FLIGHT,
    encoded: bytes | None = None,
) -> BuiltManifest:
    """Encode the sorted ``entries`` and check that the account holds every chunk they reference.

    ``locate(counts)`` starts a lookup of chunk id -> references and returns its
    future: the references per pack holding them and the ids not stored. Up to ``lookups_in_flight`` run
    while the entries go on being decoded (the database works while this
    thread parses). With ``encoded`` (the manifest these entries were decoded
    from, unchanged), nothing is encoded again: the result carries those bytes.

    Raises FailedPrecondition naming up to five missing chunk ids.
    """
    encoder = ManifestEncoder()
    out = io.BytesIO()
    built = BuiltManifest(b"")
    check = ChunkCheck(locate, lookup_batch=lookup_batch, lookups_in_flight=lookups_in_flight)
    for entry in entries:
        if encoded is None:
            try:
                out.write(encoder.add(entry))
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
        built.entry_count += 1
        if entry.type == common_pb2.ENTRY_TYPE_FILE:
            built.file_count += 1
            built.total_bytes += entry.size
        check.add(entry.chunk_ids)
    built.refs = check.finish()
    if encoded is not None:
        built.data = encoded
    else:
        out.write(encoder.finish())
        built.data = out.getvalue()
    return built
