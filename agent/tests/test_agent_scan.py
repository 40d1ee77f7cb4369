"""The backup's scan: the plan of points, directory listings and the walk in manifest order."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

from agent_fakes import write_file
from strongroom.common.v1 import common_pb2
from strongroom_agent.backup import plan_points
from strongroom_agent.backup.compare import Changed, TreeCompare
from strongroom_agent.backup.scan import _list_dir
from strongroom_agent.exclusions import LinuxExclusions


async def test_unlistable_directory_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_file(str(root / "d/f"), b"x")
    listing = _list_dir(str(root / "missing"), "missing", os.lstat(root).st_dev, LinuxExclusions())
    assert listing.items == [] and "cannot list directory" in listing.errors[0].reason


def test_listing_skips_other_filesystems_and_exclusions(tmp_path: Path) -> None:
    write_file(str(tmp_path / "keep"), b"x")
    write_file(str(tmp_path / "state/agent.json"), b"{}")
    device = os.lstat(tmp_path).st_dev
    same = _list_dir(str(tmp_path), "", device, LinuxExclusions(extra_dirs=[str(tmp_path / "state")]))
    assert [key for key, _descend, _item in same.items] == [b"keep"]
    other = _list_dir(str(tmp_path), "", device + 1, LinuxExclusions())
    assert other.items == []


def test_plan_points_validates_roots(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    write_file(str(tmp_path / "file"), b"x")
    points, errors = plan_points(
        [str(tmp_path / "ok"), "relative/dir", str(tmp_path / "missing"), str(tmp_path / "file")],
        discover=list,
        describe_root=lambda p: common_pb2.Filesystem(mount_point=p),
    )
    assert [p.mount_point for p in points] == [str(tmp_path / "ok")]
    assert [e.reason for e in errors] == [
        "backup root must be an absolute path",
        "backup root is not an existing directory",
        "backup root is not an existing directory",
    ]
    discovered = [common_pb2.Filesystem(mount_point="/")]
    assert plan_points([], discover=lambda: discovered, describe_root=lambda p: discovered[0]) == (discovered, [])


def _walk_order(root: Path, step_entries: int) -> list[str]:
    """Every path the walk (without a cache) finds, in its order: files handed out, other entries sent."""
    compare = TreeCompare(str(root), LinuxExclusions(), None, None, step_entries=step_entries, run_entries=2)
    seen: list[str] = []
    while True:
        step = compare.step()
        assert step.errors == []
        for item in step.items:
            if isinstance(item, Changed):
                seen.append(item.item.rel)
                continue
            position = 0
            while position < len(item.spool):
                (length,) = struct.unpack(">I", item.spool[position + 1 : position + 5])
                entry = common_pb2.FileEntry.FromString(item.spool[position + 5 : position + 5 + length])
                seen.append(entry.path)
                position += 5 + length
        if step.done:
            return seen


def test_the_walk_yields_manifest_order_in_steps_of_any_size(tmp_path: Path) -> None:
    rng = random.Random(7)
    names = ["a", "a-b", "a.b", "b", "é", "z z", "0"]
    paths = []
    for _ in range(120):
        parts = [rng.choice(names) for _ in range(rng.randint(1, 4))]
        paths.append("/".join(parts))
    for i, rel in enumerate(paths):
        target = tmp_path / rel
        if not target.exists():
            target.mkdir(parents=True)
        (target / f"f{i}").write_bytes(b"x")
    expected = sorted(
        (os.path.relpath(os.path.join(d, n), tmp_path) for d, dirs, files in os.walk(tmp_path) for n in dirs + files),
        key=lambda p: p.encode(),
    )
    assert _walk_order(tmp_path, 4096) == ["", *expected]
    assert _walk_order(tmp_path, 1) == ["", *expected]
