"""The restore destination: only plainly relative entry paths are written; a file's pieces are written whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from strongroom_agent.restore import UnsafePath, safe_parts
from strongroom_agent.restore.destination import Destination, DirWalker, EntryProblem


def test_safe_parts() -> None:
    assert safe_parts("") == []
    assert safe_parts("a/b c/d") == ["a", "b c", "d"]
    for bad in ["/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", "..", "a\x00b"]:
        with pytest.raises(UnsafePath):
            safe_parts(bad)


@pytest.mark.parametrize("short", [0, 3, 10, 11, 25])
def test_write_finishes_the_pieces_after_a_short_writev(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short: int
) -> None:
    """A writev that takes only ``short`` bytes (a signal, a full disk about to fail) leaves no gap or repeat."""
    pieces = [b"a" * 10, b"b" * 1, b"c" * 14, b"d" * 5]
    real_writev = os.writev

    def writev(fd: int, buffers: list[bytes]) -> int:
        return real_writev(fd, [b"".join(buffers)[:short]])

    monkeypatch.setattr(os, "writev", writev)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        Destination.write(fd, pieces)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)


def test_write_of_one_piece_and_of_none(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        Destination.write(fd, [])
        Destination.write(fd, [b"xyz"])
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"xyz"


def test_a_walker_reopens_only_the_directories_that_differ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in ("a/b/c", "a/b/d", "a/e", "f"):
        (tmp_path / path).mkdir(parents=True)
    dest = Destination(str(tmp_path), as_root=False)
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        opened.append(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", counting_open)
    walker = DirWalker(dest)
    try:
        for parts, opens in (
            (["a", "b", "c"], ["a", "b", "c"]),
            (["a", "b", "c"], []),  # the same directory again
            (["a", "b", "d"], ["d"]),  # a sibling
            (["a", "b"], []),  # up: held already
            (["a", "e"], ["e"]),
            ([], []),  # the root
            (["f", "new", "deeper"], ["f", "new", "new", "deeper", "deeper"]),  # made when missing, then opened
        ):
            opened.clear()
            fd = walker.open(parts)
            assert opened == opens, parts
            assert os.fstat(fd).st_ino == os.stat(tmp_path.joinpath(*parts)).st_ino, parts
        with pytest.raises(FileNotFoundError):
            walker.open(["a", "missing"], create=False)
    finally:
        walker.close()
        dest.close()


def test_a_walker_never_goes_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "a" / "link")
    dest = Destination(str(tmp_path / "a"), as_root=False)
    walker = DirWalker(dest)
    try:
        with pytest.raises(EntryProblem, match="refusing to write through 'link/x': 'link' is not a directory"):
            walker.open(["link", "x"])
        assert not (tmp_path / "outside" / "x").exists()
        # The walker is still usable after a refusal.
        assert os.fstat(walker.open([])).st_ino == os.stat(tmp_path / "a").st_ino
    finally:
        walker.close()
        dest.close()
