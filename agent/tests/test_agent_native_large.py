"""The native large-file step's contract: pyfastcdc's cut points, and the Python path's outcome (ADR 0083).

``cdc_cuts`` must cut every buffer where pyfastcdc cuts it (repositories were
chunked by pyfastcdc and the same data must dedup across agents): random and
structured data, every size range edge, seeds zero and non-zero, lengths
around the minimum and maximum sizes. ``FileCutter`` through ``FileReader``
must give what the Python path gives for one file: chunk ids, plaintext (the
payload decoded as the gateway does), the entry, bytes read and the problem,
also when the file grows, shrinks, vanishes or is swapped mid-read, when a
read fails, across step and read-size boundaries, and under a throttle;
for a new file (chunks compressed in the step) and a modified one (raw chunks,
compressed after dedup by the compress stage, as on the Python path: issue 13).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import itertools
import os
import random
import threading
import types
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from agent_fakes import FakeGateway, entries_by_path, native_reader, run_backup_command, threads_while, write_file
from pyfastcdc import FastCDC
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_agent.backup import native, run_backup, stages
from strongroom_agent.backup.read import CHANGED_WHILE_READ, READ_SIZE, WHOLE_FILE_BYTES, FileReader, open_for_backup
from strongroom_agent.backup.scan import ScanItem
from strongroom_agent.backup.stages import ByteBudget, Chunk
from strongroom_agent.chunking import _AVG_RANGE, _MAX_RANGE, _MIN_RANGE, ChunkParams, chunk_id
from strongroom_agent.exclusions import LinuxExclusions
from strongroom_agent.jobs import JobCanceled
from strongroom_agent.throttle import ReadThrottle, Unlimited
from test_agent_native_read import PARAMS, item, plaintext, reader

# The gateway's sizes (256 KiB / 1 MiB / 4 MiB): the stream buffer is 8 MiB, reads cross READ_SIZE.
PRODUCTION = ChunkParams(min_size=256 << 10, avg_size=1 << 20, max_size=4 << 20, key=PARAMS.key, seed=0x9E3779B9)

SIZES = [
    (_MIN_RANGE[0], _AVG_RANGE[0], _MAX_RANGE[0]),  # every lower bound
    (_MIN_RANGE[1], _AVG_RANGE[1], _MAX_RANGE[1]),  # every upper bound
    (_MIN_RANGE[0], _AVG_RANGE[1], _MAX_RANGE[1]),  # the widest
    (1024, 1024, 1024),  # min = avg = max
    (1024, 4096, 16384),  # the tests' repository
    (256 << 10, 1 << 20, 4 << 20),  # the gateway's
    (1000, 3000, 9000),  # not powers of two
    (4096, 46340, 200_000),  # log2(avg) just under x.5: rounds down
    (4096, 46341, 200_000),  # just over: rounds up
]
SEEDS = [0, 7, (1 << 32) - 1]


def extension() -> ModuleType:
    """The built module (skipped only where cargo is absent, as ``native_reader``)."""
    native_reader()
    return importlib.import_module(native.MODULE)


def structured(n: int, rnd: random.Random) -> list[bytes]:
    """Data FastCDC finds no or few cuts in, and data with repeats it must cut alike."""
    text = b"".join(b"%08d quarterly numbers, region %d\n" % (i, i % 7) for i in range(n // 32 + 1))[:n]
    block = rnd.randbytes(min(n, 5000) or 1)
    repeats = (block * (n // len(block) + 1))[:n]
    return [bytes(n), b"\xff" * n, (b"ab" * (n // 2 + 1))[:n], text, repeats]


def lengths(min_size: int, max_size: int, rnd: random.Random) -> list[int]:
    edges = [0, 1, min_size - 1, min_size, min_size + 1, max_size - 1, max_size, max_size + 1]
    return sorted({n for n in edges if n >= 0} | {2 * max_size + 1, rnd.randint(0, 3 * max_size)})


@pytest.mark.parametrize(("min_size", "avg_size", "max_size"), SIZES)
def test_cut_points_are_pyfastcdcs(min_size: int, avg_size: int, max_size: int) -> None:
    """Every buffer is cut where pyfastcdc's cut_buf cuts it, for each seed."""
    module = extension()
    rnd = random.Random(min_size * 31 + avg_size)
    for seed, n in itertools.product(SEEDS, lengths(min_size, max_size, rnd)):
        chunker = FastCDC(avg_size, min_size=min_size, max_size=max_size, seed=seed)
        for data in [rnd.randbytes(n), *structured(n, rnd)]:
            expected = [chunk.length for chunk in chunker.cut_buf(data)]
            assert module.cdc_cuts(data, min_size, avg_size, max_size, seed) == expected, (seed, n, data[:16])


def test_random_data_is_cut_into_many_chunks_at_pyfastcdcs_points() -> None:
    """A long random buffer at the tests' sizes: thousands of cuts, each of them pyfastcdc's."""
    module = extension()
    data = random.Random(5).randbytes(8 << 20)
    for seed in SEEDS:
        expected = [c.length for c in FastCDC(4096, min_size=1024, max_size=16384, seed=seed).cut_buf(data)]
        assert len(expected) > 1000
        assert module.cdc_cuts(data, 1024, 4096, 16384, seed) == expected


@pytest.mark.parametrize(
    ("min_size", "avg_size", "max_size", "seed"),
    [(63, 256, 1024, 0), (64, 255, 1024, 0), (64, 256, 1023, 0), ((1 << 20) + 1, 4 << 20, 16 << 20, 0)]
    + [(64, (4 << 20) + 1, 16 << 20, 0), (64, 256, (16 << 20) + 1, 0), (2048, 1024, 4096, 0), (64, 256, 1024, 1 << 63)],
)
def test_sizes_and_seeds_pyfastcdc_refuses_are_refused(min_size: int, avg_size: int, max_size: int, seed: int) -> None:
    module = extension()
    with pytest.raises((ValueError, OverflowError)):
        FastCDC(avg_size, min_size=min_size, max_size=max_size, seed=seed)
    with pytest.raises(ValueError):
        module.cdc_cuts(b"x" * 5000, min_size, avg_size, max_size, seed)


class Recording:
    """A throttle that records each charge and may act on the file after the ``at``-th one."""

    def __init__(self, at: int = 0, action: Callable[[], None] | None = None, times: int = 1) -> None:
        self.charged: list[int] = []
        self._at = at
        self._action = action
        self._times = times

    def acquire(self, nbytes: int) -> None:
        self.charged.append(nbytes)
        if self._action is not None and len(self.charged) >= self._at and self._times > 0:
            self._times -= 1
            self._action()


class Collect:
    """The dedup stage's place: keeps the chunks handed on and gives their budget back."""

    def __init__(self, budget: ByteBudget) -> None:
        self.chunks: list[Chunk] = []
        self._budget = budget

    async def put(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            self._budget.release(chunk.charge)
        self.chunks.extend(chunks)


def read_alone(
    path: Path,
    *,
    natively: bool,
    params: ChunkParams = PARAMS,
    throttle: Callable[[], ReadThrottle] = Unlimited,
    open_file: Callable[[str], int] = open_for_backup,
    batch_bytes: int | None = None,
    new: bool = True,
) -> tuple[object, ...]:
    """One file read on its own (``Reader._read_alone``) on one path: what both paths must agree on.

    ``new``: the previous point had no record for the file (only then does the native step compress).
    """
    scanned = item(path, path.name)
    r = reader(native_reader() if natively else None, throttle(), params)
    r._ctx.open_file = open_file
    if batch_bytes is not None:
        r._ctx.limits = dataclasses.replace(r._ctx.limits, read_batch_bytes=batch_bytes)
    budget = ByteBudget(64 << 20)
    collect = Collect(budget)
    r._budget, r._out = budget, collect  # type: ignore[assignment]
    result = asyncio.run(r._read_alone(scanned, compress=new))
    chunks = [(c.id, plaintext(c), c.compression != gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED) for c in collect.chunks]
    # The native step compresses a new file's chunks; a modified file's reach dedup raw, as the Python path's.
    assert all(encoded is (natively and new) for *_, encoded in chunks)
    assert all(cid == chunk_id(params.key, content) for cid, content, _ in chunks)
    entry = None if result is None else result[0].SerializeToString(deterministic=True)
    errors = [(e.path, e.reason) for e in r._ctx.errors]
    return [c[:2] for c in chunks], entry, errors, r._ctx.stats.bytes_read, r._ctx.stats.files_read


def both(path: Path, reset: Callable[[], None] = lambda: None, **kwargs: object) -> tuple[object, ...]:
    """Read ``path`` on both paths (``reset`` puts the file back before each); the outcome, asserted equal."""
    reset()
    python = read_alone(path, natively=False, **kwargs)  # type: ignore[arg-type]
    reset()
    natively = read_alone(path, natively=True, **kwargs)  # type: ignore[arg-type]
    assert natively == python
    return natively


@pytest.mark.parametrize(
    "size",
    [PARAMS.min_size, PARAMS.max_size, PARAMS.max_size + 1, READ_SIZE - 1, READ_SIZE, READ_SIZE + 1]
    + [WHOLE_FILE_BYTES, WHOLE_FILE_BYTES + 1, 3 * WHOLE_FILE_BYTES + 12345],
)
@pytest.mark.parametrize("new", [True, False])
def test_a_file_gives_the_same_chunks_entry_and_bytes_read(tmp_path: Path, size: int, new: bool) -> None:
    """Sizes at the chunker's edges, at the read size, and each side of the whole-file limit (stream beyond)."""
    path = tmp_path / "f"
    write_file(str(path), random.Random(size).randbytes(size))
    chunks, entry, errors, bytes_read, files_read = both(path, new=new)
    assert entry is not None and errors == [] and bytes_read == size and files_read == 1
    assert b"".join(content for _, content in chunks) == path.read_bytes()  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [PRODUCTION.min_size, 9 << 20, 3 * PRODUCTION.max_size + 1])
@pytest.mark.parametrize("throttled", [False, True])
@pytest.mark.parametrize("new", [True, False])
def test_the_gateways_sizes_cut_alike_in_steps_with_the_last_partial_chunk_carried_over(
    tmp_path: Path, size: int, throttled: bool, new: bool
) -> None:
    """Structured content (few cuts) and random, read in steps of one read batch: the partial chunk waits."""
    path = tmp_path / "f"
    rnd = random.Random(size)
    write_file(str(path), rnd.randbytes(size // 2) + structured(size - size // 2, rnd)[3])
    throttle: Callable[[], ReadThrottle] = Recording if throttled else Unlimited
    for batch in (1, PRODUCTION.max_size, 5 << 20):
        chunks, *_ = both(path, params=PRODUCTION, throttle=throttle, batch_bytes=batch, new=new)
        assert b"".join(content for _, content in chunks) == path.read_bytes()  # type: ignore[attr-defined]


def test_an_empty_file_has_no_chunk(tmp_path: Path) -> None:
    write_file(str(tmp_path / "f"), b"")
    chunks, entry, errors, bytes_read, _ = both(tmp_path / "f")
    assert chunks == [] and entry is not None and errors == [] and bytes_read == 0


STAMP = 2_000_000_000_000_000_000  # the files' mtime, the same on both paths' reads (the entry holds it)


def mutations(path: Path, other: Path) -> dict[str, Callable[[], None]]:
    """Changes made mid-read; each leaves a fixed mtime (the ctime still moves), so both paths' entries agree."""

    def grow() -> None:
        with path.open("ab") as f:
            f.write(b"more" * 1000)
        os.utime(path, ns=(STAMP, STAMP + 1))

    def shrink() -> None:
        os.truncate(path, path.stat().st_size // 2)
        os.utime(path, ns=(STAMP, STAMP + 2))

    def rewrite() -> None:
        data = bytearray(path.read_bytes())
        data[0] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(STAMP, STAMP + 3))

    return {
        "grown": grow,
        "shrunk": shrink,
        "rewritten": rewrite,
        "vanished": path.unlink,
        "swapped": lambda: os.replace(other, path),
    }


@pytest.mark.parametrize("size", [PRODUCTION.min_size + 5, 2 * READ_SIZE + 5, WHOLE_FILE_BYTES + READ_SIZE])
@pytest.mark.parametrize("how", ["grown", "shrunk", "rewritten", "vanished", "swapped"])
@pytest.mark.parametrize("times", [1, 1000])
def test_a_file_changed_mid_read_gives_the_same_outcome(tmp_path: Path, size: int, how: str, times: int) -> None:
    """Once (the second attempt reads it as it is now) or on every read (left out as changed).

    The change is made after a read is charged to the throttle: under a throttle both paths
    read in the same pieces with the gateway's sizes, so each sees the file as the other did.
    """
    path, other = tmp_path / "f", tmp_path / "other"
    content = random.Random(size).randbytes(size)

    def reset() -> None:
        write_file(str(path), content)
        write_file(str(other), content[::-1])
        os.utime(path, ns=(STAMP, STAMP))
        os.utime(other, ns=(STAMP, STAMP))

    mutate = mutations(path, other)[how]

    def action() -> None:
        try:
            mutate()
        except FileNotFoundError:
            pass  # vanished or swapped already: once is all there is

    def throttle() -> Recording:
        return Recording(at=1, action=action, times=times)

    chunks, entry, errors, bytes_read, files_read = both(path, reset, throttle=throttle, params=PRODUCTION)
    # Beyond the whole-file limit a file growing on every read is read until the growth stops (1000 times).
    if times > 1 and (how in ("shrunk", "rewritten") or (how == "grown" and size <= WHOLE_FILE_BYTES)):
        assert errors == [(str(path), CHANGED_WHILE_READ)] and entry is None
    else:  # changed once (or only once possible): the second attempt reads it as it is now
        assert errors == [] and entry is not None
    assert bytes_read > 0


def test_a_read_error_is_reported_alike(tmp_path: Path) -> None:
    """A descriptor that refuses reads (opened write-only): the read's error, as ``os.readv`` raises it."""
    path = tmp_path / "f"
    write_file(str(path), os.urandom(2 * READ_SIZE))
    for size in (100, 2 * READ_SIZE, WHOLE_FILE_BYTES + 1):
        os.truncate(path, size)
        _, entry, errors, bytes_read, _ = both(path, open_file=lambda p: os.open(p, os.O_WRONLY | os.O_CLOEXEC))
        assert entry is None and errors == [(str(path), "Bad file descriptor")] and bytes_read == 0


def test_a_throttled_file_is_charged_in_pieces_of_at_most_the_read_size(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_file(str(path), os.urandom(WHOLE_FILE_BYTES + 3 * READ_SIZE + 7))
    for natively in (False, True):
        throttle = Recording()
        read_alone(path, natively=natively, params=PRODUCTION, throttle=lambda t=throttle: t)  # type: ignore[misc]
        assert sum(throttle.charged) == path.stat().st_size and max(throttle.charged) <= READ_SIZE


def file_reader(path: Path, stop: threading.Event, cutter: native.NativeCutter | None) -> FileReader:
    return FileReader(str(path), PRODUCTION, open_for_backup, Unlimited(), stop, 1 << 20, cutter)


def test_a_stopped_job_reads_no_further(tmp_path: Path) -> None:
    """Both paths stop before their next read (the native one before its next call)."""
    path = tmp_path / "f"
    write_file(str(path), os.urandom(WHOLE_FILE_BYTES + 3 * READ_SIZE))
    cutters = [native_reader().cutter(PRODUCTION, compress=compress) for compress in (True, False)]
    for cutter in (None, *cutters):
        stop = threading.Event()
        r = file_reader(path, stop, cutter)
        try:
            assert not r.step().done
            stop.set()
            with pytest.raises(JobCanceled):
                while not r.step().done:
                    pass
        finally:
            r.close()
    stop = threading.Event()
    r = file_reader(path, stop, native_reader().cutter(PRODUCTION, compress=True))
    try:
        r.step()
        stop.set()
        with pytest.raises(JobCanceled):
            r.step()
    finally:
        r.close()


def test_without_the_switch_large_files_are_read_on_the_python_path(tmp_path: Path) -> None:
    """``STRONGROOM_AGENT_NATIVE=0`` is the one switch: no cutter, raw chunks for the compress stage."""
    assert native.from_env({native.NATIVE_ENV: "0"}) is None
    path = tmp_path / "f"
    write_file(str(path), os.urandom(2 * READ_SIZE))
    native_reader()
    chunks = first_step(path, native.from_env({native.NATIVE_ENV: "0"}))
    assert chunks and all(c.compression == gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED for c in chunks)
    chunks = first_step(path, native.from_env({}))
    assert chunks and all(c.compression != gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED for c in chunks)


def first_step(path: Path, native_files: native.NativeExtension | None) -> list[Chunk]:
    """The chunks of the first step the job's reader takes through ``path``, read as a new file."""
    file = reader(native_files)._reader(ScanItem(rel="f", path=str(path), st=path.stat()), compress=True)
    try:
        return file.step().chunks
    finally:
        file.close()


def test_the_native_step_starts_no_thread_of_its_own(tmp_path: Path) -> None:
    """The job's core limit counts on it: the step runs on the calling worker thread alone."""
    path = tmp_path / "f"
    write_file(str(path), os.urandom(WHOLE_FILE_BYTES + READ_SIZE))

    def run() -> None:
        for _ in range(3):
            r = file_reader(path, threading.Event(), native_reader().cutter(PRODUCTION, compress=True))
            while not r.step().done:
                pass
            r.close()

    before, most = threads_while(run)
    assert most <= before


def test_a_build_with_another_cutter_format_reads_large_files_on_the_python_path(tmp_path: Path) -> None:
    """A stale or newer build's cutter is not used (its results might be shaped otherwise); small files still are."""
    module = extension()
    stale = types.SimpleNamespace(read_small_files=module.read_small_files, FileCutter=module.FileCutter, CDC_FORMAT=99)
    native_files = native.NativeExtension(stale)  # type: ignore[arg-type]
    assert native_files.cutter(PRODUCTION, compress=True) is None
    path = tmp_path / "f"
    write_file(str(path), os.urandom(2 * READ_SIZE))
    chunks = first_step(path, native_files)
    assert chunks and all(c.compression == gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED for c in chunks)
    assert native.NativeExtension(module).cutter(PRODUCTION, compress=True) is not None


class PythonWalk(LinuxExclusions):
    """The Linux exclusions, but not of that type: the walk runs on the Python path (``tree_compare``)."""


async def backup_twice(
    tmp_path: Path, native_files: native.NativeExtension | None, exclusions: LinuxExclusions
) -> list[tuple[object, ...]]:
    """A large file backed up new, then modified in a few places; per backup what dedup saw and what was compressed.

    Per backup: the compression of each chunk handed to dedup, the content of each chunk the compress
    stage compressed, the ids uploaded, the file's chunk ids and its content as the gateway stored it.
    """
    root, state = tmp_path / "src", tmp_path / "state"
    big = root / "big.db"
    data = bytearray(random.Random(13).randbytes(3 << 20))  # above small_file_bytes: read on its own, in steps
    write_file(str(big), bytes(data), mtime_ns=STAMP)
    gateway = FakeGateway()
    outcomes: list[tuple[object, ...]] = []
    at_dedup: list[int] = []
    compressed: list[bytes] = []
    put, compress = stages.Deduper.put, stages.compress

    async def spy_put(self: stages.Deduper, group: list[Chunk]) -> None:
        at_dedup.extend(chunk.compression for chunk in group)
        await put(self, group)

    def spy_compress(content: bytes) -> tuple[gateway_pb2.ChunkCompression.ValueType, bytes]:
        compressed.append(bytes(content))
        return compress(content)

    for job in ("job-1", "job-2"):
        at_dedup.clear()
        compressed.clear()
        uploaded = len(gateway.uploaded)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(stages.Deduper, "put", spy_put)
            patch.setattr(stages, "compress", spy_compress)
            finished = await run_backup(
                run_backup_command(job),
                client=gateway,
                points=[common_pb2.Filesystem(mount_point=str(root), device="/dev/vdz", fs_type="ext4")],
                exclusions=exclusions,
                cancel=asyncio.Event(),
                state_dir=str(state),
                native=native_files,
            )
        assert finished.status == common_pb2.JOB_STATUS_COMPLETE, finished
        entry = entries_by_path(gateway.points[f"point-{job[-1]}"])["big.db"]
        new_ids = gateway.uploaded[uploaded:]
        outcomes.append((list(at_dedup), list(compressed), new_ids, list(entry.chunk_ids), gateway.content(entry)))
        for offset in (100_000, 1_500_000, 2_900_000):  # a few small rewrites: most chunks stay known
            data[offset : offset + 8] = b"REWRITE!"
        write_file(str(big), bytes(data), mtime_ns=STAMP + 1)
    return outcomes


@pytest.mark.parametrize("walk", [LinuxExclusions, PythonWalk])
async def test_a_modified_large_file_is_compressed_after_dedup_and_a_new_one_as_it_is_read(
    tmp_path: Path, walk: type[LinuxExclusions]
) -> None:
    """Issue 13: the native step compresses only a file the previous point did not have.

    New: every chunk reaches dedup compressed and the compress stage compresses none. Modified:
    every chunk reaches dedup raw and the compress stage compresses only those dedup passed (the
    few around the rewrites), as the Python path does. Ids, uploads and stored content are the
    Python path's in both backups. Both walks (native and Python) tell a new file from a modified one.
    """
    natively = await backup_twice(tmp_path / "native", native_reader(), walk())
    python = await backup_twice(tmp_path / "python", None, LinuxExclusions())
    (dedup_1, compressed_1, new_1, ids_1, content_1), (dedup_2, compressed_2, new_2, ids_2, content_2) = natively
    unspecified = gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED
    assert len(ids_1) > 100 and len(dedup_1) == len(ids_1) and unspecified not in dedup_1 and compressed_1 == []
    assert dedup_2 == [unspecified] * len(ids_2)
    assert 3 <= len(new_2) <= 12 and len(compressed_2) == len(new_2)
    params = ChunkParams.from_proto(run_backup_command().repository)
    assert sorted(chunk_id(params.key, content) for content in compressed_2) == sorted(new_2)
    for (_, _, *same_native), (_, _, *same_python) in zip(natively, python, strict=True):
        assert same_native == same_python
    assert python[0][1] != [] and sorted(python[1][1]) == sorted(compressed_2)  # the Python path: after dedup only
    assert content_1 != content_2 and set(new_2) == set(ids_2) - set(ids_1)
