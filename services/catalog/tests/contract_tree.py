"""Browse by lineage (ADR 0049), through the handlers, on every adapter: a point indexed as the delta
from its base, browse of every point as its own manifest says, expiry, pruning, baselines."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from catalog_fixtures import DIR, FILE, SYMLINK, call, file_entry, point_created
from contract_repository import Harness
from strongroom.common.v1 import common_pb2
from strongroom_catalog import handlers, search
from strongroom_catalog.retention import expire_versions, prune_lineages
from strongroom_platform.manifest import encode_manifest
from strongroom_platform.testing import InMemoryObjectStore

DAY = dt.timedelta(days=1)


class PieceReader:
    """A ManifestReader streaming plaintext manifests of an object store in pieces of ``piece`` bytes."""

    def __init__(self, store: InMemoryObjectStore, piece: int) -> None:
        self.store = store
        self.piece = piece
        self.reads: list[str] = []

    async def read_point_manifest(self, point_id: str) -> bytes:
        return b"".join([p async for p in self.stream_point_manifest(point_id)])

    async def stream_point_manifest(self, point_id: str) -> AsyncIterator[bytes]:
        self.reads.append(point_id)
        data = await self.store.get(f"manifests/{point_id}")
        for offset in range(0, len(data), self.piece):
            yield data[offset : offset + self.piece]


def entry(path: str, type: int = FILE, size: int = 10, mode: int | None = None, mtime: int = 1) -> common_pb2.FileEntry:
    e = file_entry(path, type, size, "t" if type == SYMLINK else "")
    e.mtime_ns = mtime
    if mode is not None:
        e.mode = mode
    return e


def day1() -> list[common_pb2.FileEntry]:
    out = [entry("", DIR), entry("a", DIR), entry("a.txt"), entry("a/b", DIR)]
    out += [entry(f"a/b/f{i:03d}", size=i) for i in range(300)]
    out += [entry("a/gone", DIR), entry("a/gone/x"), entry("a/gone/y"), entry("a/z", SYMLINK, 0)]
    return sorted(out, key=lambda e: e.path.encode())


def day2() -> list[common_pb2.FileEntry]:
    by_path = {e.path: e for e in day1()}
    for path in ("a/gone", "a/gone/x", "a/gone/y", "a/b/f007"):
        del by_path[path]
    by_path["a/b/f010"] = entry("a/b/f010", size=99999, mtime=2)  # content changed
    by_path["a/b/f011"] = entry("a/b/f011", size=11, mode=0o600)  # only its mode changed
    by_path["a/new"] = entry("a/new", DIR)
    by_path["a/new/n"] = entry("a/new/n", size=5)
    by_path["a/b/f299x"] = entry("a/b/f299x", size=1)
    return sorted(by_path.values(), key=lambda e: e.path.encode())


def day3() -> list[common_pb2.FileEntry]:
    by_path = {e.path: e for e in day2()}
    by_path["a/b/f010"] = entry("a/b/f010", size=5, mtime=3)
    by_path["a/gone"] = entry("a/gone", DIR)  # back again, empty
    del by_path["a.txt"]
    return sorted(by_path.values(), key=lambda e: e.path.encode())


def expected(entries: list[common_pb2.FileEntry]) -> list[tuple[str, int, int, int, int, str]]:
    return sorted((e.path, e.type, e.mode, e.size, e.mtime_ns, e.link_target) for e in entries if e.path)


async def browse_all(repo: object, point_id: str, directory: str = "") -> list[tuple[str, int, int, int, int, str]]:
    """Every entry of the point, through BrowsePoint (page by page), sorted by path."""
    out = []
    token = ""
    while True:
        rows, token = await handlers.browse_point(
            repo,  # type: ignore[arg-type]
            point_id,
            directory,
            page_size=7,
            page_token=token,
            call=call("BrowsePoint"),
        )
        for r in rows:
            out.append((r.path, r.type, r.mode, r.size, r.mtime_ns, r.link_target))
            if r.type == DIR:
                out.extend(await browse_all(repo, point_id, r.path))
        if not token:
            return sorted(out)


class TreeContract:
    @pytest.fixture
    def harness(self) -> Harness:
        raise NotImplementedError

    async def _index(
        self, harness: Harness, reader: PieceReader, point_id: str, entries: list[common_pb2.FileEntry], at: dt.datetime
    ) -> None:
        await reader.store.put(f"manifests/{point_id}", encode_manifest(entries))
        event = point_created(point_id, f"v-{point_id}", created_at=at)
        await handlers.handle_point_created(event, repo=harness.repo, store=reader, batch_size=50)

    @pytest.mark.parametrize("piece", [7, 1 << 20])
    async def test_day_two_is_the_delta_and_every_point_browses_as_its_manifest(
        self, harness: Harness, piece: int
    ) -> None:
        repo = harness.repo
        reader = PieceReader(InMemoryObjectStore(), piece)
        now = await harness.trusted_now()
        await self._index(harness, reader, "p1", day1(), now - 3 * DAY)
        await self._index(harness, reader, "p2", day2(), now - 2 * DAY)
        await self._index(harness, reader, "p3", day3(), now - DAY)
        for point_id, entries in (("p1", day1()), ("p2", day2()), ("p3", day3())):
            got = await repo.get_point(point_id)
            assert got is not None and got.browsable and got.tree is not None
            assert await browse_all(repo, point_id) == expected(entries)
        p1, p2 = await repo.get_point("p1"), await repo.get_point("p3")
        assert p1 is not None and p1.tree is not None and p2 is not None and p2.tree is not None
        assert p1.tree.floor == p1.tree.seq == 1 and p2.tree.floor == 1  # one run of deltas
        # the delta, not a copy: p2 and p3 read their base's manifest and their own, and wrote what changed
        assert sorted(reader.reads) == ["p1", "p1", "p2", "p2", "p3"]
        rows = await harness.tree_rows()  # type: ignore[attr-defined]
        assert len([r for r in rows if r[0] == 1]) == len(day1()) - 1  # the baseline (the root is not listed)
        assert sorted(r[1:] for r in rows if r[0] == 2) == [
            ("a/b/f007", 0),
            ("a/b/f010", FILE),
            ("a/b/f011", FILE),
            ("a/b/f299x", FILE),
            ("a/gone", 0),
            ("a/gone/x", 0),
            ("a/gone/y", 0),
            ("a/new", DIR),
            ("a/new/n", FILE),
        ]
        # search sees day 3's content of f010 in p3 and day 2's in p2; the mode-only change is no version
        hit = await search.file_history(repo, "i-1", "/a/b/f010", call=call("GetFileHistory"))
        assert [(v.point_id, v.size) for v in hit.versions] == [("p3", 5), ("p2", 99999), ("p1", 10)]
        hit = await search.file_history(repo, "i-1", "/a/b/f011", call=call("GetFileHistory"))
        assert [v.point_id for v in hit.versions] == ["p3", "p2", "p1"]
        hit = await search.file_history(repo, "i-1", "/a/gone/x", call=call("GetFileHistory"))
        assert [v.point_id for v in hit.versions] == ["p1"]
        # a removed directory is gone from the day-2 listing, and browsing into it fails
        with pytest.raises(handlers.NotFound, match="no directory"):
            await handlers.browse_point(repo, "p2", "a/gone", call=call("BrowsePoint"))

    async def _old_days(self, harness: Harness, reader: PieceReader) -> dt.datetime:
        """p1 and p2 past the retention period; returns the trusted time."""
        now = await harness.trusted_now()
        await self._index(harness, reader, "p1", day1(), now - 40 * DAY)
        await self._index(harness, reader, "p2", day2(), now - 35 * DAY)
        return now

    async def test_browse_after_the_base_expired_and_was_pruned(self, harness: Harness) -> None:
        repo = harness.repo
        reader = PieceReader(InMemoryObjectStore(), 1 << 20)
        now = await self._old_days(harness, reader)
        await self._index(harness, reader, "p3", day3(), now - DAY)
        assert await expire_versions(repo) == ["v-p1", "v-p2"]
        assert await prune_lineages(repo, batch=3) > 0
        assert await prune_lineages(repo) == 0  # nothing left to prune
        # what is left is exactly p3's state: one row per entry, no tombstone
        rows = await harness.tree_rows()  # type: ignore[attr-defined]
        assert sorted(r[1] for r in rows) == [path for path, *_ in expected(day3())]
        assert all(r[2] != 0 for r in rows)
        assert await browse_all(repo, "p3") == expected(day3())
        hit = await search.file_history(repo, "i-1", "/a/b/f010", call=call("GetFileHistory"))
        assert [(v.point_id, v.size) for v in hit.versions] == [("p3", 5)]
        with pytest.raises(handlers.NotFound, match="expired"):
            await handlers.browse_point(repo, "p2", "", call=call("BrowsePoint"))
        # the next point is a delta from p3, which is live
        later = [*day3(), entry("zz")]
        await self._index(harness, reader, "p4", later, now)
        assert await browse_all(repo, "p4") == expected(later)
        p4 = await repo.get_point("p4")
        assert p4 is not None and p4.tree is not None and p4.tree.floor == 1

    async def test_point_after_an_expired_base_is_a_baseline(self, harness: Harness) -> None:
        repo = harness.repo
        reader = PieceReader(InMemoryObjectStore(), 1 << 20)
        now = await self._old_days(harness, reader)
        async with repo.transaction() as tx:
            await tx.set_keep_latest("i-1", False)
        assert await expire_versions(repo) == ["v-p1", "v-p2"]
        await self._index(harness, reader, "p3", day3(), now)
        p3 = await repo.get_point("p3")
        assert p3 is not None and p3.tree is not None and p3.tree.floor == p3.tree.seq == 3
        assert await browse_all(repo, "p3") == expected(day3())
        assert await prune_lineages(repo) > 0  # every row before p3's run
        assert await browse_all(repo, "p3") == expected(day3())
        hit = await search.file_history(repo, "i-1", "/a/b/f010", call=call("GetFileHistory"))
        assert [(v.point_id, v.size) for v in hit.versions] == [("p3", 5)]

    async def test_a_lineage_whose_points_all_expired_keeps_no_row(self, harness: Harness) -> None:
        repo = harness.repo
        reader = PieceReader(InMemoryObjectStore(), 1 << 20)
        await self._old_days(harness, reader)
        async with repo.transaction() as tx:
            await tx.set_keep_latest("i-1", False)
        assert await expire_versions(repo) == ["v-p1", "v-p2"]
        assert await prune_lineages(repo, batch=100) > 0
        assert await harness.index_rows() == (0, 0)  # type: ignore[attr-defined]
        # the lineage goes on: its next point is a baseline, found by search
        now = await harness.trusted_now()
        await self._index(harness, reader, "p3", day3(), now)
        assert await browse_all(repo, "p3") == expected(day3())
        hit = await search.file_history(repo, "i-1", "/a/b/f010", call=call("GetFileHistory"))
        assert [(v.point_id, v.size) for v in hit.versions] == [("p3", 5)]

    async def test_unreadable_base_manifest_makes_a_baseline(self, harness: Harness) -> None:
        repo = harness.repo
        reader = PieceReader(InMemoryObjectStore(), 1 << 20)
        now = await harness.trusted_now()
        await self._index(harness, reader, "p1", day1(), now - 2 * DAY)
        await reader.store.delete("manifests/p1")
        await self._index(harness, reader, "p2", day2(), now - DAY)
        p2 = await repo.get_point("p2")
        assert p2 is not None and p2.browsable and p2.tree is not None and p2.tree.floor == 2
        assert await browse_all(repo, "p2") == expected(day2())
        assert await browse_all(repo, "p1") == expected(day1())
        hit = await search.file_history(repo, "i-1", "/a/b/f010", call=call("GetFileHistory"))
        assert [(v.point_id, v.size) for v in hit.versions] == [("p2", 99999), ("p1", 10)]

    async def test_the_same_point_created_twice_indexes_once(self, harness: Harness) -> None:
        repo = harness.repo
        reader = PieceReader(InMemoryObjectStore(), 1 << 20)
        now = await harness.trusted_now()
        await self._index(harness, reader, "p1", day1(), now - 2 * DAY)
        await self._index(harness, reader, "p2", day2(), now - DAY)
        reads = len(reader.reads)
        second = point_created("p2", "v-p2", created_at=now - DAY)
        await handlers.handle_point_created(second, repo=repo, store=reader)
        second.meta.event_id = "another-event-id"
        await handlers.handle_point_created(second, repo=repo, store=reader)
        assert len(reader.reads) == reads  # nothing read, nothing written again
        assert await browse_all(repo, "p2") == expected(day2())

    async def test_corrupt_new_manifest_is_recorded_and_a_missing_one_too(self, harness: Harness) -> None:
        repo = harness.repo
        reader = PieceReader(InMemoryObjectStore(), 5)
        now = await harness.trusted_now()
        await self._index(harness, reader, "p1", day1(), now - 2 * DAY)
        await reader.store.put("manifests/p2", encode_manifest(day2())[:-9])
        await handlers.handle_point_created(point_created("p2", "v-p2", created_at=now - DAY), repo=repo, store=reader)
        p2 = await repo.get_point("p2")
        assert p2 is not None and not p2.browsable and p2.index_error and "manifest" in p2.index_error
        # the lineage is intact: the next point is still a delta from p1
        await self._index(harness, reader, "p3", day3(), now)
        assert await browse_all(repo, "p3") == expected(day3())
