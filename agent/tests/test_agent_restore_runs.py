"""How a batch's files are cut into the writer threads' runs (ADR 0084)."""

from __future__ import annotations

from strongroom.common.v1 import common_pb2
from strongroom_agent.restore.writer import File, runs


def _files(paths: list[str]) -> list[File]:
    return [File(p.split("/"), common_pb2.FileEntry(path=p), []) for p in paths]


def _paths(cut: list[list[File]]) -> list[list[str]]:
    return [["/".join(f.parts) for f in run] for run in cut]


def test_runs_never_split_a_directory_and_keep_the_order() -> None:
    paths = [f"a/{i}" for i in range(5)] + [f"b/{i}" for i in range(2)] + [f"b/c/{i}" for i in range(4)] + ["d"]
    cut = runs(_files(paths), 4)  # a share is 3 files
    assert _paths(cut) == [paths[0:5], paths[5:7] + paths[7:11], paths[11:12]]
    parents = [{tuple(f.parts[:-1]) for f in run} for run in cut]
    for one, other in zip(parents, parents[1:], strict=False):
        assert not one & other  # no directory in two runs


def test_runs_of_small_directories_are_balanced_and_at_most_count() -> None:
    paths = [f"d{d}/{i}" for d in range(30) for i in range(4)]  # 120 files, 4 per directory
    for count in (1, 2, 3, 6, 7, 200):
        cut = runs(_files(paths), count)
        assert [p for run in _paths(cut) for p in run] == paths
        assert len(cut) <= count
        share = -(-len(paths) // count)
        assert all(len(run) >= share for run in cut[:-1])
        assert all(len(run) < share + 4 for run in cut)  # a run closes at the first directory change past its share
    assert len(runs(_files(paths), 6)) == 6


def test_one_large_directory_is_one_run() -> None:
    paths = [f"big/{i}" for i in range(50)] + ["small/0", "small/1"]
    assert _paths(runs(_files(paths), 6)) == [paths[:50], paths[50:]]
    assert runs([], 6) == []
