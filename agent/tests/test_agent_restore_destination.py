"""The restore destination: only plainly relative entry paths are written; a file's pieces are written whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from strongroom_agent.restore import UnsafePath, safe_parts
from strongroom_agent.restore.destination import Destination


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
