"""Filesystem object store details: key validation, on-disk layout, atomicity, the read-only belt."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from strongroom_platform.clock import utc
from strongroom_platform.objectstore_fs import FilesystemObjectStore, key_to_parts
from strongroom_platform.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(utc(2026, 3, 1))


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> FilesystemObjectStore:
    return FilesystemObjectStore(tmp_path, clock)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("a//b", "empty segment"),
        ("a/b/", "empty segment"),
        ("../escape", r"'\.' or '\.\.'"),
        ("a/../../escape", r"'\.' or '\.\.'"),
        ("a/./b", r"'\.' or '\.\.'"),
        ("tab\there", "printable ASCII"),
        ("caf\u00e9", "printable ASCII"),
        ("x" * 201, "longer than"),
    ],
)
async def test_bad_keys_are_rejected_before_touching_disk(
    store: FilesystemObjectStore, tmp_path: Path, key: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        key_to_parts(key)
    for call in (store.put(key, b"x"), store.get(key), store.stat(key), store.delete(key)):
        with pytest.raises(ValueError, match=problem):
            await call
    assert list(tmp_path.iterdir()) == []


def test_valid_keys_split_on_slashes() -> None:
    assert key_to_parts("packs/ab/abcdef.pack") == ["packs", "ab", "abcdef.pack"]
    assert key_to_parts("a..b/.hidden/x y") == ["a..b", ".hidden", "x y"]


async def test_layout_keeps_keys_inside_root_and_reversible(store: FilesystemObjectStore, tmp_path: Path) -> None:
    await store.put("a", b"file")
    await store.put("a/b", b"below")  # allowed here even though S3 on POSIX refuses it
    await store.put("x.d/y.obj", b"suffix look-alikes")
    files = sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and ".versions" not in str(p)
    )
    assert files == ["a.d/b.obj", "a.obj", "x.d.d/y.obj.obj"]
    # Every version is also kept by id, beside the key, in a directory that is never listed.
    versions = sorted(str(p.parent.relative_to(tmp_path)) for p in tmp_path.rglob("*.versions/*.obj"))
    assert versions == ["a.d/b.versions", "a.versions", "x.d.d/y.obj.versions"]
    assert [k async for k in store.list("")] == ["a", "a/b", "x.d/y.obj"]
    assert await store.get("x.d/y.obj") == b"suffix look-alikes"


async def test_retention_lives_in_a_sidecar_and_locked_data_is_read_only(
    store: FilesystemObjectStore, tmp_path: Path, clock: FakeClock
) -> None:
    until = utc(2026, 4, 1)
    await store.put("p/locked", b"data", retain_until=until)
    await store.put("p/open", b"data")
    data, sidecar = tmp_path / "p.d" / "locked.obj", tmp_path / "p.d" / "locked.lock.json"
    assert sidecar.read_text() == '{"retain_until": "2026-04-01T00:00:00+00:00"}'
    assert stat.S_IMODE(data.stat().st_mode) & 0o222 == 0
    assert stat.S_IMODE((tmp_path / "p.d" / "open.obj").stat().st_mode) & 0o200
    assert not (tmp_path / "p.d" / "open.lock.json").exists()
    # A second store on the same directory (a restarted process) sees the same lock.
    again = FilesystemObjectStore(tmp_path, clock)
    assert (await again.stat("p/locked")).retain_until == until


async def test_overwrite_after_expiry_and_delete_remove_the_sidecar(
    store: FilesystemObjectStore, tmp_path: Path, clock: FakeClock
) -> None:
    await store.put("p/x", b"old", retain_until=utc(2026, 3, 2))
    clock.set(utc(2026, 3, 3))
    await store.put("p/x", b"new")  # lock expired: replaced, now unlocked
    assert await store.get("p/x") == b"new"
    assert (await store.stat("p/x")).retain_until is None
    assert not (tmp_path / "p.d" / "x.lock.json").exists()
    await store.put("p/x", b"newer", retain_until=utc(2026, 3, 4))
    clock.set(utc(2026, 3, 5))
    await store.delete("p/x")
    assert [p.name for p in (tmp_path / "p.d").iterdir()] == []


async def test_temporary_files_are_never_listed_or_left_behind(store: FilesystemObjectStore, tmp_path: Path) -> None:
    await store.put("t/obj", b"1")
    (tmp_path / "t.d" / ".obj.obj.0123.tmp").write_bytes(b"partial write of a crashed process")
    assert [k async for k in store.list("t/")] == ["t/obj"]
    await store.put("t/obj", b"2")
    assert sorted(p.name for p in (tmp_path / "t.d").iterdir()) == [".obj.obj.0123.tmp", "obj.obj", "obj.versions"]
    assert [p.suffix for p in (tmp_path / "t.d" / "obj.versions").iterdir()] == [".obj", ".obj"]


async def test_failed_write_leaves_the_old_object(
    store: FilesystemObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.put("w/obj", b"original")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        await store.put("w/obj", b"replacement")
    monkeypatch.undo()
    assert await store.get("w/obj") == b"original"
    assert sorted(p.name for p in (tmp_path / "w.d").iterdir()) == ["obj.obj", "obj.versions"]
    assert not list(tmp_path.rglob("*.tmp"))  # the temp file was removed


async def test_naive_retention_dates_are_rejected(store: FilesystemObjectStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.put("n/x", b"x", retain_until=dt.datetime(2026, 5, 1))
