"""Recording and indexing points, and the read side (unit tests with fakes)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import zstandard
from catalog_fixtures import (
    DIR,
    FILE,
    SAMPLE_ENTRIES,
    SYMLINK,
    T0,
    call,
    children,
    file_entry,
    point_created,
    sample_manifest,
)
from strongroom.common.v1 import common_pb2
from strongroom_catalog import handlers
from strongroom_catalog.errors import FailedPrecondition, InvalidArgument, NotFound
from strongroom_catalog.model import TreeChange
from strongroom_catalog.paths import encode_page_token
from strongroom_catalog.testing import InMemoryCatalogStore, InMemoryCatalogTx
from strongroom_platform.eventbus import PoisonRecord
from strongroom_platform.manifest import encode_manifest, encode_uvarint
from strongroom_platform.testing import InMemoryObjectStore


@pytest.fixture
def repo() -> InMemoryCatalogStore:
    return InMemoryCatalogStore()


@pytest.fixture
async def store() -> InMemoryObjectStore:
    store = InMemoryObjectStore()
    await store.put("manifests/p1", sample_manifest())
    return store


async def all_paths(repo: InMemoryCatalogStore, point_id: str, parent: str = "") -> list[str]:
    paths = []
    for child in await children(repo, point_id, parent, 10_000):
        paths.append(child.path)
        if child.type == DIR:
            paths.extend(await all_paths(repo, point_id, child.path))
    return paths


async def test_point_created_records_version_point_and_index(
    repo: InMemoryCatalogStore, store: InMemoryObjectStore
) -> None:
    event = point_created()
    await handlers.handle_point_created(event, repo=repo, store=store)
    [version] = await repo.list_versions("i-1", accounts=None)
    assert version.version_id == "v1" and version.account_id == "acct"
    assert version.created_at == T0
    [p] = version.points
    assert p.point_id == "p1" and p.browsable and p.mount_point == "/" and p.manifest_key == "manifests/p1"
    assert p.file_count == 5 and p.total_bytes == 2173 and p.retain_until is not None
    assert await all_paths(repo, "p1") == [e.path for e in SAMPLE_ENTRIES if e.path]
    [link] = [r for r in await children(repo, "p1", "home", 10) if r.name == "link"]
    assert link.type == SYMLINK and link.link_target == "a.txt"
    [conf] = await children(repo, "p1", "etc/nginx", 10)
    assert (conf.size, conf.mode, conf.mtime_ns) == (2048, 0o644, 1_700_000_000_123_456_789)


async def test_redelivered_event_changes_nothing(repo: InMemoryCatalogStore, store: InMemoryObjectStore) -> None:
    event = point_created()
    await handlers.handle_point_created(event, repo=repo, store=store)
    before = await all_paths(repo, "p1")
    await handlers.handle_point_created(event, repo=repo, store=store)
    assert await all_paths(repo, "p1") == before
    assert len(await repo.list_versions("i-1", accounts=None)) == 1


class CrashingRepository(InMemoryCatalogStore):
    """Fails the Nth add_tree_changes call once, like a process dying mid-index."""

    def __init__(self, fail_on_call: int) -> None:
        super().__init__()
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.batch_sizes: list[int] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryCatalogTx]:
        async with super().transaction() as tx:
            original = tx.add_tree_changes

            async def add_tree_changes(rows: Sequence[TreeChange]) -> None:
                self.calls += 1
                self.batch_sizes.append(len(rows))
                if self.calls == self.fail_on_call:
                    raise ConnectionError("database went away")
                await original(rows)

            tx.add_tree_changes = add_tree_changes  # type: ignore[method-assign]
            yield tx


async def test_crash_mid_index_then_redelivery_completes_without_duplicates(store: InMemoryObjectStore) -> None:
    repo = CrashingRepository(fail_on_call=2)
    event = point_created()
    with pytest.raises(ConnectionError):
        await handlers.handle_point_created(event, repo=repo, store=store, batch_size=2)
    crashed = await repo.get_point("p1")
    assert crashed is not None and not crashed.browsable  # recorded, not browsable yet
    assert await children(repo, "p1", "", 100) == []  # the partial index rolled back
    await handlers.handle_point_created(event, repo=repo, store=store, batch_size=2)
    done = await repo.get_point("p1")
    assert done is not None and done.browsable
    assert await all_paths(repo, "p1") == [e.path for e in SAMPLE_ENTRIES if e.path]


async def test_index_is_loaded_in_bounded_batches() -> None:
    entries = [file_entry("d", DIR)] + [file_entry(f"d/f{i:05d}") for i in range(2500)]
    store = InMemoryObjectStore()
    await store.put("manifests/p1", encode_manifest(entries))
    repo = CrashingRepository(fail_on_call=0)
    await handlers.handle_point_created(point_created(), repo=repo, store=store, batch_size=1000)
    assert repo.batch_sizes == [1000, 1000, 501]
    assert len(await children(repo, "p1", "d", 5000)) == 2500


async def test_second_point_created_of_an_indexed_point_writes_nothing(
    repo: InMemoryCatalogStore, store: InMemoryObjectStore
) -> None:
    # The same point in a second point-created (another event id): indexing is not repeated.
    await handlers.handle_point_created(point_created(), repo=repo, store=store)
    rows = dict(repo._state.tree)
    second = point_created()
    second.meta.event_id = "another-event"
    await handlers.handle_point_created(second, repo=repo, store=store)
    assert repo._state.tree == rows
    assert [p for (_, _), p in repo._state.search_points.items()] == ["p1"]


async def test_missing_manifest_is_recorded_not_retried(repo: InMemoryCatalogStore) -> None:
    await handlers.handle_point_created(point_created(), repo=repo, store=InMemoryObjectStore())
    p = await repo.get_point("p1")
    assert p is not None and not p.browsable
    assert p.index_error == "manifest 'manifests/p1' not found"
    assert (
        len(await repo.list_versions("i-1", accounts=None)) == 1
    )  # still listed (and restorable once the object shows up)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"NOPE" + b"\x01", "bad magic"),
        (encode_manifest([file_entry("b")]).replace(b"SRMF\x01", b"SRMF\x07"), "unsupported manifest format"),
        (b"SRMF\x01garbage", "corrupt manifest body"),
    ],
)
async def test_unreadable_manifest_is_recorded(repo: InMemoryCatalogStore, data: bytes, message: str) -> None:
    store = InMemoryObjectStore()
    await store.put("manifests/p1", data)
    await handlers.handle_point_created(point_created(), repo=repo, store=store)
    p = await repo.get_point("p1")
    assert p is not None and not p.browsable and p.index_error is not None and message in p.index_error


async def test_manifest_breaking_its_ordering_contract_is_recorded(repo: InMemoryCatalogStore) -> None:
    entries = [file_entry("b"), file_entry("a")]
    body = encode_manifest([entries[0]])
    # encode_manifest refuses unsorted input: build the body by hand.
    records = b"".join(encode_uvarint(len(e.SerializeToString())) + e.SerializeToString() for e in entries)
    data = body[:5] + zstandard.ZstdCompressor().compress(records)
    store = InMemoryObjectStore()
    await store.put("manifests/p1", data)
    await handlers.handle_point_created(point_created(), repo=repo, store=store)
    p = await repo.get_point("p1")
    assert p is not None and p.index_error is not None and "not sorted" in p.index_error
    assert await children(repo, "p1", "", 10) == []


@pytest.mark.parametrize(
    "entry",
    [
        file_entry("huge", FILE, size=1 << 63),
        common_pb2.FileEntry(path="weird-mode", type=FILE, mode=1 << 31),
        file_entry("a/../b", FILE),
        file_entry("a//b", FILE),
    ],
)
async def test_corrupt_entries_are_recorded_not_retried(
    repo: InMemoryCatalogStore, entry: common_pb2.FileEntry
) -> None:
    store = InMemoryObjectStore()
    await store.put("manifests/p1", encode_manifest([entry]))
    await handlers.handle_point_created(point_created(), repo=repo, store=store)
    p = await repo.get_point("p1")
    assert p is not None and not p.browsable and p.index_error is not None
    assert repr(entry.path) in p.index_error


async def test_event_without_required_fields_is_poison(repo: InMemoryCatalogStore, store: InMemoryObjectStore) -> None:
    event = point_created()
    event.ClearField("version_created_at")
    event.point_id = ""
    with pytest.raises(PoisonRecord, match="point_id, version_created_at"):
        await handlers.handle_point_created(event, repo=repo, store=store)


async def test_late_point_of_expired_version_is_not_indexed(
    repo: InMemoryCatalogStore, store: InMemoryObjectStore
) -> None:
    await handlers.handle_point_created(point_created("p0"), repo=repo, store=store)
    repo.mark_expired("v1", handlers.from_timestamp(point_created().version_created_at))
    await handlers.handle_point_created(point_created("p1"), repo=repo, store=store)
    p = await repo.get_point("p1")
    assert p is not None and p.expired and not p.browsable
    assert await children(repo, "p1", "", 10) == []


# --- read side ---------------------------------------------------------------


@pytest.fixture
async def indexed(repo: InMemoryCatalogStore, store: InMemoryObjectStore) -> InMemoryCatalogStore:
    await handlers.handle_point_created(point_created(), repo=repo, store=store)
    return repo


async def test_list_versions_requires_instance(repo: InMemoryCatalogStore) -> None:
    with pytest.raises(InvalidArgument, match="instance_id is required"):
        await handlers.list_versions(repo, "", call=call("ListVersions"))


async def test_get_point(indexed: InMemoryCatalogStore) -> None:
    assert (await handlers.get_point(indexed, "p1", call=call("GetPoint"))).point_id == "p1"
    with pytest.raises(NotFound, match="point 'nope' not found"):
        await handlers.get_point(indexed, "nope", call=call("GetPoint"))
    with pytest.raises(InvalidArgument, match="point_id is required"):
        await handlers.get_point(indexed, "", call=call("GetPoint"))


async def test_expired_point_is_not_found(indexed: InMemoryCatalogStore) -> None:
    indexed.mark_expired("v1", handlers.from_timestamp(point_created().version_created_at))
    with pytest.raises(NotFound, match="expired"):
        await handlers.get_point(indexed, "p1", call=call("GetPoint"))
    with pytest.raises(NotFound, match="expired"):
        await handlers.browse_point(indexed, "p1", "", call=call("BrowsePoint"))


@pytest.mark.parametrize("path", ["", "/"])
async def test_browse_root(indexed: InMemoryCatalogStore, path: str) -> None:
    rows, token = await handlers.browse_point(indexed, "p1", path, call=call("BrowsePoint"))
    assert [r.path for r in rows] == ["etc", "home"] and token == ""


@pytest.mark.parametrize("path", ["etc", "etc/"])
async def test_browse_directory(indexed: InMemoryCatalogStore, path: str) -> None:
    rows, _ = await handlers.browse_point(indexed, "p1", path, call=call("BrowsePoint"))
    assert [(r.path, r.type) for r in rows] == [("etc/hosts", FILE), ("etc/nginx", DIR)]


async def test_browse_pages_through_a_directory(repo: InMemoryCatalogStore) -> None:
    entries = [file_entry("d", DIR)] + [file_entry(f"d/{i:03d}") for i in range(25)]
    store = InMemoryObjectStore()
    await store.put("manifests/p1", encode_manifest(entries))
    await handlers.handle_point_created(point_created(), repo=repo, store=store)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        rows, token = await handlers.browse_point(
            repo, "p1", "d", page_size=10, page_token=token, call=call("BrowsePoint")
        )
        seen.extend(r.name for r in rows)
        pages += 1
        if not token:
            break
    assert seen == [f"{i:03d}" for i in range(25)] and pages == 3


async def test_page_size_is_capped(repo: InMemoryCatalogStore) -> None:
    entries = [file_entry(f"{i:05d}") for i in range(handlers.MAX_PAGE_SIZE + 5)]
    store = InMemoryObjectStore()
    await store.put("manifests/p1", encode_manifest(entries))
    await handlers.handle_point_created(point_created(), repo=repo, store=store)
    rows, token = await handlers.browse_point(repo, "p1", "", page_size=100_000, call=call("BrowsePoint"))
    assert len(rows) == handlers.MAX_PAGE_SIZE and token
    rows, token = await handlers.browse_point(repo, "p1", "", call=call("BrowsePoint"))
    assert len(rows) == handlers.DEFAULT_PAGE_SIZE and token


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../x", r"must not contain '\.' or '\.\.' segments"),
        ("etc/../../x", r"must not contain '\.' or '\.\.' segments"),
        ("./etc", r"must not contain '\.' or '\.\.' segments"),
        ("/etc", "without a leading '/'"),
        ("etc//nginx", "empty segment"),
        ("etc\x00", "NUL"),
    ],
)
async def test_browse_rejects_malformed_paths(indexed: InMemoryCatalogStore, path: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await handlers.browse_point(indexed, "p1", path, call=call("BrowsePoint"))


async def test_browse_unknown_point(indexed: InMemoryCatalogStore) -> None:
    with pytest.raises(NotFound, match="point 'nope' not found"):
        await handlers.browse_point(indexed, "nope", "", call=call("BrowsePoint"))


async def test_browse_missing_directory(indexed: InMemoryCatalogStore) -> None:
    with pytest.raises(NotFound, match="no directory 'var' in point 'p1'"):
        await handlers.browse_point(indexed, "p1", "var", call=call("BrowsePoint"))


@pytest.mark.parametrize("path", ["etc/hosts", "home/link"])
async def test_browse_a_non_directory(indexed: InMemoryCatalogStore, path: str) -> None:
    with pytest.raises(NotFound, match="is not a directory"):
        await handlers.browse_point(indexed, "p1", path, call=call("BrowsePoint"))


async def test_browse_rejects_foreign_or_garbage_token(indexed: InMemoryCatalogStore) -> None:
    for token in ["%%%", "bm90anNvbg", encode_page_token("p1", "home", "a.txt"), encode_page_token("p2", "", "a")]:
        with pytest.raises(InvalidArgument, match="page_token"):
            await handlers.browse_point(indexed, "p1", "", page_token=token, call=call("BrowsePoint"))


async def test_browse_before_indexing_finished(repo: InMemoryCatalogStore) -> None:
    async with repo.transaction() as tx:
        await tx.upsert_point(handlers.point_from_event(point_created()))
    with pytest.raises(FailedPrecondition, match="still being indexed"):
        await handlers.browse_point(repo, "p1", "", call=call("BrowsePoint"))
    async with repo.transaction() as tx:
        await tx.set_index_state("p1", browsable=False, error="manifest 'm' not found")
    with pytest.raises(FailedPrecondition, match="cannot be browsed: manifest 'm' not found"):
        await handlers.browse_point(repo, "p1", "", call=call("BrowsePoint"))


def test_point_from_event_maps_every_field() -> None:
    event = point_created(mount_point="/data")
    p = handlers.point_from_event(event)
    assert dataclasses.asdict(p) | {"created_at": None, "retain_until": None} == {
        "point_id": "p1",
        "version_id": "v1",
        "instance_id": "i-1",
        "account_id": "acct",
        "mount_point": "/data",
        "device": "/dev/vda1",
        "fs_type": "ext4",
        "capacity_bytes": 40 << 30,
        "manifest_key": "manifests/p1",
        "file_count": 5,
        "total_bytes": 2173,
        "created_at": None,
        "retain_until": None,
        "browsable": False,
        "index_error": None,
        "expired": False,
        "canceled": False,
        "tree": None,
    }
    assert p.created_at == handlers.from_timestamp(event.version_created_at)
