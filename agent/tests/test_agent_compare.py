"""The scan compared with the cache in worker-thread steps (``compare.TreeCompare``)."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

from agent_fakes import REPOSITORY, FakeGateway, run_backup_command, write_file
from strongroom.common.v1 import common_pb2
from strongroom_agent import cache
from strongroom_agent.backup import PipelineLimits, run_backup
from strongroom_agent.backup.compare import Changed, Known, TreeCompare
from strongroom_agent.chunking import ChunkParams
from strongroom_agent.exclusions import LinuxExclusions

PARAMS = ChunkParams.from_proto(REPOSITORY)


def _first_backup(root: Path, state: Path) -> None:
    for d in range(6):
        for f in range(7):
            write_file(str(root / f"d{d}" / f"f{f}"), f"{d}-{f}".encode() * 50)
    (root / "d2" / "sub").mkdir()
    write_file(str(root / "d2" / "sub" / "x"), b"x")
    os.symlink("d0/f0", root / "link")
    point = common_pb2.Filesystem(mount_point=str(root), device="/dev/vdz", fs_type="ext4", capacity_bytes=1 << 30)
    finished = asyncio.run(
        run_backup(
            run_backup_command("job-1"),
            client=FakeGateway(),
            points=[point],
            exclusions=LinuxExclusions(),
            cancel=asyncio.Event(),
            limits=PipelineLimits(racy_window_ns=0),
            state_dir=str(state),
        )
    )
    assert finished.status == common_pb2.JOB_STATUS_COMPLETE


def _walk(root: Path, state: Path, step_entries: int, run_entries: int) -> tuple[list[object], list[int]]:
    """Every step to the end: the found items (runs as their bytes, changed files as paths), entries per step."""
    info = cache.load(str(state), PARAMS, str(root))
    assert info is not None
    cursor = cache.CacheCursor(info)
    compare = TreeCompare(
        str(root), LinuxExclusions(), cursor, 2**62, step_entries=step_entries, run_entries=run_entries
    )
    found: list[object] = []
    per_step: list[int] = []
    try:
        while True:
            step = compare.step()
            deleted = 0
            for item in step.items:
                if isinstance(item, Known):
                    assert item.cache_count + item.spool.count(b"D") <= run_entries or run_entries < 1
                    found.append(("known", item.cache_records, item.cache_count, item.spool, item.spool_entries))
                    deleted += _spool_records(item.spool).count("D")
                else:
                    assert isinstance(item, Changed)
                    found.append(("changed", item.path, item.cached is not None))
            per_step.append(step.files_scanned + deleted)
            if step.done:
                return found, per_step
    finally:
        cursor.close()


def _spool_records(spool: bytes) -> list[str]:
    kinds, position = [], 0
    while position < len(spool):
        (length,) = struct.unpack(">I", spool[position + 1 : position + 5])
        kinds.append(spool[position : position + 1].decode())
        position += 5 + length
    return kinds


def _merged(found: list[object]) -> tuple[bytes, int, bytes, int, list[object]]:
    """Runs concatenated between changed files: the same for any step and run size."""
    records, count, spool, entries, changed = b"", 0, b"", 0, []
    for item in found:
        assert isinstance(item, tuple)
        if item[0] == "known":
            records += item[1]
            count += item[2]
            spool += item[3]
            entries += item[4]
        else:
            changed.append((item[1], item[2], len(records), len(spool)))
    return records, count, spool, entries, changed


def test_steps_and_runs_of_any_size_settle_the_same_entries_and_stay_bounded(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    _first_backup(root, state)
    # Changes: a file edited (new size), one added, a directory's files deleted, a file deleted
    # between unchanged siblings, a directory's mode changed.
    write_file(str(root / "d1" / "f3"), b"changed")
    write_file(str(root / "d1" / "new"), b"new")
    for f in range(7):
        os.unlink(root / "d4" / f"f{f}")
    os.unlink(root / "d0" / "f2")
    os.chmod(root / "d5", 0o700)

    small, small_steps = _walk(root, state, step_entries=3, run_entries=2)
    large, large_steps = _walk(root, state, step_entries=4096, run_entries=64)
    assert _merged(small) == _merged(large)
    assert max(small_steps) <= 3 and len(large_steps) == 1

    records, count, spool, entries, changed = _merged(large)
    assert [(path, had_record) for path, had_record, _r, _s in changed] == [(b"d1/f3", True), (b"d1/new", False)]
    kinds = _spool_records(spool)
    assert kinds.count("D") == 8  # d0/f2 and d4/f0..f6
    # Sent: the directories whose entries changed (d0, d1, d4: mtime; d5: mode).
    sent = []
    position = 0
    while position < len(spool):
        (length,) = struct.unpack(">I", spool[position + 1 : position + 5])
        if spool[position : position + 1] == b"E":
            sent.append(common_pb2.FileEntry.FromString(spool[position + 5 : position + 5 + length]).path)
        position += 5 + length
    assert sent == ["d0", "d1", "d4", "d5"] and entries == 4
    # Every entry but the two changed files has its cache record: root, 6 dirs, sub, link, files left.
    assert count == 1 + 6 + 1 + 1 + (6 * 7 - 7 - 1 + 1) - 1


def test_a_walk_without_a_cache_hands_out_every_file_and_sends_every_other_entry(tmp_path: Path) -> None:
    write_file(str(tmp_path / "a" / "f"), b"1")
    write_file(str(tmp_path / "b"), b"2")
    compare = TreeCompare(str(tmp_path), LinuxExclusions(), None, None, step_entries=2)
    changed, spool_entries, records = [], 0, 0
    while True:
        step = compare.step()
        for item in step.items:
            if isinstance(item, Changed):
                changed.append(item.path)
            else:
                spool_entries += item.spool_entries
                records += item.cache_count
        if step.done:
            break
    assert changed == [b"a/f", b"b"] and spool_entries == 2 and records == 0  # root and "a"; no cache kept
