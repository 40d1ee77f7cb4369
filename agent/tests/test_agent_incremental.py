"""Forever incremental: the local cache of the last committed point, and change-only commits."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from pathlib import Path
from typing import Any

from agent_fakes import REPOSITORY, FakeGateway, entries_by_path, run_backup_command, write_file
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_agent import cache
from strongroom_agent.backup import PipelineLimits, run_backup
from strongroom_agent.chunking import ChunkParams
from strongroom_agent.exclusions import LinuxExclusions

COMPLETE = common_pb2.JOB_STATUS_COMPLETE
PARTIAL = common_pb2.JOB_STATUS_PARTIAL_COMPLETE
# Files in these tests are written just before the backup; no racy window unless a test wants one.
NO_RACY = PipelineLimits(racy_window_ns=0)
PARAMS = ChunkParams.from_proto(REPOSITORY)


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def filesystem(root: Path) -> common_pb2.Filesystem:
    return common_pb2.Filesystem(mount_point=str(root), device="/dev/vdz", fs_type="ext4", capacity_bytes=1 << 30)


async def backup(
    gateway: FakeGateway, root: Path, state: Path | None, job: str, **kwargs: Any
) -> gateway_pb2.JobFinished:
    command = kwargs.pop("command", None) or run_backup_command(job)
    kwargs.setdefault("exclusions", LinuxExclusions())
    kwargs.setdefault("cancel", asyncio.Event())
    kwargs.setdefault("limits", NO_RACY)
    return await run_backup(
        command, client=gateway, points=[filesystem(root)], state_dir=str(state) if state else None, **kwargs
    )


def make_tree(root: Path) -> None:
    for d in range(5):
        for f in range(8):
            write_file(str(root / f"d{d}/f{f}.bin"), rand(3000 + 700 * f, d * 100 + f))
    write_file(str(root / "gone/sub/x"), b"to be deleted")
    write_file(str(root / "gone/y"), b"also deleted")
    write_file(str(root / "keep.txt"), b"keep me\n" * 100)
    os.symlink("keep.txt", root / "link")


def full_paths(point: Any) -> list[str]:
    return [e.path for e in point.entries]


def comparable(entries: list[common_pb2.FileEntry]) -> list[bytes]:
    return [e.SerializeToString(deterministic=True) for e in entries]


async def test_unchanged_tree_is_not_read_and_sends_no_entries(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    make_tree(root)
    gateway = FakeGateway()
    first = await backup(gateway, root, state, "job-1")
    assert first.status == COMPLETE and first.stats.files_read == 43
    assert os.path.exists(cache.cache_path(str(state), str(root)))

    second = await backup(gateway, root, state, "job-2")
    assert second.status == COMPLETE, second
    assert second.stats.files_read == 0 and second.stats.bytes_read == 0
    assert second.stats.files_unchanged == 43 and second.stats.bytes_unchanged == first.stats.bytes_scanned
    header, sent, deleted = gateway.commits[-1]
    assert header.base_point_id == "point-1" and header.entry_count == len(gateway.point("point-1").entries)
    assert (sent, deleted) == ([], [])
    assert comparable(gateway.point("point-2").entries) == comparable(gateway.point("point-1").entries)

    # The second run copied the unchanged records into its cache as they were; a full point sent
    # from that cache (a gateway that does not synthesize) is the same point, still without reads.
    command = run_backup_command("job-3")
    command.accepts_base_point = False
    third = await backup(gateway, root, state, "job-3", command=command)
    assert third.status == COMPLETE and third.stats.files_read == 0
    assert gateway.commits[-1][0].base_point_id == ""
    assert comparable(gateway.point("point-3").entries) == comparable(gateway.point("point-1").entries)


async def test_changes_are_sent_and_the_synthesized_point_equals_a_full_backup(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    make_tree(root)
    gateway = FakeGateway()
    assert (await backup(gateway, root, state, "job-1")).status == COMPLETE

    write_file(str(root / "d1/f3.bin"), rand(5000, 999))  # content changed
    appended = root / "d2/f0.bin"
    appended.write_bytes(appended.read_bytes() + b"more")
    os.chmod(root / "d3/f1.bin", 0o600)  # metadata only (ctime changes)
    shutil.rmtree(root / "gone")  # a whole subtree
    os.unlink(root / "d4/f7.bin")
    write_file(str(root / "d0/new.bin"), rand(4000, 1234))
    os.rename(root / "keep.txt", root / "kept.txt")
    os.unlink(root / "link")
    os.symlink("kept.txt", root / "link")

    second = await backup(gateway, root, state, "job-2")
    assert second.status == COMPLETE, second
    header, sent, deleted = gateway.commits[-1]
    assert header.base_point_id == "point-1"
    changed = {e.path for e in sent}
    assert {"d1/f3.bin", "d2/f0.bin", "d3/f1.bin", "d0/new.bin", "kept.txt", "link"} <= changed
    assert not changed & {f"d0/f{i}.bin" for i in range(8)}
    assert deleted == ["d4/f7.bin", "gone", "gone/sub", "gone/sub/x", "gone/y", "keep.txt"]
    # Read only what changed (the chmod'ed file too: its ctime moved).
    assert second.stats.files_read == 5

    reference = FakeGateway()
    assert (await backup(reference, root, None, "job-ref")).status == COMPLETE
    assert comparable(gateway.last_point().entries) == comparable(reference.only_point().entries)
    merged = entries_by_path(gateway.last_point())
    assert gateway.content(merged["d1/f3.bin"]) == rand(5000, 999)
    assert gateway.content(merged["d0/f5.bin"]) == rand(3000 + 700 * 5, 5)

    # A third run starts from the second point.
    third = await backup(gateway, root, state, "job-3")
    assert third.stats.files_read == 0 and gateway.commits[-1][0].base_point_id == "point-2"


async def test_racy_files_are_read_again(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    make_tree(root)
    gateway = FakeGateway()
    racy = PipelineLimits(racy_window_ns=3600 * 10**9)  # everything changed "just now"
    await backup(gateway, root, state, "job-1", limits=racy)
    second = await backup(gateway, root, state, "job-2")
    assert second.stats.files_read == 43 and second.stats.files_unchanged == 0
    # Unchanged content: nothing is uploaded again, and nothing is sent but what differs (nothing).
    header, sent, deleted = gateway.commits[-1]
    assert header.base_point_id == "point-1" and sent == [] and deleted == []
    third = await backup(gateway, root, state, "job-3")
    assert third.stats.files_read == 0


def corrupt(path: str, how: str) -> None:
    data = bytearray(Path(path).read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x40
    elif how == "truncate":
        data = data[: len(data) - 50]
    elif how == "version":
        data[4] = 99
    Path(path).write_bytes(bytes(data))


async def test_a_corrupt_or_foreign_cache_only_costs_a_reread(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    make_tree(root)
    gateway = FakeGateway()
    await backup(gateway, root, state, "job-0")
    path = cache.cache_path(str(state), str(root))
    good = Path(path).read_bytes()
    for n, how in enumerate(["flip", "truncate", "version", "empty"]):
        if how == "empty":
            Path(path).write_bytes(b"")
        else:
            Path(path).write_bytes(good)
            corrupt(path, how)
        write_file(str(root / "d0/f0.bin"), rand(3000, n + 5000))  # content the stale cache would get wrong
        finished = await backup(gateway, root, state, f"job-{n + 1}")
        assert finished.status == COMPLETE, (how, finished)
        assert finished.stats.files_read == 43, how
        header = gateway.commits[-1][0]
        assert header.base_point_id == "", how
        assert gateway.content(entries_by_path(gateway.last_point())["d0/f0.bin"]) == rand(3000, n + 5000)
        good = Path(path).read_bytes()

    # A cache written with another repository key is never used.
    other = gateway_pb2.RepositoryParameters()
    other.CopyFrom(REPOSITORY)
    other.chunk_id_key = bytes(32)
    assert cache.load(str(state), ChunkParams.from_proto(other), str(root)) is None
    assert cache.load(str(state), PARAMS, str(root)) is not None
    assert cache.load(str(state), PARAMS, "/elsewhere") is None


async def test_refused_base_falls_back_to_the_full_point_without_rereading(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    make_tree(root)
    gateway = FakeGateway()
    await backup(gateway, root, state, "job-1")
    gateway.refuse_bases = True
    write_file(str(root / "d0/f0.bin"), rand(3000, 77))
    second = await backup(gateway, root, state, "job-2")
    assert second.status == COMPLETE, second
    assert second.stats.files_read == 1
    refused, full = gateway.commits[-2:]
    assert refused[0].base_point_id == "point-1" and full[0].base_point_id == ""
    assert len(full[1]) == len(gateway.point("point-1").entries)
    reference = FakeGateway()
    await backup(reference, root, None, "job-ref")
    assert comparable(gateway.last_point().entries) == comparable(reference.only_point().entries)
    # The new cache names the new point.
    info = cache.load(str(state), PARAMS, str(root))
    assert info is not None and info.point_id == gateway.last_point().point_id


async def test_a_gateway_without_synthesis_gets_full_points_but_files_are_still_not_read(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    make_tree(root)
    gateway = FakeGateway()
    await backup(gateway, root, state, "job-1", command=run_backup_command("job-1", accepts_base_point=False))
    second = await backup(gateway, root, state, "job-2", command=run_backup_command("job-2", accepts_base_point=False))
    assert second.stats.files_read == 0
    header, sent, _ = gateway.commits[-1]
    assert header.base_point_id == "" and len(sent) == len(gateway.point("point-1").entries)
    assert comparable(gateway.point("point-2").entries) == comparable(gateway.point("point-1").entries)


async def test_the_cache_is_replaced_only_after_a_confirmed_commit(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    make_tree(root)
    gateway = FakeGateway()
    await backup(gateway, root, state, "job-1")
    path = cache.cache_path(str(state), str(root))
    before = Path(path).read_bytes()
    write_file(str(root / "d0/f0.bin"), rand(3000, 4242))
    gateway.fail_uploads = True
    failed = await backup(gateway, root, state, "job-2", retry=_no_retry())
    assert failed.status == common_pb2.JOB_STATUS_FAILED
    assert Path(path).read_bytes() == before
    assert [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")] == []
    gateway.fail_uploads = False
    third = await backup(gateway, root, state, "job-3")
    assert third.status == COMPLETE and third.stats.files_read == 1


def _no_retry() -> Any:
    from strongroom_agent.backup import RetryPolicy

    async def sleep(_: float) -> None:
        return None

    return RetryPolicy(attempts=1, sleep=sleep)


async def test_cached_chunks_the_gateway_lost_are_read_and_uploaded_again(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    make_tree(root)
    gateway = FakeGateway()
    await backup(gateway, root, state, "job-1")
    lost = entries_by_path(gateway.point("point-1"))["d2/f2.bin"].chunk_ids[0]
    del gateway.chunks[lost]
    gateway.refuse_bases = True  # e.g. the base expired, and a chunk of it is gone too
    second = await backup(gateway, root, state, "job-2")
    assert second.status == COMPLETE, second
    assert second.stats.files_read == 43
    assert lost in gateway.chunks
    assert gateway.content(entries_by_path(gateway.last_point())["d2/f2.bin"]) == rand(3000 + 1400, 202)


async def test_vanished_file_is_reported_and_left_out(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    make_tree(root)
    gateway = FakeGateway()
    await backup(gateway, root, state, "job-1")
    write_file(str(root / "d1/f1.bin"), rand(100, 1))  # changed, so it will be read...

    def open_file(path: str) -> int:
        if path.endswith("d1/f1.bin"):
            os.unlink(path)  # ...but it vanishes between the scan and the read
        return os.open(path, os.O_RDONLY)

    finished = await backup(gateway, root, state, "job-2", open_file=open_file)
    assert finished.status == PARTIAL
    assert [e for e in finished.file_errors if "d1/f1.bin" in e] == [f"{root}/d1/f1.bin: vanished during the backup"]
    header, _, deleted = gateway.commits[-1]
    assert header.base_point_id == "point-1" and deleted == ["d1/f1.bin"]
    assert "d1/f1.bin" not in entries_by_path(gateway.last_point())


def committed_cache(tmp_path: Path, count: int) -> tuple[cache.CacheInfo, os.stat_result]:
    """A committed cache of ``count`` trusted file records ``p00000``..., all with the stat of ``tmp_path``."""
    writer = cache.CacheWriter(str(tmp_path / "state"), PARAMS, "/m", racy_before_ns=2**62)
    st = os.stat(tmp_path)
    for i in range(count):
        writer.add(common_pb2.FileEntry(path=f"p{i:05}", type=common_pb2.ENTRY_TYPE_FILE), st)
    writer.commit("point-x")
    info = cache.load(str(tmp_path / "state"), PARAMS, "/m")
    assert info is not None and (info.point_id, info.count) == ("point-x", count)
    return info, st


def test_cache_cursor_reads_ahead_a_bounded_number_of_records(tmp_path: Path) -> None:
    info, st = committed_cache(tmp_path, 5000)
    cursor = cache.CacheCursor(info)
    seen = []
    while (record := cursor.peek()) is not None:
        assert len(cursor._ahead) <= 2000
        assert record.trusted and record.unchanged(st)
        seen.append(cursor.take().entry.path)
    cursor.close()
    assert seen == [f"p{i:05}" for i in range(5000)]
    assert cursor.records_read == 5000 and not cursor.broken


def test_cache_records_read_path_and_type_without_parsing_and_agree_with_parsing() -> None:
    prefix = b"record header"
    for path in ["", "a", "dir/ü.txt", "d/" + "x" * 127, "d/" + "x" * 300, "d/" + "y" * 20000]:
        for kind in (common_pb2.ENTRY_TYPE_FILE, common_pb2.ENTRY_TYPE_DIRECTORY, common_pb2.ENTRY_TYPE_SYMLINK, 0):
            entry = common_pb2.FileEntry(path=path, type=kind, size=7, chunk_ids=[b"c" * 32])  # type: ignore[arg-type]
            data = prefix + entry.SerializeToString()
            got = cache._leading_type(data, len(prefix), path.encode())
            if path:
                assert got == kind
            else:
                assert got is None  # the root's empty path is left out: parsed instead
            if path:  # another path than the record's: parsed (and then found inconsistent)
                assert cache._leading_type(data, len(prefix), path.encode() + b"x") is None
    # Fields in another order than the runtime writes them: not read from the bytes.
    reordered = common_pb2.FileEntry(type=common_pb2.ENTRY_TYPE_FILE).SerializeToString()
    reordered += common_pb2.FileEntry(path="a").SerializeToString()
    assert cache._leading_type(reordered, 0, b"a") is None
    assert cache._leading_type(b"\x0a\x05ab", 0, b"ab") is None  # truncated
    assert cache._leading_type(b"\x0a\x01a\x10\x81\x01", 0, b"a") is None  # a two-byte type


def test_a_cache_record_is_unchanged_only_for_a_trusted_regular_file_with_the_same_stat(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"x")
    st = os.lstat(target)
    writer = cache.CacheWriter(str(tmp_path / "state"), PARAMS, "/mnt", racy_before_ns=st.st_ctime_ns + 1)
    writer.add(common_pb2.FileEntry(path="a", type=common_pb2.ENTRY_TYPE_DIRECTORY), st)
    writer.add(common_pb2.FileEntry(path="b", type=common_pb2.ENTRY_TYPE_FILE, size=1), st)
    writer.add(common_pb2.FileEntry(path="c", type=common_pb2.ENTRY_TYPE_SYMLINK, link_target="b"), st)
    writer.commit("p1")
    info = cache.load(str(tmp_path / "state"), PARAMS, "/mnt")
    assert info is not None
    cursor = cache.CacheCursor(info)
    records = cursor._read_some()
    cursor.close()
    assert [(r.path, r.entry.path, r.unchanged(st)) for r in records] == [
        (b"a", "a", False),
        (b"b", "b", True),
        (b"c", "c", False),
    ]
    assert records[1].entry.size == 1 and records[2].entry.link_target == "b"
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert not records[1].unchanged(os.lstat(target))


async def test_a_vanished_root_deletes_every_cached_path_in_a_delta_commit(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    make_tree(root)
    gateway = FakeGateway()
    first = await backup(gateway, root, state, "job-1")
    assert first.status == COMPLETE
    cached = sorted(e.path for e in gateway.point("point-1").entries)
    shutil.rmtree(root)

    second = await backup(gateway, root, state, "job-2")
    assert f"{root}: backup root vanished" in second.file_errors
    header, sent, deleted = gateway.commits[-1]
    assert header.base_point_id == "point-1" and header.entry_count == 0
    assert sent == [] and deleted == sorted(cached, key=str.encode)
    assert gateway.last_point().entries == []
