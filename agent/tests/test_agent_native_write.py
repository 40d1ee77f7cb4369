"""The native write of new restored files: the same outcome as the Python path, file by file (ADR 0082).

Every case writes the same batch of files twice, into two destinations set up
alike, with the writers' Python path and with the native write, and compares
per file what became of it (written, skipped, its error) and the whole tree
left behind: content, mode, mtime, owner (and, as root, owners other than
the test's). Where cargo is installed the extension must be built (``make
native``); the native cases are skipped, with the reason, only where it is not.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard
from agent_fakes import built_native
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_agent.restore import native
from strongroom_agent.restore.content import Contents
from strongroom_agent.restore.destination import Destination
from strongroom_agent.restore.writer import NATIVE_RUN_FILES, File, Writer
from strongroom_agent.wire import SentChunk

ZSTD = gateway_pb2.CHUNK_COMPRESSION_ZSTD
NONE = gateway_pb2.CHUNK_COMPRESSION_NONE
UNSPECIFIED = gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED
AS_ROOT = [False, True] if os.geteuid() == 0 else [False]
MIB = 1 << 20


def native_writes() -> native.NativeWrites:
    """The built extension; skips only where cargo is absent (then nothing could have built it)."""
    return built_native(native.load())


def content(seed: str, size: int) -> bytes:
    """``size`` bytes, compressible but not trivially (a hash chain)."""
    out = bytearray()
    block = seed.encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block.hex().encode()
    return bytes(out[:size])


def frame(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


def in_message(data: bytes) -> memoryview:
    """``data`` as a view into a larger buffer, as chunks parsed out of a gateway message are."""
    return memoryview(b"header" + data + b"trailer")[6 : 6 + len(data)]


@dataclass
class Spec:
    """A file of the batch: its path, its chunks as sent, its entry's fields."""

    path: str
    chunks: list[SentChunk] = field(default_factory=list)
    mode: int = 0o644
    mtime_ns: int = 1_700_000_000_123_456_789
    size: int | None = None  # the entry's size; None: the sum of the chunks' lengths
    owner: tuple[int, int] | None = None  # None: the test's own ids
    new_dir: bool = False


def zstd_chunk(name: str, data: bytes, *, view: bool = False) -> SentChunk:
    encoded = frame(data)
    return SentChunk(
        hashlib.blake2b(name.encode(), digest_size=32).digest(),
        in_message(encoded) if view else encoded,
        ZSTD,
        len(data),
    )


def stored_chunk(name: str, data: bytes, compression: int = NONE) -> SentChunk:
    return SentChunk(hashlib.blake2b(name.encode(), digest_size=32).digest(), in_message(data), compression, len(data))


def batch_specs() -> list[Spec]:
    big = [content(f"big{n}", MIB) for n in range(5)]
    truncated = frame(content("trunc", 5000))
    corrupt = bytearray(frame(content("corrupt", 50_000)))
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 64] = bytes(64)
    declares = frame(content("declares", 300))
    other = (1234, 4321)
    return [
        Spec("a/plain", [zstd_chunk("plain", content("plain", 1000), view=True)]),
        Spec("a/stored", [stored_chunk("stored", os.urandom(700))], mode=0o640),
        Spec("a/unspecified", [stored_chunk("unspec", os.urandom(90), UNSPECIFIED)], mode=0o600),
        Spec("a/empty", [], mode=0o600),
        Spec("a/one-byte", [zstd_chunk("one", b"x")], mode=0o644, owner=other),
        Spec(
            "a/several",  # more than the 4 MiB decode buffer: written in two writev rounds
            [zstd_chunk(f"big{n}", big[n], view=n % 2 == 0) for n in range(5)]
            + [stored_chunk("tail", b"tail"), zstd_chunk("small", content("small", 200))],
            mode=0o755,
        ),
        Spec("a/umasked", [zstd_chunk("umasked", content("umasked", 3000))], mode=0o666),
        Spec("a/setuid", [zstd_chunk("setuid", content("setuid", 3000))], mode=0o4755, owner=other),
        Spec("a/no-access", [zstd_chunk("noacc", content("noacc", 10))], mode=0o000),
        Spec("a/old", [zstd_chunk("old", content("old", 10))], mtime_ns=-1_500_000_001),
        Spec("a/truncated", [zstd_chunk("t-ok", b"fine"), SentChunk(b"t" * 32, truncated[:-40], ZSTD, 5000)]),
        Spec("a/corrupt", [SentChunk(b"c" * 32, bytes(corrupt), ZSTD, 50_000)]),
        Spec("a/missing", [SentChunk(b"m" * 32, b"", ZSTD, 10, "not in storage")]),
        Spec("a/declares", [SentChunk(b"d" * 32, declares, ZSTD, 301)]),
        Spec("a/wrong-size", [zstd_chunk("ws", content("ws", 100))], size=99),
        Spec("a/taken", [zstd_chunk("taken", content("taken", 100))]),  # a file appears after the check
        Spec("a/dir", [zstd_chunk("dir", content("dir", 100))]),  # a directory appears after the check
        Spec("b/next", [zstd_chunk("next", content("next", 100))]),
        Spec("b/" + "n" * 300, [zstd_chunk("long", content("long", 100))]),  # ENAMETOOLONG at the create
        Spec("f/under-a-file", [zstd_chunk("uaf", content("uaf", 100))]),  # "f" is a regular file
        Spec("n/mine", [zstd_chunk("mine", content("mine", 100))], mode=0o640, new_dir=True),
        Spec("n/theirs", [zstd_chunk("theirs", content("theirs", 100))], mode=0o640, owner=other, new_dir=True),
    ]


def set_up(root: Path) -> None:
    """What appeared in the destination since the check (the same for both paths)."""
    for name in ("a", "b", "n"):
        (root / name).mkdir()
    (root / "a" / "taken").write_bytes(b"there before")
    (root / "a" / "dir").mkdir()
    (root / "f").write_bytes(b"a file")
    for name in ("a/taken", "f"):
        os.utime(root / name, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))


Outcome = tuple[str, bool, bool, str | None]


def write_batch(
    root: Path, specs: list[Spec], *, as_root: bool, overwrite: bool, native_writes: native.NativeWrites | None
) -> list[Outcome]:
    """Write ``specs`` as one run of checked files whose names were free at the check; each file's outcome."""
    files = []
    for spec in specs:
        uid, gid = spec.owner or (os.geteuid(), os.getegid())
        size = sum(c.raw_length for c in spec.chunks) if spec.size is None else spec.size
        entry = common_pb2.FileEntry(
            path=spec.path, mode=stat.S_IFREG | spec.mode, mtime_ns=spec.mtime_ns, size=size, uid=uid, gid=gid
        )
        ids = [c.chunk_id for c in spec.chunks]
        files.append(File(spec.path.split("/"), entry, ids, exists=False, new_dir=spec.new_dir))
    contents = Contents.of(c for spec in specs for c in spec.chunks)
    dest = Destination(str(root), as_root=as_root, native=native_writes)
    try:
        Writer(dest, threading.Event()).write(files, contents, overwrite)
    finally:
        dest.close()
    return [(f.entry.path, f.written, f.skipped, f.error) for f in files]


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: kind, content (files), permission bits, mtime (files), owner."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            else:
                out[rel] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid)
    return out


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[native.NativeWrites, list[int]]]:
    """The native write, with the files of each of its calls counted (so a test sees it was used)."""
    writes = native_writes()
    calls: list[int] = []
    real = writes.write

    def write(pfd: int, files: list[native.NewFile]) -> list[tuple[native.Written, int]]:
        calls.append(len(files))
        return real(pfd, files)

    monkeypatch.setattr(writes, "write", write)
    yield writes, calls


def both(
    tmp_path: Path,
    specs: list[Spec],
    writes: native.NativeWrites,
    *,
    as_root: bool,
    overwrite: bool,
    setup: Callable[[Path], None] = set_up,
) -> tuple[list[Outcome], dict[str, tuple[object, ...]]]:
    """The batch written on both paths; asserts they agree file by file and in the tree; the outcome."""
    results = []
    for name, chosen in (("python", None), ("native", writes)):
        root = tmp_path / name
        root.mkdir()
        setup(root)
        outcomes = write_batch(root, specs, as_root=as_root, overwrite=overwrite, native_writes=chosen)
        results.append((outcomes, tree(root)))
    (py_outcomes, py_tree), (native_outcomes, native_tree) = results
    assert native_outcomes == py_outcomes
    assert native_tree == py_tree
    return results[1]


@pytest.mark.parametrize("as_root", AS_ROOT)
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_batch_comes_out_the_same_on_both_paths(
    tmp_path: Path, counted: tuple[native.NativeWrites, list[int]], as_root: bool, overwrite: bool
) -> None:
    writes, calls = counted
    specs = batch_specs()
    outcomes, files = both(tmp_path, specs, writes, as_root=as_root, overwrite=overwrite)
    by_path = {path: (written, skipped, error) for path, written, skipped, error in outcomes}
    # The native path was taken: one run per directory (a, b, n; "f" is no directory), without the files whose
    # chunks were refused before anything was created.
    assert calls == [14, 2, 2]
    expected = {
        s.path: b"".join(zstandard.decompress(c.data) if c.compression == ZSTD else bytes(c.data) for c in s.chunks)
        for s in specs[:10]
    }
    for path, data in expected.items():
        assert by_path[path] == (True, False, None), path
        assert files[path][1] == data, path
    spec = {s.path: s for s in specs}
    assert files["a/setuid"][2] == 0o4755 and files["a/no-access"][2] == 0o000 and files["a/umasked"][2] == 0o666
    assert files["a/old"][3] == -1_500_000_001 and files["a/plain"][3] == spec["a/plain"].mtime_ns
    if as_root:
        assert files["a/setuid"][4:] == (1234, 4321) and files["n/theirs"][4:] == (1234, 4321)
    # Damaged content: an error naming the chunk, and nothing under the name.
    for path in ("a/truncated", "a/corrupt", "a/missing", "a/declares"):
        written, _, error = by_path[path]
        assert not written and error is not None and "is damaged in storage" in error, (path, error)
        assert path not in files
    assert "does not decode" in str(by_path["a/truncated"][2]) and "does not decode" in str(by_path["a/corrupt"][2])
    assert by_path["a/wrong-size"] == (False, False, "content is 100 bytes, expected 99")
    assert by_path["b/" + "n" * 300] == (False, False, os.strerror(36))  # ENAMETOOLONG
    assert by_path["f/under-a-file"][2] is not None and "is not a directory" in by_path["f/under-a-file"][2]
    if overwrite:
        assert by_path["a/taken"] == (True, False, None) and files["a/taken"][1] == content("taken", 100)
        assert by_path["a/dir"] == (False, False, "a directory is in the way")
    else:
        assert by_path["a/taken"] == (False, True, None) and files["a/taken"][1] == b"there before"
        assert by_path["a/dir"] == (False, True, None)
    assert not any(".strongroom-restore-" in p for p in files)


def test_long_runs_are_cut_and_every_file_is_written(
    tmp_path: Path, counted: tuple[native.NativeWrites, list[int]]
) -> None:
    """More files of one directory than one call takes: several calls, all written alike."""
    writes, calls = counted
    count = NATIVE_RUN_FILES + 5
    specs = [Spec(f"a/f{n}", [zstd_chunk(f"f{n}", content(f"f{n}", 50 + n))]) for n in range(count)]
    outcomes, files = both(
        tmp_path, specs, writes, as_root=False, overwrite=False, setup=lambda root: (root / "a").mkdir()
    )
    assert calls == [NATIVE_RUN_FILES, 5]
    assert all(written for _, written, _, _ in outcomes) and len(files) == count + 1


def test_a_write_that_fails_after_creation_leaves_nothing(
    tmp_path: Path, counted: tuple[native.NativeWrites, list[int]]
) -> None:
    """A file the kernel refuses to grow (EFBIG under a file size limit) is unlinked; its neighbours are written."""
    writes, calls = counted
    specs = [
        Spec("a/before", [zstd_chunk("before", content("before", 1000))]),
        Spec("a/too-big", [zstd_chunk(f"tb{n}", content(f"tb{n}", MIB)) for n in range(3)]),
        Spec("a/after", [stored_chunk("after", os.urandom(1000))]),
    ]
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (MIB + MIB // 2, hard))  # a short write first, then EFBIG
    try:
        outcomes, files = both(
            tmp_path, specs, writes, as_root=False, overwrite=False, setup=lambda root: (root / "a").mkdir()
        )
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert calls == [3]
    assert outcomes == [
        ("a/before", True, False, None),
        ("a/too-big", False, False, os.strerror(27)),  # EFBIG
        ("a/after", True, False, None),
    ]
    assert sorted(files) == ["a", "a/after", "a/before"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a directory without write permission")
def test_an_unwritable_directory_gives_the_same_error(
    tmp_path: Path, counted: tuple[native.NativeWrites, list[int]]
) -> None:
    writes, _ = counted
    specs = [Spec("a/x", [zstd_chunk("x", b"x" * 10)]), Spec("a/y", [])]

    def unwritable(root: Path) -> None:
        (root / "a").mkdir(mode=0o500)

    try:
        outcomes, files = both(tmp_path, specs, writes, as_root=False, overwrite=False, setup=unwritable)
    finally:
        for name in ("python", "native"):
            (tmp_path / name / "a").chmod(0o700)
    assert outcomes == [("a/x", False, False, os.strerror(13)), ("a/y", False, False, os.strerror(13))]
    assert sorted(files) == ["a"]


def test_a_stale_build_or_the_switch_leaves_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    native_writes()
    assert native.from_env({"STRONGROOM_AGENT_NATIVE": "0"}) is None
    assert isinstance(native.from_env({}), native.NativeWrites)
    module = __import__("strongroom_agent._native", fromlist=["WRITE_FORMAT"])
    monkeypatch.setattr(module, "WRITE_FORMAT", native.WRITE_FORMAT + 1)
    assert native.load() is None
