"""The native walk's contract: step for step what ``compare.TreeCompare`` finds, byte for byte (ADR 0085).

Each case walks one tree against one cache on both paths in lockstep (a
Python step, then the native step, then whatever the case changes on disk)
and compares every step: the ``Known`` runs' bytes (the new cache's records
and the spool's), the files handed out to read (paths, lstat, the cached
record), the errors reported, the counters and the end. Step sizes 1, 3 and
4,096. End to end, a backup on each path from the same cache must commit the
same delta and write the same cache file. Where cargo is installed the
extension must be built (``make native``); the cases are skipped, with the
reason, only where it is not.
"""

from __future__ import annotations

import asyncio
import copy
import ctypes
import multiprocessing
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_fakes import REPOSITORY, FakeGateway, native_reader, run_backup_command, write_file
from strongroom.common.v1 import common_pb2
from strongroom_agent import cache
from strongroom_agent.backup import PipelineLimits, run_backup
from strongroom_agent.backup.compare import Changed, Known, Step, TreeCompare
from strongroom_agent.backup.native import NativeTreeCompare
from strongroom_agent.chunking import ChunkParams
from strongroom_agent.exclusions import Exclusions, LinuxExclusions, WindowsExclusions

PARAMS = ChunkParams.from_proto(REPOSITORY)
SIZES = [(1, 1), (3, 2), (4096, 64)]
ALL_TRUSTED = 2**62


def _point(root: Path) -> common_pb2.Filesystem:
    return common_pb2.Filesystem(mount_point=str(root), device="/dev/vdz", fs_type="ext4", capacity_bytes=1 << 30)


def _backup(root: Path, state: Path, gateway: FakeGateway, job: str, *, native: bool) -> None:
    finished = asyncio.run(
        run_backup(
            run_backup_command(job),
            client=gateway,
            points=[_point(root)],
            exclusions=LinuxExclusions(),
            cancel=asyncio.Event(),
            limits=PipelineLimits(racy_window_ns=0),
            state_dir=str(state),
            native=native_reader() if native else None,
        )
    )
    assert finished.status in (common_pb2.JOB_STATUS_COMPLETE, common_pb2.JOB_STATUS_PARTIAL_COMPLETE)


def _stat(st: os.stat_result) -> tuple[int, ...]:
    return (*st, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns, st.st_blksize, st.st_blocks, st.st_rdev)


def _record(record: cache.CacheRecord | None) -> object:
    if record is None:
        return None
    return (record.path, record.key, record.trusted, record.raw, record._body, record._kind)


def _norm(step: Step) -> object:
    items: list[object] = []
    for item in step.items:
        if isinstance(item, Known):
            fields = (item.cache_records, item.cache_count, item.first, item.last, item.spool, item.spool_entries)
            items.append(("known", *fields))
        else:
            assert isinstance(item, Changed)
            scanned = item.item
            where = (scanned.rel, scanned.path, scanned.link_target, _stat(scanned.st))
            items.append(("changed", item.path, where, _record(item.cached)))
    counters = (step.files_scanned, step.bytes_scanned, step.files_unchanged, step.bytes_unchanged)
    return items, [(e.path, e.reason) for e in step.errors], counters, step.done


def _cursor(state: Path | None, root: Path) -> cache.CacheCursor | None:
    if state is None:
        return None
    info = cache.load(str(state), PARAMS, str(root))
    assert info is not None
    return cache.CacheCursor(info)


def lockstep(
    root: Path,
    state: Path | None,
    *,
    step_entries: int,
    run_entries: int,
    racy_before_ns: int | None = ALL_TRUSTED,
    exclusions: Exclusions | None = None,
    between: Callable[[int], None] | None = None,
) -> list[object]:
    """Both walks to the end, step by step (asserting each pair equal); the steps, normalized."""
    exclusions = exclusions or LinuxExclusions()
    py_cursor, native_cursor = _cursor(state, root), _cursor(state, root)
    python = TreeCompare(
        str(root), exclusions, py_cursor, racy_before_ns, step_entries=step_entries, run_entries=run_entries
    )
    walk = native_reader().tree_compare(
        TreeCompare(
            str(root), exclusions, native_cursor, racy_before_ns, step_entries=step_entries, run_entries=run_entries
        )
    )
    assert isinstance(walk, NativeTreeCompare)
    steps: list[object] = []
    try:
        for number in range(1_000_000):
            outcomes = []
            for compare in (python, walk):
                try:
                    outcomes.append(_norm(compare.step()))
                except OSError as exc:  # the root: both raise the same, then delete every cached path
                    outcomes.append(("root", type(exc), exc.errno, exc.strerror, exc.filename))
                    compare.end_walk()
            assert outcomes[0] == outcomes[1], f"step {number}"
            steps.append(outcomes[0])
            if between is not None:
                between(number)
            if outcomes[0][-1] is True:
                break
        if py_cursor is not None and native_cursor is not None:
            assert (py_cursor.broken, py_cursor.records_read) == (native_cursor.broken, native_cursor.records_read)
    finally:
        for cursor in (py_cursor, native_cursor):
            if cursor is not None:
                cursor.close()
    return steps


def _walked(steps: list[object]) -> list[tuple[list[tuple[object, ...]], list[tuple[str, str]], object, bool]]:
    """The steps that walked (not the root's failure)."""
    return [step for step in steps if step[0] != "root"]  # type: ignore[index,misc]


def _changed_paths(steps: list[object]) -> list[bytes]:
    out: list[bytes] = []
    for items, _errors, _counters, _done in _walked(steps):
        out.extend(item[1] for item in items if item[0] == "changed")  # type: ignore[misc]
    return out


def _errors(steps: list[object]) -> list[tuple[str, str]]:
    return [error for step in _walked(steps) for error in step[1]]


def _spool(steps: list[object]) -> list[tuple[str, str]]:
    """The spool's records of every run: ("E", path) for a sent entry, ("D", path) for a deleted one."""
    out = []
    for items, _errors, _counters, _done in _walked(steps):
        for item in items:
            if item[0] != "known":
                continue
            spool, position = item[5], 0
            while position < len(spool):
                (length,) = struct.unpack(">I", spool[position + 1 : position + 5])
                body = spool[position + 5 : position + 5 + length]
                kind = spool[position : position + 1].decode()
                out.append((kind, common_pb2.FileEntry.FromString(body).path if kind == "E" else body.decode()))
                position += 5 + length
    return out


def _tree(root: Path) -> None:
    for d in range(4):
        for f in range(5):
            write_file(str(root / f"d{d}" / f"f{f}"), f"{d}-{f}".encode() * 40)
    write_file(str(root / "a-c"), b"sorts between a and a/")
    write_file(str(root / "a" / "b"), b"b")
    (root / "empty").mkdir()
    long_name = "n" * 200  # a path field of two varint bytes
    write_file(str(root / "d0" / long_name), b"long")
    (root / "d0" / ("dir" + "m" * 140)).mkdir()
    types = root / "types"
    write_file(str(types / "file-to-x"), b"x")
    (types / "dir-to-file").mkdir()
    write_file(str(types / "dir-to-x" / "inside"), b"x")
    os.symlink("../d0/f0", types / "link-to-file")
    os.symlink("dangling target", types / "link-to-dir")
    write_file(str(root / "hard" / "one"), b"linked")
    os.link(root / "hard" / "one", root / "hard" / "two")
    os.link(root / "hard" / "one", root / "d1" / "three")
    write_file(str(root / "rename" / "old"), b"renamed")
    write_file(str(root / "gone" / "sub" / "f"), b"deleted with its directory")
    write_file(str(root / "meta" / "mtime"), b"m")
    write_file(str(root / "meta" / "ctime"), b"c")
    write_file(str(root / "meta" / "size"), b"s")
    write_file(str(root / "meta" / "inode"), b"i")
    (root / "meta" / "old-dir").mkdir()
    os.utime(root / "meta" / "old-dir", ns=(-5_000_000_123, -5_000_000_123))  # int64 mtime before 1970
    os.symlink("d0", root / "meta" / "old-link")
    os.utime(root / "meta" / "old-link", ns=(7, 7), follow_symlinks=False)
    if os.geteuid() == 0:  # owners other than root's 0: the uid and gid fields are written
        os.chown(root / "d1", 1234, 5678)
        os.lchown(root / "meta" / "old-link", 4321, 8765)
    write_file(str(root / "excl" / "f"), b"excluded")
    write_file(str(root / "d2" / "nested-excl" / "f"), b"excluded below")


def _change(root: Path) -> None:
    """Every kind of change a daily backup meets, on the tree ``_tree`` built."""
    meta = root / "meta"
    st = os.stat(meta / "mtime")
    os.utime(meta / "mtime", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    os.chmod(meta / "ctime", 0o644)  # same mode: only ctime moves
    write_file(str(meta / "size"), b"ss")
    st = os.stat(meta / "inode")
    write_file(str(meta / "inode.tmp"), b"i", mtime_ns=st.st_mtime_ns)
    os.replace(meta / "inode.tmp", meta / "inode")
    os.chmod(root / "d3", 0o700)  # a directory's entry changed
    write_file(str(root / "d1" / "new"), b"new")
    write_file(str(root / "new-dir" / "f"), b"new too")
    (root / "d0" / "f2").unlink()
    shutil.rmtree(root / "gone")
    os.rename(root / "rename" / "old", root / "rename" / "new")
    types = root / "types"
    (types / "file-to-x").unlink()
    (types / "file-to-x").mkdir()
    shutil.rmtree(types / "dir-to-file")
    write_file(str(types / "dir-to-file"), b"now a file")
    (types / "link-to-file").unlink()
    write_file(str(types / "link-to-file"), b"was a link")
    (types / "link-to-dir").unlink()
    (types / "link-to-dir").mkdir()
    shutil.rmtree(types / "dir-to-x")
    os.symlink("x", types / "dir-to-x")
    with open(root / "hard" / "two", "ab") as f:  # every name of the inode changed
        f.write(b"+")
    os.mkfifo(root / "d1" / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "d1" / "sock"))
    bad = os.fsencode(str(root / "d2")) + b"/bad-\xff-name"
    with open(bad, "wb") as f:
        f.write(b"not UTF-8")
    os.symlink(b"target-\xfe", os.fsencode(str(root / "d2")) + b"/bad-target")


@pytest.fixture
def changed_tree(tmp_path: Path) -> tuple[Path, Path]:
    root, state = tmp_path / "src", tmp_path / "state"
    _tree(root)
    _backup(root, state, FakeGateway(), "job-1", native=False)
    _change(root)
    return root, state


@pytest.mark.parametrize(("step_entries", "run_entries"), SIZES)
def test_a_changed_tree_walks_the_same_on_both_paths(
    changed_tree: tuple[Path, Path], step_entries: int, run_entries: int
) -> None:
    root, state = changed_tree
    extra = [str(root / "excl"), str(root / "d2" / "nested-excl")]
    steps = lockstep(root, state, step_entries=step_entries, run_entries=run_entries, exclusions=LinuxExclusions(extra))
    # The cases happened (so that the equality above covers them).
    changed = _changed_paths(steps)
    for path in (b"meta/mtime", b"meta/ctime", b"meta/size", b"meta/inode", b"d1/new", b"new-dir/f", b"rename/new"):
        assert path in changed
    assert {b"hard/one", b"hard/two", b"d1/three"} <= set(changed)
    assert {b"types/dir-to-file", b"types/link-to-file"} <= set(changed)
    assert b"d0/f0" not in changed and b"d1/f1" not in changed
    spool = _spool(steps)
    assert ("D", "d0/f2") in spool and ("D", "gone/sub/f") in spool and ("D", "rename/old") in spool
    assert ("E", "d3") in spool and ("E", "types/file-to-x") in spool and ("E", "types/link-to-dir") in spool
    assert ("D", "excl/f") in spool and ("D", "d2/nested-excl") in spool
    assert not any(path.startswith("meta/old") for _kind, path in spool)  # unchanged: not sent
    assert all(b"fifo" not in path and b"sock" not in path for path in changed)
    reasons = dict(_errors(steps))
    assert reasons[os.fsdecode(os.fsencode(str(root / "d2")) + b"/bad-\xff-name")] == "name is not valid UTF-8"
    assert reasons[str(root / "d2" / "bad-target")] == "symlink target is not valid UTF-8"


@pytest.mark.parametrize("racy_before_ns", [None, 0, ALL_TRUSTED])
def test_racy_and_cacheless_walks_match(changed_tree: tuple[Path, Path], racy_before_ns: int | None) -> None:
    root, state = changed_tree
    lockstep(root, state, step_entries=3, run_entries=2, racy_before_ns=racy_before_ns)
    steps = lockstep(root, None, step_entries=4096, run_entries=64, racy_before_ns=racy_before_ns)
    assert b"d0/f0" in _changed_paths(steps)  # no cache: every file is read


def test_a_directory_vanishing_mid_walk_and_a_vanished_root(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    _tree(root)
    _backup(root, state, FakeGateway(), "job-1", native=False)

    def vanish(number: int) -> None:
        if number == 1:  # the root is listed (step 2 of 1 entry), "types" is not yet
            shutil.rmtree(root / "types")

    steps = lockstep(root, state, step_entries=1, run_entries=1, between=vanish)
    assert (str(root / "types"), "cannot list directory: No such file or directory") in _errors(steps)
    shutil.rmtree(root)
    steps = lockstep(root, state, step_entries=3, run_entries=2)
    assert steps[0][0] == "root" and steps[0][1] is FileNotFoundError
    assert ("D", "d0/f0") in _spool(steps)


def _in_child(target: Callable[[], None]) -> None:
    """Runs ``target`` in a forked child (its own mount namespace, or another uid); fails as it fails."""
    context = multiprocessing.get_context("fork")
    errors = context.SimpleQueue()

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # reported to the parent, which fails the test
            errors.put(repr(exc))
            raise
        errors.put(None)

    child = context.Process(target=run)
    child.start()
    child.join(120)
    assert child.exitcode == 0, errors.get() if not errors.empty() else f"exit {child.exitcode}"
    assert errors.get() is None


def test_a_mount_point_inside_the_tree_is_left_out_on_both_paths(changed_tree: tuple[Path, Path]) -> None:
    root, state = changed_tree
    (root / "mnt").mkdir()
    write_file(str(root / "mnt" / "under"), b"under the mount point")

    def walk_with_a_mount() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
            pytest.skip(f"no mount namespace: {os.strerror(ctypes.get_errno())}")
        assert libc.mount(None, b"/", None, 1 << 14 | 1 << 18, None) == 0  # MS_REC | MS_PRIVATE
        assert libc.mount(b"tmpfs", os.fsencode(str(root / "mnt")), b"tmpfs", 0, None) == 0
        write_file(str(root / "mnt" / "on-tmpfs"), b"another filesystem")
        for step_entries, run_entries in SIZES:
            steps = lockstep(root, state, step_entries=step_entries, run_entries=run_entries)
            assert not any(path.startswith(b"mnt") for path in _changed_paths(steps))
            assert not any(path.startswith("mnt") for _kind, path in _spool(steps))

    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")
    _in_child(walk_with_a_mount)


def test_permission_denied_directories_are_reported_alike() -> None:
    if os.geteuid() != 0:
        pytest.skip("the case switches to another uid")
    # Not under pytest's temporary directories: they are private to root, the walk runs as nobody.
    with tempfile.TemporaryDirectory() as shared:
        Path(shared).chmod(0o755)
        _walk_as_nobody(Path(shared))


def _walk_as_nobody(tmp_path: Path) -> None:
    root, state = tmp_path / "src", tmp_path / "state"
    _tree(root)
    _backup(root, state, FakeGateway(), "job-1", native=False)
    for path in [state, *state.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    write_file(str(root / "closed" / "f"), b"x")
    write_file(str(root / "search-only" / "f"), b"x")
    write_file(str(root / "list-only" / "f"), b"x")
    write_file(str(root / "list-only" / "g"), b"x")
    (root / "closed").chmod(0o000)
    (root / "search-only").chmod(0o311)
    (root / "list-only").chmod(0o644)

    def walk_as_nobody() -> None:
        os.setgid(65534)
        os.setuid(65534)
        for step_entries, run_entries in SIZES:
            steps = lockstep(root, state, step_entries=step_entries, run_entries=run_entries)
            errors = _errors(steps)
            assert (str(root / "closed"), "cannot list directory: Permission denied") in errors
            assert (str(root / "search-only"), "cannot list directory: Permission denied") in errors
            assert (str(root / "list-only" / "f"), "Permission denied") in errors

    _in_child(walk_as_nobody)


def _record_bytes(path: bytes, body: bytes, *, trusted: bool = True) -> bytes:
    head = struct.pack("<BQQQqqH", int(trusted), 1, 2, 3, 4, 5, len(path))
    return struct.pack("<I", len(head) + len(path) + len(body)) + head + path + body


def _hand_made_cache(state: Path, root: Path, records: list[bytes], count: int) -> None:
    writer = cache.CacheWriter(str(state), PARAMS, str(root), racy_before_ns=0)
    writer.add_records(b"".join(records), count, b"", b"")
    writer.commit("point-hand-made")


def _entry(path: str, kind: int, **fields: object) -> bytes:
    return common_pb2.FileEntry(path=path, type=kind, **fields).SerializeToString()  # type: ignore[arg-type]


FILE, DIRECTORY = common_pb2.ENTRY_TYPE_FILE, common_pb2.ENTRY_TYPE_DIRECTORY


@pytest.mark.parametrize(
    "case",
    ["reordered fields", "unknown fields", "count mismatch", "out of order", "not protobuf", "inconsistent path"],
)
def test_hand_made_caches_are_read_alike(tmp_path: Path, case: str) -> None:
    """Records the agent never writes: parsed instead of read by their leading bytes, or the cache breaks there."""
    root, state = tmp_path / "src", tmp_path / "state"
    for name in ("a", "b", "c"):
        write_file(str(root / name), name.encode())
    a, b = _entry("a", FILE), _entry("b", FILE)
    records = [_record_bytes(b"", _entry("", DIRECTORY)), _record_bytes(b"a", a), _record_bytes(b"b", b)]
    if case == "reordered fields":
        records[2] = _record_bytes(b"b", b"\x10\x01\x0a\x01b")  # type before path
    elif case == "unknown fields":
        unknown = b"\x98\x06\x05\xa2\x06\x02zz\xfb\x06\x08\x01\xfc\x06"  # a varint, bytes and a group
        records[2] = _record_bytes(b"b", unknown + b)
    elif case == "out of order":
        records[1], records[2] = records[2], records[1]
    elif case == "not protobuf":
        records[2] = _record_bytes(b"b", b"\x10\x01\x0a\x05b")  # a field cut short
    elif case == "inconsistent path":
        records[2] = _record_bytes(b"b", b"\x10\x01\x0a\x01c")
    count = len(records) + (1 if case == "count mismatch" else 0)
    _hand_made_cache(state, root, records, count)
    for step_entries, run_entries in SIZES:
        lockstep(root, state, step_entries=step_entries, run_entries=run_entries)
    cursor = _cursor(state, root)
    assert cursor is not None
    while cursor.peek() is not None:
        cursor.take()
    cursor.close()
    assert cursor.broken is (case not in ("reordered fields", "unknown fields"))


def test_the_native_walk_is_made_only_where_it_walks_as_the_python_path(tmp_path: Path) -> None:
    native = native_reader()
    assert isinstance(native.tree_compare(TreeCompare(str(tmp_path), LinuxExclusions(), None, None)), NativeTreeCompare)
    assert native.tree_compare(TreeCompare(str(tmp_path) + "/", LinuxExclusions(), None, None)) is None
    assert native.tree_compare(TreeCompare(str(tmp_path) + "/./x", LinuxExclusions(), None, None)) is None
    assert native.tree_compare(TreeCompare(str(tmp_path), WindowsExclusions(), None, None)) is None


def test_a_backup_commits_and_caches_the_same_on_both_paths(
    changed_tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = {"native": 0}
    native_step = NativeTreeCompare.step

    def counted(self: NativeTreeCompare) -> Step:
        steps["native"] += 1
        return native_step(self)

    monkeypatch.setattr(NativeTreeCompare, "step", counted)
    root, state = changed_tree
    gateway = FakeGateway()
    _backup(root, state, gateway, "job-0", native=False)  # the base both paths start from
    _change_again(root)
    results = []
    for native in (False, True):
        side_state = state.parent / f"state-{native}"
        shutil.copytree(state, side_state)
        side_gateway = copy.deepcopy(gateway)
        before = steps["native"]
        _backup(root, side_state, side_gateway, "job-2", native=native)
        assert (steps["native"] > before) is native  # the side walked on the path it names
        header, sent, deleted = side_gateway.commits[-1]
        assert header.base_point_id  # a delta against the cached point
        cache_file = cache.cache_path(str(side_state), str(root))
        with open(cache_file, "rb") as f:
            results.append((header.SerializeToString(), [e.SerializeToString() for e in sent], deleted, f.read()))
    assert results[0] == results[1]
    assert results[0][2] == ["d0/f1"] and len(results[0][1]) >= 2


def _change_again(root: Path) -> None:
    (root / "d0" / "f1").unlink()
    write_file(str(root / "d1" / "f0"), b"edited")
    os.chmod(root / "d2", 0o750)
