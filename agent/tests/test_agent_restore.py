"""Restore from the in-memory gateway: fidelity, path safety, conflict policy."""

from __future__ import annotations

import asyncio
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest
from agent_fakes import KEY, FakeGateway, Point, run_backup_command, write_file
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_agent.backup import run_backup
from strongroom_agent.chunking import chunk_id
from strongroom_agent.exclusions import LinuxExclusions
from strongroom_agent.restore import UnsafePath, run_restore, safe_parts

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


def test_safe_parts() -> None:
    assert safe_parts("") == []
    assert safe_parts("a/b c/d") == ["a", "b c", "d"]
    for bad in ["/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", "..", "a\x00b"]:
        with pytest.raises(UnsafePath):
            safe_parts(bad)


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
    assert finished.status == PARTIAL
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


async def test_cancel_restore(tmp_path: Path) -> None:
    target = tmp_path / "dst"
    target.mkdir()
    cancel = asyncio.Event()

    class CancelingGateway(FakeGateway):
        async def read_chunks(self, restore_job_id: str, chunk_ids: Any) -> Any:
            if self.read_chunk_calls == 5:
                cancel.set()
            async for item in super().read_chunks(restore_job_id, chunk_ids):
                yield item

    gateway = CancelingGateway()
    point_id = add_point(gateway, [file(f"f{i:04}") for i in range(2000)])
    command = gateway_pb2.RunRestore(restore_job_id="r", point_id=point_id, target_path=str(target))
    finished = await asyncio.wait_for(run_restore(command, client=gateway, cancel=cancel), 5)
    assert finished.status == common_pb2.JOB_STATUS_CANCELED
    assert 4 <= len(os.listdir(target)) <= 6
    assert not [n for n in os.listdir(target) if n.startswith(".strongroom")]
