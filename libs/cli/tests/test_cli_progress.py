"""The ``--wait`` progress bar: drawn on a terminal, silent elsewhere."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from strongroom_cli import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def snapshots() -> Iterator[progress.Snapshot]:
    yield progress.Snapshot(bytes_done=0, bytes_total=0, files_done=0, state="queued")
    yield progress.Snapshot(bytes_done=5 << 20, bytes_total=10 << 20, files_done=5, state="running")
    yield progress.Snapshot(bytes_done=10 << 20, bytes_total=10 << 20, files_done=10, state="complete")


async def run(show: bool) -> int:
    steps = list(snapshots())
    seen = iter(range(1, len(steps)))

    async def poll() -> int:
        return next(seen)

    return await progress.follow(0, poll, lambda i: i == len(steps) - 1, lambda i: steps[i], show=show, interval=0)


async def test_a_terminal_gets_a_bar_with_bytes_rate_and_files(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert await run(show=True) == 2
    drawn = terminal.getvalue()
    assert "complete" in drawn and "10.0/10.0 MiB" in drawn and "10 files" in drawn


async def test_a_pipe_or_json_gets_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert await run(show=False) == 2  # --json
    assert terminal.getvalue() == ""
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    assert await run(show=True) == 2
    assert pipe.getvalue() == ""
