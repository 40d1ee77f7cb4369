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
from typing import IO

from strongroom.common.v1 import common_pb2
from strongroom_platform.manifest import ManifestEncoder

from strongroom_gateway.errors import FailedPrecondition, InvalidArgument

RUN_BYTES = 32 << 20
LOOKUP_BATCH = 10_000
LOOKUPS_IN_FLIGHT = 2
_HEAD = struct.Struct("<II")


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


def merge_entries(
    base: Iterable[common_pb2.FileEntry],
    changes: Iterable[tuple[bytes, bytes]],
    deleted: Iterable[tuple[bytes, bytes]],
) -> Iterator[common_pb2.FileEntry]:
    """The point: ``base`` minus ``deleted`` paths, with ``changes`` added or replacing the same path.

    All three inputs are sorted by path bytes (``changes``/``deleted`` as
    ``(path, serialized entry)``/``(path, b"")``). Refuses duplicate changes
    and a path both changed and deleted; a deleted path not in the base is ignored.
    """
    base_iter = iter(base)
    change_iter = iter(changes)
    delete_iter = iter(deleted)
    b = next(base_iter, None)
    b_path = b.path.encode() if b is not None else None
    c = next(change_iter, None)
    d = next(delete_iter, None)
    last_change: bytes | None = None
    while b is not None or c is not None:
        # Deleted paths that sort before everything left are dropped or remove a base entry.
        head = min(p for p in (b_path, c[0] if c is not None else None) if p is not None)
        while d is not None and d[0] < head:
            d = next(delete_iter, None)
        deleted_here = d is not None and d[0] == head
        if c is not None and c[0] == head:
            if last_change == head:
                raise InvalidArgument(f"duplicate entry path {head.decode(errors='replace')!r}")
            if deleted_here:
                raise InvalidArgument(f"path {head.decode(errors='replace')!r} is both sent and deleted")
            last_change = head
            yield _parse(c[1])
            c = next(change_iter, None)
            if c is not None and c[0] == head:
                raise InvalidArgument(f"duplicate entry path {head.decode(errors='replace')!r}")
            if b_path == head:
                b = next(base_iter, None)
                b_path = b.path.encode() if b is not None else None
            continue
        assert b is not None and b_path == head
        if not deleted_here:
            yield b
        b = next(base_iter, None)
        new_path = b.path.encode() if b is not None else None
        if new_path is not None and new_path <= head:
            raise FailedPrecondition("the base point's manifest is not sorted")
        b_path = new_path


@dataclass
class BuiltManifest:
    data: bytes
    entry_count: int = 0
    file_count: int = 0
    total_bytes: int = 0
    # The packs the point references (for lock extension).
    packs: set[str] = field(default_factory=set)


def build_manifest(
    entries: Iterable[common_pb2.FileEntry],
    locate: Callable[[list[bytes]], Future[tuple[set[str], list[bytes]]]],
    *,
    lookup_batch: int = LOOKUP_BATCH,
    lookups_in_flight: int = LOOKUPS_IN_FLIGHT,
    encoded: bytes | None = None,
) -> BuiltManifest:
    """Encode the sorted ``entries`` and check that the account holds every chunk they reference.

    ``locate(ids)`` starts a lookup and returns its future: the packs holding
    ``ids`` and those of ``ids`` not stored. Up to ``lookups_in_flight`` run
    while the entries go on being decoded (the database works while this
    thread parses). With ``encoded`` (the manifest these entries were decoded
    from, unchanged), nothing is encoded again: the result carries those bytes.

    Raises FailedPrecondition naming up to five missing chunk ids.
    """
    encoder = ManifestEncoder()
    out = io.BytesIO()
    built = BuiltManifest(b"")
    pending: dict[bytes, None] = {}
    lookups: collections.deque[Future[tuple[set[str], list[bytes]]]] = collections.deque()

    def settle(lookup: Future[tuple[set[str], list[bytes]]]) -> None:
        packs, missing = lookup.result()
        if missing:
            sample = ", ".join(sorted(c.hex() for c in missing)[:5])
            raise FailedPrecondition(f"{len(missing)} referenced chunks are not stored (upload them first): {sample}")
        built.packs.update(packs)

    def check() -> None:
        ids = list(pending)
        pending.clear()
        while len(lookups) >= max(1, lookups_in_flight):
            settle(lookups.popleft())
        lookups.append(locate(ids))

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
        for cid in entry.chunk_ids:
            pending[bytes(cid)] = None
        if len(pending) >= lookup_batch:
            check()
    if pending:
        check()
    while lookups:
        settle(lookups.popleft())
    if encoded is not None:
        built.data = encoded
    else:
        out.write(encoder.finish())
        built.data = out.getvalue()
    return built
