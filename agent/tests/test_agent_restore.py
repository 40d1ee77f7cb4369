"""Restore from the in-memory gateway: fidelity, path safety, conflict policy."""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import random
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import zstandard
from agent_fakes import KEY, FakeGateway, Point, run_backup_command, write_file
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_agent.backup import run_backup
from strongroom_agent.chunking import chunk_id
from strongroom_agent.exclusions import LinuxExclusions
from strongroom_agent.gateway_client import GatewayError
from strongroom_agent.jobs import MAX_REPORTED_FAILED_FILES, FileError, job_finished
from strongroom_agent.restore import destination as destination_module
from strongroom_agent.restore import fetch as fetch_module
from strongroom_agent.restore import job as job_module
from strongroom_agent.restore import run_restore

COMPLETE = common_pb2.JOB_STATUS_COMPLETE
PARTIAL = common_pb2.JOB_STATUS_PARTIAL_COMPLETE
FAILED = common_pb2.JOB_STATUS_FAILED
SKIP = gateway_pb2.CONFLICT_POLICY_SKIP
OVERWRITE = gateway_pb2.CONFLICT_POLICY_OVERWRITE
T0 = 1_500_000_000_000_000_000


async def backup_tree(root: Path) -> tuple[FakeGateway, str]:
    gateway = FakeGateway()
    fs = common_pb2.Filesystem(mount_point=str(root), device="/dev/vdz", fs_type="ext4")
    finished = await run_backup(
        run_backup_command(), client=gateway, points=[fs], exclusions=LinuxExclusions(), cancel=asyncio.Event()
    )
    assert finished.status == COMPLETE, finished
    return gateway, gateway.only_point().point_id


async def restore(gateway: FakeGateway, point_id: str, target: Path | str, **kwargs: Any) -> gateway_pb2.JobFinished:
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in gateway_pb2.RunRestore.DESCRIPTOR.fields_by_name}
    command = gateway_pb2.RunRestore(restore_job_id="r-1", point_id=point_id, target_path=str(target), **fields)
    return await run_restore(command, client=gateway, cancel=asyncio.Event(), **kwargs)


def make_tree(root: Path) -> None:
    rng = random.Random(4)
    write_file(str(root / "docs/report.txt"), b"lines\n" * 9000, mode=0o640, mtime_ns=T0 + 1)
    write_file(str(root / "docs/big.bin"), rng.randbytes(250_000), mode=0o600, mtime_ns=T0 + 2)
    write_file(str(root / "bin/tool"), b"#!/bin/sh\necho hi\n", mode=0o755, mtime_ns=T0 + 3)
    write_file(str(root / "empty"), b"", mode=0o444, mtime_ns=T0 + 4)
    write_file(str(root / "readonly/inside"), b"locked in", mtime_ns=T0 + 5)
    os.symlink("docs/report.txt", root / "link")
    os.utime(root / "link", ns=(T0 + 6, T0 + 6), follow_symlinks=False)
    os.chmod(root / "readonly", 0o555)
    os.utime(root / "readonly", ns=(T0 + 7, T0 + 7))
    os.chmod(root / "docs", 0o750)
    os.utime(root / "docs", ns=(T0 + 8, T0 + 8))
    os.utime(root / "bin", ns=(T0 + 9, T0 + 9))


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a restore must reproduce, per relative path (the root itself excluded)."""
    result: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                content: Any = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            else:
                content = None
            result[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_mtime_ns,
                st.st_uid,
                st.st_gid,
                content,
            )
    return result


async def test_restore_into_another_directory_is_identical(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    make_tree(source)
    target.mkdir()
    gateway, point_id = await backup_tree(source)
    finished = await restore(gateway, point_id, target, fetch_batch_bytes=20_000)
    assert finished.status == COMPLETE, finished.file_errors
    assert snapshot(target) == snapshot(source)
    assert finished.stats.files_restored == 6  # five files and one symlink
    assert finished.stats.bytes_restored == sum(len(v[5]) for v in snapshot(source).values() if isinstance(v[5], bytes))
    assert gateway.read_chunk_calls > 10  # the big file came in several bounded batches
    assert not [n for n in os.listdir(target / "docs") if n.startswith(".strongroom")]


async def test_restore_to_original_location(tmp_path: Path) -> None:
    source = tmp_path / "src"
    make_tree(source)
    gateway, point_id = await backup_tree(source)
    (source / "docs/report.txt").unlink()
    command = gateway_pb2.RunRestore(restore_job_id="r-2", point_id=point_id, source_mount_point=str(source))
    finished = await run_restore(command, client=gateway, cancel=asyncio.Event())
    assert finished.status == COMPLETE
    assert (source / "docs/report.txt").read_bytes() == b"lines\n" * 9000
    assert finished.stats.files_restored == 1 and finished.stats.files_skipped == 5


async def test_include_and_exclude(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    make_tree(source)
    target.mkdir()
    gateway, point_id = await backup_tree(source)
    finished = await restore(gateway, point_id, target, include_paths=["docs"], exclude_paths=["docs/big.bin"])
    assert finished.status == COMPLETE
    assert sorted(os.listdir(target)) == ["docs"]
    assert sorted(os.listdir(target / "docs")) == ["report.txt"]


async def test_missing_target_path_fails_clearly(tmp_path: Path) -> None:
    gateway = FakeGateway()
    finished = await restore(gateway, "point-1", tmp_path / "does-not-exist")
    assert finished.status == FAILED
    assert finished.error == f"restore path {tmp_path / 'does-not-exist'} does not exist on this instance"
    relative = await restore(gateway, "point-1", "relative/path")
    assert relative.status == FAILED and "not an absolute path" in relative.error


async def test_unknown_point_fails(tmp_path: Path) -> None:
    finished = await restore(FakeGateway(), "point-404", tmp_path)
    assert finished.status == FAILED and "NOT_FOUND" in finished.error


async def test_skip_leaves_existing_files_and_overwrite_replaces_them(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    make_tree(source)
    gateway, point_id = await backup_tree(source)
    write_file(str(target / "docs/report.txt"), b"local edit", mode=0o600)
    write_file(str(target / "empty"), b"not empty any more")

    skipped = await restore(gateway, point_id, target, conflict_policy=SKIP)
    assert skipped.status == COMPLETE
    assert (target / "docs/report.txt").read_bytes() == b"local edit"
    assert (target / "empty").read_bytes() == b"not empty any more"
    assert (target / "docs/big.bin").read_bytes() == (source / "docs/big.bin").read_bytes()
    assert skipped.stats.files_skipped == 2 and skipped.stats.files_restored == 4
    # SKIP leaves an existing directory's metadata alone.
    assert stat.S_IMODE(os.stat(target / "docs").st_mode) != 0o750

    default = await restore(gateway, point_id, target)  # unspecified policy means SKIP
    assert (target / "docs/report.txt").read_bytes() == b"local edit"
    assert default.stats.files_skipped == 6

    overwritten = await restore(gateway, point_id, target, conflict_policy=OVERWRITE)
    assert overwritten.status == COMPLETE
    assert snapshot(target) == snapshot(source)


def add_point(gateway: FakeGateway, entries: list[common_pb2.FileEntry]) -> str:
    for entry in entries:
        if entry.type == common_pb2.ENTRY_TYPE_FILE:
            data = f"content of {entry.path}".encode()
            cid = chunk_id(KEY, data)
            gateway.chunks[cid] = data
            entry.chunk_ids.append(cid)
            entry.size = len(data)
            entry.mode = 0o644
    point_id = f"point-{len(gateway.points) + 1}"
    gateway.points[point_id] = Point(point_id, "job", common_pb2.Filesystem(mount_point="/"), entries)
    return point_id


def file(path: str) -> common_pb2.FileEntry:
    return common_pb2.FileEntry(path=path, type=common_pb2.ENTRY_TYPE_FILE)


def directory(path: str) -> common_pb2.FileEntry:
    return common_pb2.FileEntry(path=path, type=common_pb2.ENTRY_TYPE_DIRECTORY, mode=0o755)


def symlink(path: str, target: str) -> common_pb2.FileEntry:
    return common_pb2.FileEntry(path=path, type=common_pb2.ENTRY_TYPE_SYMLINK, link_target=target, mode=0o777)


def tree_listing(root: Path) -> list[str]:
    return sorted(str(Path(d, n).relative_to(root)) for d, ds, fs in os.walk(root) for n in ds + fs)


async def test_restore_refuses_paths_that_escape(tmp_path: Path) -> None:
    target, outside = tmp_path / "dst", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    gateway = FakeGateway()
    point_id = add_point(
        gateway,
        [file("../outside/pwned"), file(f"{outside}/abs"), file("ok"), file("sub/../../outside/x"), file("sub/./y")],
    )
    finished = await restore(gateway, point_id, target, conflict_policy=OVERWRITE)
    assert finished.status == PARTIAL
    assert finished.stats.files_failed == 4 and finished.stats.files_restored == 1
    assert all("refusing unsafe path" in e for e in finished.file_errors)
    assert tree_listing(target) == ["ok"]
    assert tree_listing(outside) == []


async def test_restore_never_writes_through_a_restored_symlink(tmp_path: Path) -> None:
    target, outside = tmp_path / "dst", tmp_path / "outside"
    target.mkdir()
    write_file(str(outside / "passwd"), b"original")
    gateway = FakeGateway()
    # A malicious manifest: a symlink to outside, then entries "through" it.
    point_id = add_point(gateway, [symlink("evil", str(outside)), directory("evil/sub"), file("evil/passwd")])
    finished = await restore(gateway, point_id, target, conflict_policy=OVERWRITE)
    assert finished.status == PARTIAL
    assert finished.stats.files_failed == 2
    assert all("is not a directory" in e for e in finished.file_errors)
    assert (outside / "passwd").read_bytes() == b"original"
    assert tree_listing(outside) == ["passwd"]
    assert os.readlink(target / "evil") == str(outside)  # the symlink itself is restored, never followed


async def test_restore_never_follows_symlinks_already_in_the_destination(tmp_path: Path) -> None:
    target, outside = tmp_path / "dst", tmp_path / "outside"
    write_file(str(outside / "victim"), b"original")
    target.mkdir()
    os.symlink(outside, target / "docs")  # a directory the restore would write into
    os.symlink(outside / "victim", target / "report")  # a file the restore would overwrite
    gateway = FakeGateway()
    point_id = add_point(gateway, [directory("docs"), file("docs/victim"), file("report")])
    finished = await restore(gateway, point_id, target, conflict_policy=OVERWRITE)
    assert finished.status == PARTIAL
    assert (outside / "victim").read_bytes() == b"original"
    # The file's own name was a symlink: it is replaced by the file, the symlink's target untouched.
    assert not (target / "report").is_symlink()
    assert (target / "report").read_bytes() == b"content of report"
    assert sorted(e.split(":")[0] for e in finished.file_errors) == ["docs", "docs/victim"]


async def test_a_directory_in_the_way_is_a_file_error(tmp_path: Path) -> None:
    target = tmp_path / "dst"
    (target / "thing").mkdir(parents=True)
    write_file(str(target / "plain"), b"x")
    gateway = FakeGateway()
    point_id = add_point(gateway, [file("thing"), directory("plain"), file("plain/child")])
    finished = await restore(gateway, point_id, target, conflict_policy=OVERWRITE)
    # Every entry failed and nothing was restored: the job fails (ADR 0030), the per-file errors stay.
    assert finished.status == FAILED and finished.error.startswith("no file could be restored (3 failed")
    assert sorted(e.split(":")[0] for e in finished.file_errors) == ["plain", "plain/child", "thing"]
    assert (target / "plain").read_bytes() == b"x"


async def test_missing_chunk_is_a_file_error_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "dst"
    target.mkdir()
    gateway = FakeGateway()
    point_id = add_point(gateway, [file("a"), file("b")])
    del gateway.chunks[gateway.points[point_id].entries[0].chunk_ids[0]]
    finished = await restore(gateway, point_id, target)
    assert finished.status == FAILED and "chunk missing" in finished.error
    assert os.listdir(target) == []


class RecordingGateway(FakeGateway):
    """Records the ids of every ReadChunks call; optionally sets ``cancel`` when call ``cancel_at`` starts."""

    def __init__(self, cancel: asyncio.Event | None = None, cancel_at: int = 0) -> None:
        super().__init__()
        self.requests: list[list[bytes]] = []
        self._cancel, self._cancel_at = cancel, cancel_at

    async def read_chunks(self, restore_job_id: str, chunk_ids: Any) -> Any:
        self.requests.append(list(chunk_ids))
        if self._cancel is not None and len(self.requests) == self._cancel_at:
            self._cancel.set()
        async for item in super().read_chunks(restore_job_id, chunk_ids):
            yield item


def add_files(gateway: FakeGateway, tree: list[tuple[str, list[bytes] | None]]) -> str:
    """A point of directories (None) and files (their chunks' contents), mode 0o640, mtimes from T0."""
    entries = []
    for n, (path, pieces) in enumerate(tree):
        if pieces is None:
            entries.append(common_pb2.FileEntry(path=path, type=common_pb2.ENTRY_TYPE_DIRECTORY, mode=0o755))
            continue
        ids = []
        for piece in pieces:
            ids.append(chunk_id(KEY, piece))
            gateway.chunks[ids[-1]] = piece
        entries.append(
            common_pb2.FileEntry(
                path=path,
                type=common_pb2.ENTRY_TYPE_FILE,
                mode=0o640,
                mtime_ns=T0 + n,
                size=sum(len(p) for p in pieces),
                chunk_ids=ids,
            )
        )
    entries.sort(key=lambda e: e.path.encode())
    point_id = f"point-{len(gateway.points) + 1}"
    gateway.points[point_id] = Point(point_id, "job", common_pb2.Filesystem(mount_point="/"), entries)
    return point_id


def small_tree(files: int, per_dir: int = 100) -> list[tuple[str, list[bytes] | None]]:
    tree: list[tuple[str, list[bytes] | None]] = []
    for i in range(files):
        if i % per_dir == 0:
            tree.append((f"d{i // per_dir:03}", None))
        tree.append((f"d{i // per_dir:03}/f{i:05}", [f"file {i} ".encode() * (i % 7)]))
    return tree


async def test_many_small_files_come_in_a_handful_of_read_calls(tmp_path: Path) -> None:
    gateway = RecordingGateway()
    tree = small_tree(5000)
    point_id = add_files(gateway, tree)
    # A read-only directory whose files span several batches: its mode is applied after the last one.
    point = gateway.points[point_id]
    for entry in point.entries:
        if entry.path == "d010":
            entry.mode, entry.mtime_ns = 0o555, T0 - 5
    finished = await restore(gateway, point_id, tmp_path, fetch_batch_bytes=4000)
    assert finished.status == COMPLETE, finished.file_errors
    assert finished.stats.files_restored == 5000
    assert finished.stats.bytes_restored == sum(e.size for e in point.entries)
    for path, pieces in tree:
        if pieces is not None:
            assert (tmp_path / path).read_bytes() == b"".join(pieces)
    n = next(i for i, (path, _) in enumerate(tree) if path == "d010/f01000")
    st = os.stat(tmp_path / "d010/f01000")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, T0 + n)
    d010 = os.stat(tmp_path / "d010")
    assert (stat.S_IMODE(d010.st_mode), d010.st_mtime_ns) == (0o555, T0 - 5)
    # Batches are filled up to the byte budget; empty files (every 7th) need no chunks; ids are distinct.
    total = finished.stats.bytes_restored
    assert total // 4000 <= len(gateway.requests) <= total // 3900 + 1
    assert all(len(ids) == len(set(ids)) for ids in gateway.requests)
    assert not list(tmp_path.rglob(".strongroom*"))

    default_batches = RecordingGateway()
    again = tmp_path / "again"
    again.mkdir()
    finished = await restore(default_batches, add_files(default_batches, tree), again)
    assert finished.status == COMPLETE and finished.stats.files_restored == 5000
    assert len(default_batches.requests) == 2  # 5,000 small files, at most 4,096 per batch: two calls


async def test_a_chunk_shared_by_several_files_is_fetched_once_per_batch(tmp_path: Path) -> None:
    gateway = RecordingGateway()
    shared, other = b"shared block " * 50, b"other"
    point_id = add_files(
        gateway,
        [("a", [shared]), ("b", [other, shared]), ("c", [shared, shared, other]), ("d", [shared])],
    )
    finished = await restore(gateway, point_id, tmp_path)
    assert finished.status == COMPLETE
    assert (tmp_path / "a").read_bytes() == shared
    assert (tmp_path / "b").read_bytes() == other + shared
    assert (tmp_path / "c").read_bytes() == shared + shared + other
    assert (tmp_path / "d").read_bytes() == shared
    assert gateway.requests == [[chunk_id(KEY, shared), chunk_id(KEY, other)]]


async def test_conflicts_under_batching(tmp_path: Path) -> None:
    tree = small_tree(300, per_dir=50)
    gateway = RecordingGateway()
    point_id = add_files(gateway, tree)
    (tmp_path / "d000").mkdir()
    write_file(str(tmp_path / "d000/f00003"), b"local 3")
    write_file(str(tmp_path / "d002/f00120"), b"local 120")
    (tmp_path / "d005/f00299").mkdir(parents=True)  # a directory where a file goes
    (tmp_path / "d004").mkdir()
    os.symlink("/nonexistent", tmp_path / "d004/f00201")

    skipped = await restore(gateway, point_id, tmp_path, fetch_batch_bytes=500, conflict_policy=SKIP)
    assert skipped.status == COMPLETE, skipped.file_errors
    assert skipped.stats.files_skipped == 4 and skipped.stats.files_restored == 296
    assert (tmp_path / "d000/f00003").read_bytes() == b"local 3"
    assert (tmp_path / "d002/f00120").read_bytes() == b"local 120"
    assert os.path.islink(tmp_path / "d004/f00201")
    assert (tmp_path / "d001/f00050").read_bytes() == b"file 50 " * 1
    # Skipped files are not fetched.
    fetched = {c for ids in gateway.requests for c in ids}
    assert chunk_id(KEY, b"file 3 " * 3) not in fetched

    (tmp_path / "d001/f00050").write_bytes(b"changed")
    overwritten = await restore(gateway, point_id, tmp_path, fetch_batch_bytes=500, conflict_policy=OVERWRITE)
    assert overwritten.status == PARTIAL
    assert list(overwritten.file_errors) == ["d005/f00299: a directory is in the way"]
    assert overwritten.stats.files_restored == 299
    for path, pieces in tree:
        if pieces is not None and path != "d005/f00299":
            assert not os.path.islink(tmp_path / path)
            assert (tmp_path / path).read_bytes() == b"".join(pieces), path
    assert not [p for p in tmp_path.rglob(".strongroom*")]


async def test_a_chunk_that_does_not_decode_fails_only_its_files_and_writes_no_wrong_content(tmp_path: Path) -> None:
    class CorruptingGateway(FakeGateway):
        async def read_chunks(self, restore_job_id: str, chunk_ids: Any) -> Any:
            async for chunk in super().read_chunks(restore_job_id, chunk_ids):
                if self.chunks[chunk.chunk_id] == b"bad":
                    chunk = chunk._replace(raw_length=chunk.raw_length + 1)  # decodes short: refused
                yield chunk

    gateway = CorruptingGateway()
    point_id = add_files(gateway, [("a", [b"good"]), ("b", [b"bad"])])
    finished = await restore(gateway, point_id, tmp_path)
    assert finished.status == PARTIAL, finished
    [failed] = finished.failed_files
    assert failed.path == "b"
    assert failed.reason.startswith(f"chunk {chunk_id(KEY, b'bad').hex()} of this file is damaged in storage")
    assert "does not decode" in failed.reason and "expected 4" in failed.reason
    assert (tmp_path / "a").read_bytes() == b"good"
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("repeat", [100, 20_000], ids=["small-chunk", "large-chunk"])
@pytest.mark.parametrize("policy", [SKIP, OVERWRITE], ids=["skip", "overwrite"])
async def test_a_chunk_whose_body_does_not_inflate_fails_its_files_and_leaves_nothing_partial(
    tmp_path: Path, policy: int, repeat: int
) -> None:
    """Its header declares the right length, so the file is created; the write fails and the file goes again.

    A small chunk is inflated into new memory, a large one into the writer's buffer (ADR 0072)."""
    bad = b"".join(b"bad content, line %d\n" % n for n in range(repeat))

    class CorruptingGateway(FakeGateway):
        async def read_chunks(self, restore_job_id: str, chunk_ids: Any) -> Any:
            async for chunk in super().read_chunks(restore_job_id, chunk_ids):
                if self.chunks[chunk.chunk_id] == bad:
                    frame = zstandard.compress(bad)
                    chunk = chunk._replace(data=frame[:-8] + bytes(8), compression=gateway_pb2.CHUNK_COMPRESSION_ZSTD)
                yield chunk

    gateway = CorruptingGateway()
    tree: list[tuple[str, list[bytes] | None]] = [("d", None)]
    tree += [(f"d/f{n:03}", [f"good {n} ".encode() * 50, b"shared tail " * 40]) for n in range(40)]
    tree += [("d/g1", [b"head", bad]), ("d/g2", [bad, b"tail"]), ("d/z", [b"last"])]
    point_id = add_files(gateway, tree)
    write_file(str(tmp_path / "d/g2"), b"was here before")
    finished = await restore(gateway, point_id, tmp_path, conflict_policy=policy)
    assert finished.status == PARTIAL, finished
    failed = {f.path: f.reason for f in finished.failed_files}
    reason = f"chunk {chunk_id(KEY, bad).hex()} of this file is damaged in storage (does not decode: corrupt zstd"
    expected = {"d/g1"} | ({"d/g2"} if policy == OVERWRITE else set())
    assert set(failed) == expected and all(r.startswith(reason) for r in failed.values()), failed
    for path, pieces in tree:
        if pieces is not None and path not in ("d/g1", "d/g2"):
            assert (tmp_path / path).read_bytes() == b"".join(pieces), path
    assert not (tmp_path / "d/g1").exists()
    assert (tmp_path / "d/g2").read_bytes() == b"was here before"  # SKIP left it; OVERWRITE's temp file went
    assert not [p for p in tmp_path.rglob(".strongroom*")]


async def test_a_chunk_many_files_share_is_fetched_once_and_written_to_each(tmp_path: Path) -> None:
    shared = b"the same block in every file " * 200
    gateway = FakeGateway()
    tree: list[tuple[str, list[bytes] | None]] = [("d", None)]
    tree += [(f"d/f{n:03}", [shared] if n % 2 else [f"own {n}".encode(), shared, shared]) for n in range(200)]
    point_id = add_files(gateway, tree)
    asked: list[bytes] = []
    original = gateway.read_chunks

    async def read_chunks(restore_job_id: str, chunk_ids: Any) -> Any:
        asked.extend(chunk_ids)
        async for chunk in original(restore_job_id, chunk_ids):
            yield chunk

    gateway.read_chunks = read_chunks  # type: ignore[method-assign]
    finished = await restore(gateway, point_id, tmp_path)
    assert finished.status == COMPLETE, finished.file_errors
    assert finished.stats.files_restored == 200
    assert asked.count(chunk_id(KEY, shared)) == 1 and gateway.read_chunk_calls == 1
    for path, pieces in tree:
        if pieces is not None:
            assert (tmp_path / path).read_bytes() == b"".join(pieces), path


def damaged_tree(gateway: FakeGateway) -> tuple[str, list[tuple[str, list[bytes] | None]], set[str]]:
    """300 small files in three directories; files 8, 150 and 151 need a damaged chunk (151 shares 150's)."""
    tree = small_tree(300)
    files = {path: pieces for path, pieces in tree if pieces is not None}
    files["d001/f00151"] = [b"another piece", *files["d001/f00150"]]
    tree = [(path, files.get(path, pieces)) for path, pieces in tree]
    point_id = add_files(gateway, tree)
    for path in ("d000/f00008", "d001/f00150"):
        gateway.damaged[chunk_id(KEY, files[path][-1])] = "authentication failed"
    return point_id, tree, {"d000/f00008", "d001/f00150", "d001/f00151"}


async def test_a_damaged_chunk_fails_only_the_files_that_need_it(tmp_path: Path) -> None:
    gateway = FakeGateway()
    point_id, tree, broken = damaged_tree(gateway)
    finished = await restore(gateway, point_id, tmp_path, fetch_batch_bytes=2000)
    assert finished.status == PARTIAL, finished.error
    assert finished.stats.files_restored == 297 and finished.stats.files_failed == 3
    assert {f.path for f in finished.failed_files} == broken
    for failed in finished.failed_files:
        assert failed.reason.endswith("of this file is damaged in storage (authentication failed)"), failed.reason
    assert {e.split(": ", 1)[0] for e in finished.file_errors} == broken
    for path, pieces in tree:
        if pieces is None:
            continue
        if path in broken:
            assert not (tmp_path / path).exists()
        else:
            assert (tmp_path / path).read_bytes() == b"".join(pieces), path
    assert not list(tmp_path.rglob(".strongroom*"))


@pytest.mark.parametrize("policy", [SKIP, OVERWRITE], ids=["fresh", "overwrite"])
async def test_a_streamed_file_with_a_damaged_chunk_leaves_no_partial_content(tmp_path: Path, policy: int) -> None:
    gateway = FakeGateway()
    pieces = [bytes([n]) * 1000 for n in range(40)]
    point_id = add_files(gateway, [("big", pieces), ("small", [b"fine"])])
    gateway.damaged[chunk_id(KEY, pieces[30])] = "its pack is missing from storage"
    if policy == OVERWRITE:
        (tmp_path / "big").write_bytes(b"the operator's own file")
    # Batches of 4,000 bytes: "big" is streamed in windows; the damaged chunk is in a later one.
    finished = await restore(gateway, point_id, tmp_path, fetch_batch_bytes=4000, conflict_policy=policy)
    assert finished.status == PARTIAL
    reason = "its pack is missing from storage"
    assert [(f.path, f.reason) for f in finished.failed_files] == [
        ("big", f"chunk {chunk_id(KEY, pieces[30]).hex()} of this file is damaged in storage ({reason})")
    ]
    assert (tmp_path / "small").read_bytes() == b"fine"
    if policy == OVERWRITE:
        assert (tmp_path / "big").read_bytes() == b"the operator's own file"  # never replaced by a partial file
    else:
        assert not (tmp_path / "big").exists()
    assert not list(tmp_path.rglob(".strongroom*"))


async def test_a_restore_where_every_file_is_damaged_fails(tmp_path: Path) -> None:
    gateway = FakeGateway()
    point_id = add_files(gateway, [("d", None), ("d/a", [b"one"]), ("d/b", [b"two"])])
    for piece in (b"one", b"two"):
        gateway.damaged[chunk_id(KEY, piece)] = "authentication failed"
    finished = await restore(gateway, point_id, tmp_path)
    assert finished.status == FAILED
    assert finished.error.startswith("no file could be restored (2 failed; first: d/a: chunk ")
    assert [f.path for f in finished.failed_files] == ["d/a", "d/b"]
    assert os.listdir(tmp_path / "d") == []


def test_reported_failed_files_are_bounded() -> None:
    errors = [FileError(f"dir/file-{n}", "chunk x of this file is damaged in storage (y)") for n in range(5000)]
    finished = job_finished("r-1", PARTIAL, common_pb2.JobStats(), errors)
    assert finished.stats.files_failed == 5000
    assert len(finished.failed_files) == MAX_REPORTED_FAILED_FILES
    assert (finished.failed_files[0].path, finished.failed_files[0].reason) == ("dir/file-0", errors[0].reason)
    assert len(finished.file_errors) == 100
    long = [FileError("p" * 4000, "r" * 4000) for _ in range(100)]
    assert 30 <= len(job_finished("r-1", PARTIAL, common_pb2.JobStats(), long).failed_files) <= 33


def test_a_failed_file_whose_name_is_not_utf8_is_reported_with_escapes() -> None:
    """A host path that is not UTF-8 (``os.fsdecode``'s surrogates) must not fail the job's report."""
    path = os.fsdecode(b"/data/bad-\xff-name")
    finished = job_finished("b-1", PARTIAL, common_pb2.JobStats(), [FileError(path, "name is not valid UTF-8")])
    assert [(f.path, f.reason) for f in finished.failed_files] == [("/data/bad-\\xff-name", "name is not valid UTF-8")]
    assert list(finished.file_errors) == ["/data/bad-\\xff-name: name is not valid UTF-8"]


async def test_a_chunk_the_gateway_does_not_return_fails_only_its_files(tmp_path: Path) -> None:
    class ForgetfulGateway(FakeGateway):
        async def read_chunks(self, restore_job_id: str, chunk_ids: Any) -> Any:
            async for chunk in super().read_chunks(restore_job_id, chunk_ids):
                if self.chunks[chunk.chunk_id] != b"lost":
                    yield chunk

    gateway = ForgetfulGateway()
    point_id = add_files(gateway, [("a", [b"kept"]), ("b", [b"lost"]), ("c", [b"kept", b"kept"])])
    finished = await restore(gateway, point_id, tmp_path)
    assert finished.status == PARTIAL
    assert list(finished.file_errors) == [f"b: gateway did not return chunk {chunk_id(KEY, b'lost').hex()}"]
    assert sorted(os.listdir(tmp_path)) == ["a", "c"]


async def test_cancel_restore(tmp_path: Path) -> None:
    target = tmp_path / "dst"
    target.mkdir()
    cancel = asyncio.Event()
    gateway = RecordingGateway(cancel, cancel_at=6)
    point_id = add_point(gateway, [file(f"f{i:04}") for i in range(2000)])
    command = gateway_pb2.RunRestore(restore_job_id="r", point_id=point_id, target_path=str(target))
    batch = 20 * len("content of f0000")  # 20 files per batch
    finished = await asyncio.wait_for(run_restore(command, client=gateway, cancel=cancel, fetch_batch_bytes=batch), 5)
    assert finished.status == common_pb2.JOB_STATUS_CANCELED
    # Cancel came as the sixth batch was fetched: at most the batches before it (and not nothing) were written.
    restored = os.listdir(target)
    assert 0 < len(restored) <= 5 * 20
    assert len(gateway.requests) <= 7
    assert not [n for n in restored if n.startswith(".strongroom")]
    for name in restored:
        assert (target / name).read_bytes() == f"content of {name}".encode()


class Renames:
    """Counts the renames the restore makes (a fresh file is created in place, never renamed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        self._rename = os.rename
        monkeypatch.setattr(destination_module.os, "rename", self.rename)

    def rename(self, src: Any, dst: Any, **kwargs: Any) -> None:
        self.names.append(str(dst))
        self._rename(src, dst, **kwargs)


async def test_a_fresh_file_is_written_in_place_with_its_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renames = Renames(monkeypatch)
    gateway = FakeGateway()
    point_id = add_files(gateway, [("d", None), ("d/small", [b"small content"]), ("d/large", [b"x" * 600, b"y" * 600])])
    finished = await restore(gateway, point_id, tmp_path, fetch_batch_bytes=1000)  # "d/large" is streamed
    assert finished.status == COMPLETE, finished.file_errors
    for name, content, mtime in (("small", b"small content", T0 + 1), ("large", b"x" * 600 + b"y" * 600, T0 + 2)):
        st = os.stat(tmp_path / "d" / name)
        assert (tmp_path / "d" / name).read_bytes() == content
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, mtime)
    assert renames.names == []
    assert sorted(os.listdir(tmp_path / "d")) == ["large", "small"]

    # OVERWRITE of an existing file still goes through a temporary file and a rename.
    (tmp_path / "d/small").write_bytes(b"local")
    overwritten = await restore(gateway, point_id, tmp_path, fetch_batch_bytes=1000, conflict_policy=OVERWRITE)
    assert overwritten.status == COMPLETE and overwritten.stats.files_restored == 2
    assert (tmp_path / "d/small").read_bytes() == b"small content"
    assert sorted(renames.names) == ["large", "small"]
    assert sorted(os.listdir(tmp_path / "d")) == ["large", "small"]


async def test_a_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain_write = destination_module.Destination.write

    def failing_write(fd: int, data: Any) -> None:
        pieces = list(data)
        if pieces and bytes(pieces[0]).startswith(b"doomed"):  # a decoded piece is a view of the decode buffer
            os.write(fd, pieces[0][:3])  # part of the content is on disk already
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        plain_write(fd, pieces)

    monkeypatch.setattr(destination_module.Destination, "write", staticmethod(failing_write))
    gateway = FakeGateway()
    point_id = add_files(gateway, [("a", [b"fine"]), ("b", [b"doomed small"]), ("c", [b"fine too"])])
    finished = await restore(gateway, point_id, tmp_path)
    assert finished.status == PARTIAL
    assert list(finished.file_errors) == [f"b: {os.strerror(errno.ENOSPC)}"]
    assert sorted(os.listdir(tmp_path)) == ["a", "c"]

    # The same for a file streamed in windows, created in place and failing in its first window.
    large = tmp_path / "large"
    large.mkdir()
    point_id = add_files(gateway, [("big", [b"doomed" + b"z" * 700, b"w" * 700])])
    finished = await restore(gateway, point_id, large, fetch_batch_bytes=1000)
    assert finished.status == FAILED and list(finished.file_errors) == [f"big: {os.strerror(errno.ENOSPC)}"]
    assert os.listdir(large) == []


async def test_a_streamed_file_that_fails_midway_is_removed(tmp_path: Path) -> None:
    class FailingGateway(FakeGateway):
        async def read_chunks(self, restore_job_id: str, chunk_ids: Any) -> Any:
            if self.read_chunk_calls >= 1:
                raise GatewayError("UNAVAILABLE", "connection reset")
            async for chunk in super().read_chunks(restore_job_id, chunk_ids):
                yield chunk

    gateway = FailingGateway()
    point_id = add_files(gateway, [("big", [bytes([n]) * 600 for n in range(5)])])
    finished = await restore(gateway, point_id, tmp_path, fetch_batch_bytes=1000)  # windows of one chunk
    assert finished.status == FAILED and "connection reset" in finished.error
    assert gateway.read_chunk_calls == 1  # the first window was written under the final name
    assert os.listdir(tmp_path) == []


async def test_a_streamed_file_fetches_its_next_window_while_one_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each window's write waits (in its thread) until the next window's ReadChunks has started."""
    started = [threading.Event() for _ in range(6)]

    class CountingGateway(FakeGateway):
        async def read_chunks(self, restore_job_id: str, chunk_ids: Any) -> Any:
            started[self.read_chunk_calls].set()
            async for chunk in super().read_chunks(restore_job_id, chunk_ids):
                yield chunk

    original = fetch_module.Fetcher._decode_and_write
    overlapped: list[bool] = []

    def decode_and_write(self: fetch_module.Fetcher, fd: int, wanted: list[bytes], fetched: dict[bytes, Any]) -> int:
        window = len(overlapped)
        overlapped.append(window == 4 or started[window + 1].wait(5))  # the last window has no next one
        return original(self, fd, wanted, fetched)

    monkeypatch.setattr(fetch_module.Fetcher, "_decode_and_write", decode_and_write)
    gateway = CountingGateway()
    contents = [bytes([n]) * 600 for n in range(5)]
    point_id = add_files(gateway, [("big", contents)])
    finished = await restore(gateway, point_id, tmp_path, fetch_batch_bytes=1000)  # windows of one chunk
    assert finished.status == COMPLETE, finished.file_errors
    assert overlapped == [True] * 5 and gateway.read_chunk_calls == 5
    assert (tmp_path / "big").read_bytes() == b"".join(contents)


class LargeAfterSmallGateway(FakeGateway):
    """Holds every read of a large file's window until a read of small files was answered (the lane's test)."""

    def __init__(self) -> None:
        super().__init__()
        self.large: set[bytes] = set()  # the large files' chunk ids
        self.small_read = asyncio.Event()
        self.fail_large = False

    async def read_chunks(self, restore_job_id: str, chunk_ids: Any) -> Any:
        if self.large.intersection(chunk_ids):
            await asyncio.wait_for(self.small_read.wait(), 5)
            if self.fail_large:
                raise GatewayError("UNAVAILABLE", "connection reset")
        async for chunk in super().read_chunks(restore_job_id, chunk_ids):
            yield chunk
        if not self.large.intersection(chunk_ids):
            self.small_read.set()


def large_and_small(gateway: LargeAfterSmallGateway, large_files: int = 1) -> str:
    """``d/`` (read-only, an old mtime) holding large files and small ones after them, then ``e/`` with small files."""
    tree: list[tuple[str, list[bytes] | None]] = [("d", None)]
    tree += [(f"d/a-large-{n}", [bytes([n]) * 700, bytes([n + 100]) * 700]) for n in range(large_files)]
    tree += [("d/b-small", [b"small in d"]), ("e", None), ("e/c-small", [b"small in e"])]
    point_id = add_files(gateway, tree)
    for entry in gateway.points[point_id].entries:
        if entry.path.startswith("d/a-large"):
            gateway.large.update(entry.chunk_ids)
        if entry.path == "d":
            entry.mode, entry.mtime_ns = 0o555, T0 - 5
    return point_id


async def test_the_walk_goes_on_with_the_small_files_while_a_large_file_streams(tmp_path: Path) -> None:
    """A large file's windows are only answered once a batch of the small files after it was read: a walk
    that waited for the large file first would never get there (ADR 0076). Its directory's metadata
    still waits for it."""
    gateway = LargeAfterSmallGateway()
    point_id = large_and_small(gateway)
    finished = await restore(gateway, point_id, tmp_path, fetch_batch_bytes=1000)  # "d/a-large-0" is streamed
    assert finished.status == COMPLETE, finished.file_errors
    assert finished.stats.files_restored == 3
    assert finished.stats.bytes_restored == 1400 + len(b"small in d") + len(b"small in e")
    assert (tmp_path / "d/a-large-0").read_bytes() == bytes([0]) * 700 + bytes([100]) * 700
    assert (tmp_path / "d/b-small").read_bytes() == b"small in d"
    assert (tmp_path / "e/c-small").read_bytes() == b"small in e"
    d = os.stat(tmp_path / "d")
    assert (stat.S_IMODE(d.st_mode), d.st_mtime_ns) == (0o555, T0 - 5)  # applied after the large file
    os.chmod(tmp_path / "d", 0o755)


async def restore_through_a_queue_of_one(
    monkeypatch: pytest.MonkeyPatch, target: Path, large_files: int, *, fail: bool = False
) -> gateway_pb2.JobFinished:
    """``large_and_small`` restored with room for one large file in the lane's queue, nothing held back."""
    monkeypatch.setattr(job_module, "LARGE_FILES_AHEAD", 1)
    gateway = LargeAfterSmallGateway()
    gateway.small_read.set()
    gateway.fail_large = fail
    point_id = large_and_small(gateway, large_files=large_files)
    return await asyncio.wait_for(restore(gateway, point_id, target, fetch_batch_bytes=1000), 10)


async def test_large_files_wait_for_the_lane_in_order_and_a_bounded_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished = await restore_through_a_queue_of_one(monkeypatch, tmp_path, 4)
    assert finished.status == COMPLETE, finished.file_errors
    assert finished.stats.files_restored == 6
    for n in range(4):
        assert (tmp_path / f"d/a-large-{n}").read_bytes() == bytes([n]) * 700 + bytes([n + 100]) * 700
    d = os.stat(tmp_path / "d")
    assert (stat.S_IMODE(d.st_mode), d.st_mtime_ns) == (0o555, T0 - 5)
    os.chmod(tmp_path / "d", 0o755)


async def test_a_gateway_failure_in_the_large_file_lane_fails_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also while the walk waits for room in the lane: it sees the failure instead of waiting for ever."""
    finished = await restore_through_a_queue_of_one(monkeypatch, tmp_path, 3, fail=True)
    assert finished.status == FAILED and "connection reset" in finished.error
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith("a-large") or p.name.startswith(".strongroom")]
    os.chmod(tmp_path / "d", 0o755)


class RacingGateway(FakeGateway):
    """Creates ``path`` below ``root`` on the first read, after the restore checked that the name was free."""

    def __init__(self, root: Path, path: str) -> None:
        super().__init__()
        self.root, self.path = root, path

    async def read_chunks(self, restore_job_id: str, chunk_ids: Any) -> Any:
        if not (self.root / self.path).exists():
            write_file(str(self.root / self.path), b"appeared meanwhile")
        async for chunk in super().read_chunks(restore_job_id, chunk_ids):
            yield chunk


@pytest.mark.parametrize("policy", [SKIP, OVERWRITE], ids=["skip", "overwrite"])
async def test_a_name_taken_after_the_check_follows_the_conflict_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: int
) -> None:
    renames = Renames(monkeypatch)
    gateway = RacingGateway(tmp_path, "b")
    point_id = add_files(gateway, [("a", [b"alpha"]), ("b", [b"bravo"])])
    finished = await restore(gateway, point_id, tmp_path, conflict_policy=policy)
    assert finished.status == COMPLETE, finished.file_errors
    assert (tmp_path / "a").read_bytes() == b"alpha"
    if policy == SKIP:
        assert (tmp_path / "b").read_bytes() == b"appeared meanwhile"
        assert (finished.stats.files_skipped, finished.stats.files_restored) == (1, 1)
        assert renames.names == []
    else:
        assert (tmp_path / "b").read_bytes() == b"bravo"
        assert (finished.stats.files_skipped, finished.stats.files_restored) == (0, 2)
        assert renames.names == ["b"]  # "a" was fresh: written in place
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


@pytest.mark.parametrize("policy", [SKIP, OVERWRITE], ids=["skip", "overwrite"])
async def test_a_streamed_file_whose_name_was_taken_after_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: int
) -> None:
    monkeypatch.setattr(destination_module.Destination, "existing", lambda self, parts: None)  # the check saw nothing
    write_file(str(tmp_path / "big"), b"appeared meanwhile")
    gateway = FakeGateway()
    point_id = add_files(gateway, [("big", [b"p" * 700, b"q" * 700])])
    finished = await restore(gateway, point_id, tmp_path, fetch_batch_bytes=1000, conflict_policy=policy)
    assert finished.status == COMPLETE, finished.file_errors
    expected = b"appeared meanwhile" if policy == SKIP else b"p" * 700 + b"q" * 700
    assert (tmp_path / "big").read_bytes() == expected
    assert finished.stats.files_skipped == (1 if policy == SKIP else 0)
    assert os.listdir(tmp_path) == ["big"]


async def test_temporary_names_skip_a_leftover_with_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(destination_module, "_temp_numbers", itertools.count())
    leftover = tmp_path / f".strongroom-restore-{os.getpid()}-0.tmp"
    leftover.write_bytes(b"from a crashed run")
    write_file(str(tmp_path / "a"), b"old")
    gateway = FakeGateway()
    point_id = add_files(gateway, [("a", [b"new"])])
    finished = await restore(gateway, point_id, tmp_path, conflict_policy=OVERWRITE)
    assert finished.status == COMPLETE, finished.file_errors
    assert (tmp_path / "a").read_bytes() == b"new"
    assert leftover.read_bytes() == b"from a crashed run"
    assert sorted(os.listdir(tmp_path)) == [leftover.name, "a"]


class Calls:
    """Records the first argument of every call to ``os.<name>`` made through the restore module."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.args: list[Any] = []
        real = getattr(os, name)

        def record(*args: Any, **kwargs: Any) -> Any:
            self.args.append(args[0])
            return real(*args, **kwargs)

        monkeypatch.setattr(destination_module.os, name, record)


@pytest.mark.parametrize("policy", [SKIP, OVERWRITE], ids=["skip", "overwrite"])
async def test_files_in_a_directory_the_restore_created_are_not_checked_but_still_never_clobbered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: int
) -> None:
    stats = Calls(monkeypatch, "stat")
    gateway = RacingGateway(tmp_path, "d/b")  # appears in the new directory before the batch is written
    point_id = add_files(gateway, [("d", None), ("d/a", [b"alpha"]), ("d/b", [b"bravo"]), ("top", [b"top"])])
    finished = await restore(gateway, point_id, tmp_path, conflict_policy=policy)
    assert finished.status == COMPLETE, finished.file_errors
    assert "a" not in stats.args and "b" not in stats.args
    assert "top" in stats.args  # the destination root was not created by the restore: checked
    assert (tmp_path / "d/a").read_bytes() == b"alpha"
    assert (tmp_path / "d/b").read_bytes() == (b"appeared meanwhile" if policy == SKIP else b"bravo")
    assert finished.stats.files_skipped == (1 if policy == SKIP else 0)
    assert sorted(os.listdir(tmp_path / "d")) == ["a", "b"]


async def test_a_fresh_file_gets_its_mode_at_creation_when_the_umask_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chmods = Calls(monkeypatch, "fchmod")
    gateway = FakeGateway()
    point_id = add_files(gateway, [("plain", [b"p"]), ("readonly", [b"r"]), ("shared", [b"s"]), ("setuid", [b"u"])])
    modes = {"plain": 0o640, "readonly": 0o444, "shared": 0o666, "setuid": 0o4755}
    for entry in gateway.points[point_id].entries:
        entry.mode = modes[entry.path]
    old = os.umask(0o022)
    try:
        finished = await restore(gateway, point_id, tmp_path, as_root=False)  # root always chmods after chown
    finally:
        os.umask(old)
    assert finished.status == COMPLETE, finished.file_errors
    for name, mode in modes.items():
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name
        assert (tmp_path / name).read_bytes() == {"setuid": b"u"}.get(name, name[0].encode())
    # Only the modes the umask would cut (0666) or that carry set-id bits need an fchmod.
    assert len(chmods.args) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="owners are only restored as root")
async def test_as_root_a_file_that_gets_its_owner_at_creation_is_not_chowned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chowns = Calls(monkeypatch, "fchown")
    chmods = Calls(monkeypatch, "fchmod")
    gateway = FakeGateway()
    point_id = add_files(
        gateway,
        [("d", None), ("d/mine", [b"m"]), ("d/other", [b"o"]), ("d/ours", [b"g"]), ("top", [b"t"])],
    )
    owners = {"d/mine": (os.geteuid(), os.getegid()), "d/other": (1234, 4321), "d/ours": (os.geteuid(), 4321)}
    for entry in gateway.points[point_id].entries:
        entry.uid, entry.gid = owners.get(entry.path, (os.geteuid(), os.getegid()))
    old = os.umask(0o022)
    try:
        finished = await restore(gateway, point_id, tmp_path, as_root=True)
    finally:
        os.umask(old)
    assert finished.status == COMPLETE, finished.file_errors
    for path, (uid, gid) in owners.items():
        st = os.stat(tmp_path / path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o640), path
    # "d/mine" is created in a directory of this restore with its owner and mode: no fchown, no fchmod.
    # "top" is in the destination root, which the restore did not create: chowned as before.
    assert len(chowns.args) == 3 + 1  # d/other, d/ours, top, and the directory d
    assert len(chmods.args) == 3 + 1


@pytest.mark.skipif(os.geteuid() != 0, reason="owners are only restored as root")
async def test_as_root_a_directory_that_passes_on_another_group_still_gets_the_entrys_group(tmp_path: Path) -> None:
    # The destination root hands its group and set-gid bit down to the directory the restore creates,
    # so a file created there would get group 4321, not the entry's: it must still be chowned.
    os.chown(tmp_path, -1, 4321)
    os.chmod(tmp_path, 0o2755)
    gateway = FakeGateway()
    point_id = add_files(gateway, [("d", None), ("d/f", [b"f"])])
    for entry in gateway.points[point_id].entries:
        entry.uid, entry.gid = os.geteuid(), os.getegid()
    finished = await restore(gateway, point_id, tmp_path, as_root=True)
    assert finished.status == COMPLETE, finished.file_errors
    st = os.stat(tmp_path / "d/f")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
