"""The native small-file reader's contract: the same outcome as the Python path, file by file (ADR 0080).

Every case reads one small-file group twice, on the Python path and through
the native extension, and compares per file: chunk ids, plaintext (the native
payload decoded as the gateway does), the entry (size, mode, mtime), the stat
it was read under, bytes read, and the problem reported. Where cargo is
installed the extension must be built (``make native``); the native cases are
skipped, with the reason, only where it is not.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import zstandard
from agent_fakes import REPOSITORY, FakeGateway, native_reader, threads_while, write_file
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_agent.backup import native
from strongroom_agent.backup.context import JobContext
from strongroom_agent.backup.read import CHANGED_WHILE_READ, NOT_REGULAR, READ_SIZE, Reader, SmallRead, open_for_backup
from strongroom_agent.backup.scan import ScanItem
from strongroom_agent.backup.stages import ByteBudget, Chunk, PipelineLimits, SeenIds
from strongroom_agent.chunking import ChunkParams, chunk_id
from strongroom_agent.exclusions import LinuxExclusions
from strongroom_agent.jobs import JobCanceled, RetryPolicy
from strongroom_agent.throttle import ReadThrottle, Unlimited

PARAMS = ChunkParams.from_proto(REPOSITORY)
MIN = PARAMS.min_size  # a file of at most this many bytes is one chunk: the native reader's files


def reader(
    native_files: native.NativeExtension | None, throttle: ReadThrottle | None = None, params: ChunkParams = PARAMS
) -> Reader:
    ctx = JobContext(
        job_id="job-1",
        client=FakeGateway(),
        params=params,
        exclusions=LinuxExclusions(),
        executor=ThreadPoolExecutor(1),
        workers=1,
        throttle=throttle or Unlimited(),
        open_file=open_for_backup,
        limits=PipelineLimits(),
        spool_dir=None,
        cancel=asyncio.Event(),
        stop_threads=threading.Event(),
        stats=common_pb2.JobStats(),
        errors=[],
        seen=SeenIds(10),
        retry=RetryPolicy(),
        state_dir=None,
        accepts_base_point=True,
        native=native_files,
    )
    return Reader(ctx, ByteBudget(1 << 20), out=None)  # type: ignore[arg-type]  # reading never reaches dedup


def plaintext(chunk: Chunk) -> bytes:
    """A chunk's content as the gateway's verify decodes it (the frame must declare its length)."""
    if chunk.compression == gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED:
        return chunk.content
    if chunk.compression == gateway_pb2.CHUNK_COMPRESSION_NONE:
        assert len(chunk.content) == chunk.raw_length
        return chunk.content
    assert chunk.compression == gateway_pb2.CHUNK_COMPRESSION_ZSTD
    assert zstandard.frame_content_size(chunk.content) == chunk.raw_length
    return zstandard.ZstdDecompressor().decompress(chunk.content)


def outcome(result: SmallRead) -> tuple[object, ...]:
    """What both paths must agree on about one file (the stat without atime, which a read may move)."""
    st = result.before
    stat_fields = (
        None
        if st is None
        else (st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size)
        + (st.st_mtime, st.st_mtime_ns, st.st_ctime, st.st_ctime_ns, st.st_blksize, st.st_blocks, st.st_rdev)
    )
    return (
        [(c.id, plaintext(c)) for c in result.chunks],
        result.entry.SerializeToString(deterministic=True) if result.entry is not None else None,
        stat_fields,
        result.bytes_read,
        result.problem,
        result.too_big,
    )


def item(path: Path, rel: str, scanned: os.stat_result | None = None) -> ScanItem:
    return ScanItem(rel=rel, path=str(path), st=scanned or os.lstat(path))


def both(items: list[ScanItem]) -> list[tuple[object, ...]]:
    """Read ``items`` on both paths; their outcomes, asserted equal."""
    python = [outcome(r) for r in reader(None)._read_small_files(items)]
    natively = [outcome(r) for r in reader(native_reader())._read_small_files(items)]
    assert natively == python
    return natively


def test_ordinary_files_give_the_same_ids_plaintext_entries_and_stats(tmp_path: Path) -> None:
    blobs = {
        "text": b"quarterly numbers\n" * 50,  # compresses
        "random": os.urandom(MIN - 1),  # does not: sent as it is
        "one-byte": b"x",
        "exactly-min": os.urandom(MIN),  # the largest one-chunk file: read natively
        "empty": b"",
    }
    for i, (name, blob) in enumerate(blobs.items()):
        write_file(str(tmp_path / name), blob, mode=0o600 + i, mtime_ns=1_600_000_000_123_456_789 + i)
    outcomes = both([item(tmp_path / name, name) for name in blobs])
    for (chunks, entry, _, bytes_read, problem, _), blob in zip(outcomes, blobs.values(), strict=True):
        assert problem == "" and entry is not None and bytes_read == len(blob)
        assert chunks == ([(chunk_id(PARAMS.key, blob), blob)] if blob else [])
    # The native payloads are encoded already (the compress stage sends them as they are).
    results = reader(native_reader())._read_small_files([item(tmp_path / "text", "text")])
    assert results[0].chunks[0].compression == gateway_pb2.CHUNK_COMPRESSION_ZSTD


def test_files_larger_than_one_chunk_are_cut_by_the_native_cutter_into_the_same_chunks(tmp_path: Path) -> None:
    """Past the chunker's minimum size FastCDC may cut: the native cutter reads those (ADR 0083), same chunks."""
    sizes = {"min-plus-one": MIN + 1, "several-chunks": 5 * PARAMS.max_size, "read-size": READ_SIZE}
    for name, size in sizes.items():
        write_file(str(tmp_path / name), os.urandom(size))
    outcomes = both([item(tmp_path / name, name) for name in sizes])
    assert [len(chunks) > 1 for chunks, *_ in outcomes] == [False, True, True]  # type: ignore[arg-type]
    results = reader(native_reader())._read_small_files([item(tmp_path / "min-plus-one", "m")])
    assert results[0].chunks[0].compression != gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED  # encoded as it was read


def test_grown_and_shrunk_since_the_scan_are_read_as_they_are_now(tmp_path: Path) -> None:
    write_file(str(tmp_path / "grows"), b"a" * 10)
    write_file(str(tmp_path / "shrinks"), b"b" * 900)
    write_file(str(tmp_path / "grows-past-one-chunk"), b"c" * 10)
    items = [item(tmp_path / name, name) for name in ("grows", "shrinks", "grows-past-one-chunk")]
    write_file(str(tmp_path / "grows"), b"a" * 700)
    write_file(str(tmp_path / "shrinks"), b"b" * 3)
    write_file(str(tmp_path / "grows-past-one-chunk"), os.urandom(MIN * 3))
    outcomes = both(items)
    assert [o[3] for o in outcomes] == [700, 3, MIN * 3]


def test_failures_are_reported_alike(tmp_path: Path) -> None:
    write_file(str(tmp_path / "good"), b"fine")
    write_file(str(tmp_path / "vanishes"), b"soon gone")
    write_file(str(tmp_path / "becomes-link"), b"soon a symlink")
    write_file(str(tmp_path / "becomes-dir"), b"soon a directory")
    write_file(str(tmp_path / "unreadable"), b"mode 000", mode=0o000)
    names = ["good", "vanishes", "becomes-link", "becomes-dir", "unreadable"]
    items = [item(tmp_path / name, name) for name in names]
    os.unlink(tmp_path / "vanishes")
    os.unlink(tmp_path / "becomes-link")
    os.symlink("good", tmp_path / "becomes-link")  # swapped in after the scan: never followed
    os.unlink(tmp_path / "becomes-dir")
    os.mkdir(tmp_path / "becomes-dir")
    problems = [o[4] for o in both(items)]
    # root reads a mode-000 file; anyone else may not
    unreadable = "" if os.geteuid() == 0 else "Permission denied"
    assert problems == ["", "vanished during the backup", "Too many levels of symbolic links", NOT_REGULAR, unreadable]


def test_a_fifo_or_socket_swapped_in_is_refused_without_blocking(tmp_path: Path) -> None:
    """Opened non-blocking: a FIFO without a writer is no regular file; a socket cannot be opened at all."""
    names = ["fifo", "socket"]
    for name in names:
        write_file(str(tmp_path / name), b"a regular file when scanned")
    items = [item(tmp_path / name, name) for name in names]
    os.unlink(tmp_path / "fifo")
    os.mkfifo(tmp_path / "fifo")
    os.unlink(tmp_path / "socket")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "socket"))
        problems = [o[4] for o in both(items)]
    assert problems == [NOT_REGULAR, "No such device or address"]


def test_a_path_that_is_not_utf8_opens_the_same_file(tmp_path: Path) -> None:
    """A root's path may hold bytes that are not UTF-8 (str with surrogate escapes): both paths open those bytes."""
    root = os.path.join(os.fsencode(tmp_path), b"caf\xe9-\xff")
    os.mkdir(root)
    write_file(os.fsdecode(os.path.join(root, b"f")), b"under a Latin-1 directory")
    path = os.fsdecode(os.path.join(root, b"f"))
    outcomes = both([ScanItem(rel="f", path=path, st=os.lstat(path))])
    assert outcomes[0][0] == [(chunk_id(PARAMS.key, b"under a Latin-1 directory"), b"under a Latin-1 directory")]


def test_a_file_in_a_directory_without_permissions_is_read_alike(tmp_path: Path) -> None:
    write_file(str(tmp_path / "locked" / "f"), b"behind a mode-000 directory")
    items = [item(tmp_path / "locked" / "f", "locked/f")]
    os.chmod(tmp_path / "locked", 0)
    try:
        problems = [o[4] for o in both(items)]
    finally:
        os.chmod(tmp_path / "locked", 0o700)
    # root searches any directory (CAP_DAC_READ_SEARCH); anyone else may not
    assert problems == ["" if os.geteuid() == 0 else "Permission denied"]


# Run in a new session (as the agent's service is: a session leader without a terminal): opens a
# terminal the way the backup does, then prints the process's controlling terminal (0: none).
_OPEN_TERMINAL = """
import importlib, os, sys
path, how = sys.argv[1], sys.argv[2]
if how == "python":
    from strongroom_agent.backup.read import open_for_backup
    os.close(open_for_backup(path))
else:
    results = importlib.import_module("strongroom_agent._native").read_small_files([path], bytes(32), 1, 1 << 18)
    assert results[0][0] == 3, results  # opened, then refused: not a regular file
with open("/proc/self/stat") as stat:
    print(stat.read().rsplit(")", 1)[1].split()[4])  # tty_nr
"""


@pytest.mark.parametrize("how", ["python", "native"])
def test_a_terminal_swapped_in_does_not_become_the_agents_controlling_terminal(how: str) -> None:
    """Opened with O_NOCTTY: a session leader without one (a service) would otherwise take the terminal
    as its controlling terminal, and that terminal's hang-up would then send the agent SIGHUP."""
    if how == "native":
        native_reader()  # built wherever cargo is
    try:
        master, slave = os.openpty()
    except OSError as exc:
        pytest.skip(f"no pseudo-terminal on this machine: {exc}")
    try:
        done = subprocess.run(
            [sys.executable, "-c", _OPEN_TERMINAL, os.ttyname(slave), how],
            capture_output=True,
            text=True,
            start_new_session=True,
            timeout=60,
        )
    finally:
        os.close(master)
        os.close(slave)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]


# Run without CAP_FOWNER in the effective set (capabilities are per thread: the native call runs on the
# calling thread): O_NOATIME on a file the process does not own is then EPERM, and both paths must open
# the file again without it.
_WITHOUT_FOWNER = """
import ctypes, importlib, os, sys
from strongroom_agent.backup.read import open_for_backup

class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

libc = ctypes.CDLL(None, use_errno=True)
header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
assert libc.capget(ctypes.byref(header), data) == 0
data[0].effective &= ~(1 << 3)  # CAP_FOWNER
assert libc.capset(ctypes.byref(header), data) == 0
path = sys.argv[1]
try:
    os.close(os.open(path, os.O_RDONLY | os.O_NOATIME))
except PermissionError:
    pass
else:
    sys.exit("O_NOATIME was allowed: the fallback would not be exercised")
fd = open_for_backup(path)
print(os.read(fd, 100).decode())
os.close(fd)
result = importlib.import_module("strongroom_agent._native").read_small_files([path], bytes(32), 1, 1 << 18)[0]
print(result[0], result[1])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a file away to another owner (root only)")
def test_without_the_right_to_keep_atime_both_paths_open_without_o_noatime(tmp_path: Path) -> None:
    """O_NOATIME needs ownership or CAP_FOWNER: without either the open is EPERM, and is made again without it."""
    native_reader()
    content = b"someone else's file"
    write_file(str(tmp_path / "f"), content)
    os.chown(tmp_path / "f", 12345, 12345)
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_FOWNER, str(tmp_path / "f")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [content.decode(), f"{int(native.Code.OK)} {len(content)}"]


def test_a_file_that_moves_on_every_read_is_left_out_as_changed() -> None:
    """A /proc file stats as 0 bytes but reads as more: a different size on every attempt."""
    status = Path(f"/proc/{os.getpid()}/status")
    outcomes = both([item(status, "status")])
    assert outcomes[0][4] == CHANGED_WHILE_READ and outcomes[0][1] is None


def test_a_read_error_is_reported_alike() -> None:
    """clear_refs opens, then refuses every read (EINVAL)."""
    refs = Path(f"/proc/{os.getpid()}/clear_refs")
    assert both([item(refs, "clear_refs")])[0][4] == "Invalid argument"


class Recording:
    def __init__(self) -> None:
        self.charged: list[int] = []

    def acquire(self, nbytes: int) -> None:
        self.charged.append(nbytes)


def test_a_throttled_group_is_read_and_charged_in_pieces_of_about_the_read_size(tmp_path: Path) -> None:
    """Under a throttle the group goes native in calls of about READ_SIZE, each charged what it read."""
    params = ChunkParams(min_size=256 << 10, avg_size=1 << 20, max_size=4 << 20, key=PARAMS.key, seed=PARAMS.seed)
    blob = os.urandom(200 << 10)
    for i in range(12):
        write_file(str(tmp_path / f"f{i}"), blob)
    items = [item(tmp_path / f"f{i}", f"f{i}") for i in range(12)]
    throttle = Recording()
    results = reader(native_reader(), throttle, params)._read_small_files(items)
    assert sum(throttle.charged) == 12 * len(blob) == sum(r.bytes_read for r in results)
    assert len(throttle.charged) == 3 and max(throttle.charged) <= READ_SIZE
    assert all(r.chunks[0].id == chunk_id(params.key, blob) for r in results)


@pytest.mark.parametrize("native_files", [None, "native"])
def test_a_stopped_job_reads_no_further(tmp_path: Path, native_files: str | None) -> None:
    write_file(str(tmp_path / "f"), b"data")
    r = reader(native_reader() if native_files else None)
    r._ctx.stop_threads.set()
    with pytest.raises(JobCanceled):
        r._read_small_files([item(tmp_path / "f", "f")])


def test_each_call_compresses_at_its_own_level(tmp_path: Path) -> None:
    """A worker thread's compression context is reused across calls, its level never: each call's own applies."""
    native_reader()
    module = importlib.import_module(native.MODULE)
    blob = b"".join(b"%08d quarterly numbers, region %d\n" % (i, i % 7) for i in range(MIN // 32))[:MIN]
    write_file(str(tmp_path / "f"), blob)

    def payloads(levels: list[int]) -> list[bytes]:
        """The file's payload at each level in turn, all in one new thread (a fresh context)."""
        out: list[bytes] = []

        def run() -> None:
            for level in levels:
                result = module.read_small_files([str(tmp_path / "f")], PARAMS.key, level, MIN)[0]
                assert result[0] == native.Code.OK, result
                out.append(result[3][2])

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return out

    (fresh_1,), (fresh_19,) = payloads([1]), payloads([19])
    assert fresh_1 != fresh_19  # the levels tell apart on this content
    assert payloads([19, 1]) == [fresh_19, fresh_1]
    assert payloads([1, 19]) == [fresh_1, fresh_19]


def test_the_native_read_starts_no_thread_of_its_own(tmp_path: Path) -> None:
    """The job's core limit counts on it: the call runs on the calling worker thread alone (no rayon, no zstdmt)."""
    for i in range(64):
        write_file(str(tmp_path / f"f{i}"), os.urandom(MIN))
    items = [item(tmp_path / f"f{i}", f"f{i}") for i in range(64)]
    native_files = native_reader()

    def run() -> None:
        for _ in range(20):
            reader(native_files)._read_small_files(items)

    before, most = threads_while(run)
    assert most <= before
