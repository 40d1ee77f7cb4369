"""The backup pipeline against the in-memory gateway."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from pathlib import Path
from typing import Any

import pytest
from agent_fakes import FakeGateway, entries_by_path, native_reader, run_backup_command, write_file
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_agent.backup import PipelineLimits, RetryPolicy, cores_for, run_backup
from strongroom_agent.exclusions import LinuxExclusions
from strongroom_agent.gateway_client import GatewayError

COMPLETE = common_pb2.JOB_STATUS_COMPLETE
PARTIAL = common_pb2.JOB_STATUS_PARTIAL_COMPLETE


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def filesystem(root: Path) -> common_pb2.Filesystem:
    return common_pb2.Filesystem(mount_point=str(root), device="/dev/vdz", fs_type="ext4", capacity_bytes=1 << 30)


async def backup(gateway: FakeGateway, root: Path, **kwargs: Any) -> gateway_pb2.JobFinished:
    command = kwargs.pop("command", None) or run_backup_command()
    if kwargs.get("limits") is NATIVE:
        kwargs["native"] = native_reader()  # (used only where files are opened with open_for_backup)
    kwargs.setdefault("exclusions", LinuxExclusions())
    kwargs.setdefault("cancel", asyncio.Event())
    return await run_backup(command, client=gateway, points=[filesystem(root)], **kwargs)


# Changed files are read in groups of small files (one worker-thread hop per group), those groups
# through the native extension (ADR 0080), or one by one (files above small_file_bytes); the
# per-file rules must hold on every path.
NATIVE = PipelineLimits()  # told apart by identity: the limits are the grouped path's
READ_PATHS = {
    "grouped": PipelineLimits(),
    "native": NATIVE,
    "one-by-one": PipelineLimits(small_file_bytes=0),
}


@pytest.fixture(params=sorted(READ_PATHS))
def read_path(request: pytest.FixtureRequest) -> PipelineLimits:
    return READ_PATHS[request.param]


def make_tree(root: Path) -> None:
    write_file(
        str(root / "docs/report.txt"), b"quarterly numbers\n" * 500, mode=0o640, mtime_ns=1_600_000_000_123_456_789
    )
    write_file(str(root / "docs/big.bin"), rand(300_000, 1))
    write_file(str(root / "empty"), b"")
    write_file(str(root / "a-c"), b"sorts between a and a/")
    write_file(str(root / "a/b"), b"inside a")
    os.symlink("docs/report.txt", root / "link")
    os.mkfifo(root / "fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock"))


async def test_backup_of_a_tree(tmp_path: Path, read_path: PipelineLimits) -> None:
    root = tmp_path / "src"
    make_tree(root)
    gateway = FakeGateway()
    finished = await backup(gateway, root, limits=read_path)
    assert finished.status == COMPLETE, finished
    point = gateway.only_point()
    paths = [e.path for e in point.entries]
    # sorted by UTF-8 bytes, root first, directory before its children; fifo and socket skipped
    assert paths == ["", "a", "a-c", "a/b", "docs", "docs/big.bin", "docs/report.txt", "empty", "link"]
    entries = entries_by_path(point)
    assert entries[""].type == common_pb2.ENTRY_TYPE_DIRECTORY
    report = entries["docs/report.txt"]
    assert report.type == common_pb2.ENTRY_TYPE_FILE
    assert report.mode == 0o640 and report.mtime_ns == 1_600_000_000_123_456_789
    assert report.size == len(b"quarterly numbers\n" * 500)
    assert gateway.content(report) == b"quarterly numbers\n" * 500
    assert gateway.content(entries["docs/big.bin"]) == rand(300_000, 1)
    assert len(entries["docs/big.bin"].chunk_ids) > 10
    assert entries["empty"].chunk_ids == [] and entries["empty"].size == 0
    assert entries["link"].type == common_pb2.ENTRY_TYPE_SYMLINK and entries["link"].link_target == "docs/report.txt"
    assert point.filesystem.mount_point == str(root) and point.job_id == "job-1"
    stats = finished.stats
    assert stats.files_read == 5 and stats.files_failed == 0
    assert stats.bytes_read == sum(e.size for e in point.entries)
    assert stats.chunks_new == len(gateway.chunks) and stats.bytes_uploaded > 0


async def test_unchanged_tree_uploads_nothing_and_change_uploads_only_new_chunks(tmp_path: Path) -> None:
    root = tmp_path / "src"
    make_tree(root)
    gateway = FakeGateway()
    assert (await backup(gateway, root)).status == COMPLETE
    first_uploads = len(gateway.uploaded)
    old_ids = set(entries_by_path(gateway.only_point())["docs/big.bin"].chunk_ids)

    second = await backup(gateway, root, command=run_backup_command("job-2"))
    assert second.status == COMPLETE
    assert len(gateway.uploaded) == first_uploads
    assert second.stats.chunks_new == 0 and second.stats.bytes_uploaded == 0

    # Insert bytes near the start of the big file: only the chunks around the edit are new.
    big = root / "docs/big.bin"
    data = big.read_bytes()
    big.write_bytes(data[:1000] + b"INSERTED" + data[1000:])
    third = await backup(gateway, root, command=run_backup_command("job-3"))
    assert third.status == COMPLETE
    new_entry = entries_by_path(gateway.points["point-3"])["docs/big.bin"]
    new_ids = set(new_entry.chunk_ids)
    uploaded_now = gateway.uploaded[first_uploads:]
    assert set(uploaded_now) == new_ids - old_ids
    assert len(uploaded_now) == len(set(uploaded_now))  # each new chunk uploaded once
    assert 0 < len(uploaded_now) <= 3 < len(new_ids)
    assert gateway.content(new_entry) == big.read_bytes()


async def test_duplicate_content_is_uploaded_once(tmp_path: Path) -> None:
    root = tmp_path / "src"
    blob = rand(100_000, 5)
    for i in range(5):
        write_file(str(root / f"copy{i}"), blob)
    gateway = FakeGateway()
    assert (await backup(gateway, root)).status == COMPLETE
    assert len(gateway.uploaded) == len(set(gateway.uploaded))
    assert {e.path for e in gateway.only_point().entries} == {"", "copy0", "copy1", "copy2", "copy3", "copy4"}


class MutatingThrottle:
    """Rewrites a file after the reader read some of it: 'times' rewrites, each with a fresh mtime."""

    def __init__(self, path: Path, times: int) -> None:
        self.path = path
        self.remaining = times
        self.calls = 0

    def acquire(self, nbytes: int) -> None:
        self.calls += 1
        if self.remaining > 0:
            self.remaining -= 1
            data = bytearray(self.path.read_bytes())
            data[0] ^= 0xFF
            self.path.write_bytes(bytes(data))
            stamp = 2_000_000_000_000_000_000 + self.calls
            os.utime(self.path, ns=(stamp, stamp))


async def test_file_changing_during_every_read_is_left_out(tmp_path: Path, read_path: PipelineLimits) -> None:
    root = tmp_path / "src"
    write_file(str(root / "busy.db"), rand(50_000, 2))
    gateway = FakeGateway()
    finished = await backup(gateway, root, throttle=MutatingThrottle(root / "busy.db", times=1000), limits=read_path)
    assert finished.status == PARTIAL
    assert [e.path for e in gateway.only_point().entries] == [""]
    assert len(finished.file_errors) == 1
    assert "busy.db" in finished.file_errors[0] and "changed while being read" in finished.file_errors[0]
    assert finished.stats.files_failed == 1


async def test_file_changing_once_is_reread_and_stored_consistently(tmp_path: Path, read_path: PipelineLimits) -> None:
    root = tmp_path / "src"
    write_file(str(root / "log"), rand(50_000, 3))
    gateway = FakeGateway()
    finished = await backup(gateway, root, throttle=MutatingThrottle(root / "log", times=1), limits=read_path)
    assert finished.status == COMPLETE, finished.file_errors
    entry = entries_by_path(gateway.only_point())["log"]
    assert gateway.content(entry) == (root / "log").read_bytes()  # the second, settled state
    assert entry.mtime_ns == os.lstat(root / "log").st_mtime_ns
    assert finished.stats.bytes_read == 2 * 50_000


async def test_file_rewritten_between_scan_and_open_is_stored_as_read(
    tmp_path: Path, read_path: PipelineLimits
) -> None:
    """The stat a read is checked against is taken after the open: a file rewritten since the scan is read once."""
    root = tmp_path / "src"
    write_file(str(root / "conf"), rand(50_000, 6), mtime_ns=1_600_000_000_000_000_000)
    rewritten = rand(50_000, 7)  # same size: only mtime and ctime tell
    later = 1_700_000_000_000_000_000

    def opener(path: str) -> int:
        if path.endswith("conf") and os.lstat(path).st_mtime_ns != later:
            write_file(path, rewritten, mtime_ns=later)
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)

    gateway = FakeGateway()
    finished = await backup(gateway, root, open_file=opener, limits=read_path)
    assert finished.status == COMPLETE, finished.file_errors
    entry = entries_by_path(gateway.only_point())["conf"]
    assert gateway.content(entry) == rewritten and entry.mtime_ns == later
    assert finished.stats.bytes_read == 50_000


@pytest.mark.parametrize("size", [0, 100, 50_000, 900_000])
async def test_small_file_costs_one_read_and_no_lseek(
    tmp_path: Path, read_path: PipelineLimits, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file under the read size: one read (no second one to see the end), an fstat before and after, no lseek."""
    root = tmp_path / "src"
    blob = rand(size, size)
    for name in "abc":
        write_file(str(root / name), blob)
    fds: set[int] = set()  # descriptors of the files being backed up, while open (a number is reused after close)
    calls = {"read": 0, "fstat": 0, "lseek": 0}
    real_close = os.close

    def counting(name: str) -> Any:
        real = getattr(os, name)

        def call(fd: int, *args: Any) -> Any:
            if fd in fds:
                calls[name] += 1
            return real(fd, *args)

        return call

    def opener(path: str) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        fds.add(fd)
        return fd

    def close(fd: int) -> None:
        fds.discard(fd)
        real_close(fd)

    for name in calls:
        monkeypatch.setattr(os, name, counting(name))
    monkeypatch.setattr(os, "close", close)
    gateway = FakeGateway()
    finished = await backup(gateway, root, open_file=opener, limits=read_path)
    monkeypatch.undo()
    assert finished.status == COMPLETE, finished.file_errors
    entries = entries_by_path(gateway.only_point())
    assert [gateway.content(entries[name]) for name in "abc"] == [blob] * 3
    assert calls == {"read": 3, "fstat": 6, "lseek": 0}


async def test_unreadable_file_makes_the_job_partial(tmp_path: Path, read_path: PipelineLimits) -> None:
    root = tmp_path / "src"
    write_file(str(root / "secret"), b"no")
    write_file(str(root / "public"), b"yes")

    def opener(path: str) -> int:
        if path.endswith("secret"):
            raise PermissionError(13, "Permission denied", path)
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)

    gateway = FakeGateway()
    finished = await backup(gateway, root, open_file=opener, limits=read_path)
    assert finished.status == PARTIAL
    assert finished.file_errors == [f"{root}/secret: Permission denied"]
    assert [e.path for e in gateway.only_point().entries] == ["", "public"]


async def test_each_file_of_a_group_fails_or_succeeds_on_its_own(tmp_path: Path) -> None:
    """One group holds a vanished, an unreadable, a grown-too-big and two good files: only the bad two are left out."""
    root = tmp_path / "src"
    for name in ("a-good", "b-gone", "c-denied", "d-grows", "e-good"):
        write_file(str(root / name), name.encode() * 100)
    grown = rand(9 << 20, 5)  # past the whole-file limit: read on its own, in steps

    def opener(path: str) -> int:
        name = os.path.basename(path)
        if name == "b-gone":
            os.unlink(path)
        elif name == "c-denied":
            raise PermissionError(13, "Permission denied", path)
        elif name == "d-grows" and os.path.getsize(path) < len(grown):
            Path(path).write_bytes(grown)
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)

    gateway = FakeGateway()
    limits = PipelineLimits(read_batch_bytes=1 << 20)
    finished = await backup(gateway, root, open_file=opener, limits=limits)
    assert finished.status == PARTIAL
    assert sorted(finished.file_errors) == [
        f"{root}/b-gone: vanished during the backup",
        f"{root}/c-denied: Permission denied",
    ]
    entries = entries_by_path(gateway.only_point())
    assert sorted(entries) == ["", "a-good", "d-grows", "e-good"]
    assert gateway.content(entries["a-good"]) == b"a-good" * 100
    assert gateway.content(entries["e-good"]) == b"e-good" * 100
    assert gateway.content(entries["d-grows"]) == grown and entries["d-grows"].size == len(grown)
    assert finished.stats.files_read == 3


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
async def test_unreadable_file_really_unreadable(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_file(str(root / "secret"), b"no", mode=0o000)
    gateway = FakeGateway()
    finished = await backup(gateway, root)
    assert finished.status == PARTIAL


async def test_state_dir_inside_the_tree_is_not_backed_up(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_file(str(root / "data"), b"x")
    write_file(str(root / "var/lib/agent/agent.json"), b"secret credential")
    gateway = FakeGateway()
    finished = await backup(gateway, root, exclusions=LinuxExclusions(extra_dirs=[str(root / "var/lib/agent")]))
    assert finished.status == COMPLETE
    assert [e.path for e in gateway.only_point().entries] == ["", "data", "var", "var/lib"]


async def test_tiny_limits_still_complete(tmp_path: Path) -> None:
    """Bounded queues and a tiny memory budget must not deadlock; batching limits are honoured."""
    root = tmp_path / "src"
    for i in range(60):
        write_file(str(root / f"d{i % 7}/f{i:03}"), rand(5000 + i * 300, i))
    limits = PipelineLimits(
        memory_budget_bytes=20_000,
        wire_budget_bytes=6_000,
        read_batch_bytes=4096,
        ordered_queue=2,
        chunk_queue=2,
        dedup_batch_ids=3,
        upload_batch_chunks=2,
        commit_batch_entries=5,
        uploaders=1,
    )
    gateway = FakeGateway()
    finished = await backup(gateway, root, limits=limits)
    assert finished.status == COMPLETE
    assert gateway.max_find_batch <= 3
    assert max(gateway.manifest_batches) <= 5
    entries = entries_by_path(gateway.only_point())
    for i in range(60):
        assert gateway.content(entries[f"d{i % 7}/f{i:03}"]) == rand(5000 + i * 300, i)


async def test_gateway_failure_fails_the_job_after_capped_retries(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_file(str(root / "f"), rand(10_000, 9))
    gateway = FakeGateway(fail_uploads=True)
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    finished = await backup(gateway, root, retry=RetryPolicy(initial=1, maximum=8, attempts=7, sleep=sleep))
    assert finished.status == common_pb2.JOB_STATUS_FAILED
    assert "object store down" in finished.error
    assert gateway.points == {}
    assert delays == [1, 2, 4, 8, 8, 8]


async def test_unavailable_gateway_calls_are_retried_until_they_succeed(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_file(str(root / "f"), rand(100_000, 9))
    gateway = FakeGateway(unavailable={"find": 2, "upload": 3, "commit": 2})
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    finished = await backup(gateway, root, retry=RetryPolicy(initial=0.5, maximum=1, sleep=sleep))
    assert finished.status == COMPLETE, finished
    assert gateway.calls["find"] >= 3 and gateway.calls["upload"] >= 4 and gateway.calls["commit"] == 3
    assert len(delays) == 7 and max(delays) == 1
    assert gateway.content(entries_by_path(gateway.only_point())["f"]) == rand(100_000, 9)


async def test_calls_that_time_out_are_retried_and_the_job_completes_once(tmp_path: Path) -> None:
    """A stalled or killed gateway replica: the upload and the commit happened, their answers timed
    out (DEADLINE_EXCEEDED). The calls are repeated, the job completes, and there is one point."""
    root = tmp_path / "src"
    write_file(str(root / "f"), rand(100_000, 9))
    gateway = FakeGateway(timed_out={"upload": 2, "commit": 2})
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    finished = await backup(gateway, root, retry=RetryPolicy(initial=0.5, maximum=1, sleep=sleep))
    assert finished.status == COMPLETE, finished
    assert gateway.calls["commit"] == 3 and len(gateway.points) == 1
    assert gateway.timed_out == {"upload": 0, "commit": 0} and len(delays) == 4
    assert gateway.content(entries_by_path(gateway.only_point())["f"]) == rand(100_000, 9)


async def test_errors_other_than_unavailable_are_not_retried(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_file(str(root / "f"), rand(10_000, 9))
    gateway = FakeGateway()
    slept: list[float] = []

    async def refuse(requests: Any) -> gateway_pb2.CommitPointResponse:
        gateway.calls["commit"] = gateway.calls.get("commit", 0) + 1
        raise GatewayError("INVALID_ARGUMENT", "bad path")

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    gateway.commit_point = refuse  # type: ignore[method-assign]
    finished = await backup(gateway, root, retry=RetryPolicy(sleep=sleep))
    assert finished.status == common_pb2.JOB_STATUS_FAILED and "bad path" in finished.error
    assert gateway.calls["commit"] == 1 and slept == []


async def test_bad_repository_parameters_fail_the_job(tmp_path: Path) -> None:
    command = run_backup_command()
    command.repository.chunk_id_key = b"short"
    finished = await backup(FakeGateway(), tmp_path, command=command)
    assert finished.status == common_pb2.JOB_STATUS_FAILED and "chunk_id_key" in finished.error


async def test_cancel_stops_the_job_promptly(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for i in range(20):
        write_file(str(root / f"f{i}"), rand(200_000, i))
    cancel = asyncio.Event()
    loop = asyncio.get_running_loop()

    class CancelOnRead:
        def acquire(self, nbytes: int) -> None:
            loop.call_soon_threadsafe(cancel.set)

    gateway = FakeGateway()
    finished = await asyncio.wait_for(backup(gateway, root, cancel=cancel, throttle=CancelOnRead()), timeout=10)
    assert finished.status == common_pb2.JOB_STATUS_CANCELED
    assert gateway.points == {}


async def test_progress_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_file(str(root / "f"), rand(100_000, 1))
    reports: list[common_pb2.JobStats] = []

    class SlowThrottle:
        def acquire(self, nbytes: int) -> None:
            import time

            time.sleep(0.05)

    async def on_progress(stats: common_pb2.JobStats) -> None:
        reports.append(stats)

    finished = await backup(
        FakeGateway(), root, on_progress=on_progress, progress_interval=0.01, throttle=SlowThrottle()
    )
    assert finished.status == COMPLETE
    assert reports and reports[-1].files_scanned >= 1


async def test_no_points_fails_with_the_root_errors(tmp_path: Path) -> None:
    from strongroom_agent.backup import FileError

    finished = await run_backup(
        run_backup_command(),
        client=FakeGateway(),
        points=[],
        point_errors=[FileError("/nope", "backup root is not an existing directory")],
        exclusions=LinuxExclusions(),
        cancel=asyncio.Event(),
    )
    assert finished.status == common_pb2.JOB_STATUS_FAILED
    assert "/nope: backup root is not an existing directory" in finished.error


def test_cores_come_from_the_command_only() -> None:
    host = os.cpu_count() or 1
    high = common_pb2.BACKUP_PRIORITY_HIGH
    assert cores_for(gateway_pb2.RunBackup(priority=high, max_cores=2)) == min(2, host)
    assert cores_for(gateway_pb2.RunBackup(priority=common_pb2.BACKUP_PRIORITY_LOW, max_cores=1)) == 1
    # An older gateway that sends no max_cores: one core, whatever the priority.
    assert cores_for(gateway_pb2.RunBackup(priority=high)) == 1
    assert cores_for(gateway_pb2.RunBackup(max_cores=1024)) == host


@pytest.mark.parametrize("every", [0, 40_000])
async def test_freed_pages_are_trimmed_after_every_so_many_uploaded_bytes(tmp_path: Path, every: int) -> None:
    """The uploader hands freed heap pages back (malloc_trim) once per so many bytes released (ADR 0064)."""
    from strongroom_agent import memory

    trims: list[int] = []
    root = tmp_path / "src"
    for i in range(20):
        write_file(str(root / f"f{i:02}"), rand(10_000, 100 + i))
    limits = PipelineLimits(small_file_bytes=0, upload_batch_chunks=1, uploaders=1)
    gateway = FakeGateway()
    freed = memory.FreedPages(every, lambda: trims.append(1))  # the composition root's, shared by jobs
    finished = await backup(gateway, root, limits=limits, freed=freed)
    assert finished.status == COMPLETE
    entries = entries_by_path(gateway.only_point())
    assert all(gateway.content(entries[f"f{i:02}"]) == rand(10_000, 100 + i) for i in range(20))
    # 200,000 bytes of chunks released in upload batches of one or more whole files: at most one trim
    # per 40,000 bytes (FreedPages' own test pins the rule), at least one; none when switched off.
    assert (0 < len(trims) <= 200_000 // 40_000) if every else trims == []


async def test_the_pipeline_probe_samples_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """STRONGROOM_BACKUP_TRACE (bench/backup_timeline.py) gets the pipeline's state as JSON lines; unset, nothing."""
    import json

    from strongroom_agent.backup.probe import TRACE_ENV

    root = tmp_path / "src"
    for i in range(20):
        write_file(str(root / f"f{i:02}"), rand(50_000, 200 + i))
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv(TRACE_ENV, str(trace))
    gateway = FakeGateway()
    assert (await backup(gateway, root)).status == COMPLETE
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    assert rows and {"t", "budget_used", "budget_waiting", "reading", "uploading", "upload_queue"} <= set(rows[0])
    assert all(0 <= row["budget_used"] <= PipelineLimits().memory_budget_bytes for row in rows)
    monkeypatch.delenv(TRACE_ENV)
    trace.unlink()
    assert (await backup(FakeGateway(), root)).status == COMPLETE
    assert not trace.exists()


async def test_incompressible_and_compressible_files_round_trip_on_every_read_path(tmp_path: Path) -> None:
    """Random content goes up raw, text zstd-compressed, and both restore byte for byte.

    Sizes cover each way a file is read (the fake repository's chunks are 1-16 KiB): under the
    minimum chunk (the file read as bytes is its one chunk, uncopied), a small file of many chunks,
    a whole-file read above 1 MiB, and a streamed file above 8 MiB.
    """
    from strongroom_agent.restore import run_restore

    root, target = tmp_path / "src", tmp_path / "restored"
    files = {
        "tiny-random": rand(700, 2),
        "tiny-text": b"a line of text\n" * 60,
        "small-random": rand(200_000, 3),
        "small-text": b"0123456789 some log text\n" * 8000,
        "whole-random": rand(2 << 20, 4),
        "streamed-random": rand((8 << 20) + 5000, 5),
    }
    for name, content in files.items():
        write_file(str(root / name), content)
    target.mkdir()
    gateway = FakeGateway()
    sent: dict[bytes, int] = {}
    upload = gateway.upload_chunks

    async def recording(requests: Any) -> gateway_pb2.UploadChunksResponse:
        for r in requests:
            sent.update((c.chunk_id, c.compression) for c in gateway_pb2.UploadChunkRequest.FromString(r).chunks)
        return await upload(requests)

    gateway.upload_chunks = recording  # type: ignore[method-assign]
    assert (await backup(gateway, root)).status == COMPLETE
    entries = entries_by_path(gateway.only_point())
    for name in files:
        kinds = {sent[cid] for cid in entries[name].chunk_ids}
        expected = gateway_pb2.CHUNK_COMPRESSION_NONE if "random" in name else gateway_pb2.CHUNK_COMPRESSION_ZSTD
        assert kinds == {expected}, name
    command = gateway_pb2.RunRestore(
        restore_job_id="r-1", point_id=gateway.only_point().point_id, target_path=str(target)
    )
    finished = await run_restore(command, client=gateway, cancel=asyncio.Event())
    assert finished.status == COMPLETE, finished
    assert {name: (target / name).read_bytes() for name in files} == files
