"""Following a running job: a progress bar on a terminal, nothing otherwise (``--wait``).

``follow`` polls the job until it finishes and shows files, bytes, rate and ETA with ``rich`` on
stderr when stderr is a terminal and the output is not JSON; in a pipe or a log it stays quiet,
so scripts see only the final result.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = ["Snapshot", "follow"]

JobT = TypeVar("JobT")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the bar shows of a job: bytes done of a total (0 = not known yet), files done, its state."""

    bytes_done: int
    bytes_total: int
    files_done: int
    state: str


async def follow(
    job: JobT,
    poll: Callable[[], Awaitable[JobT]],
    finished: Callable[[JobT], bool],
    snapshot: Callable[[JobT], Snapshot],
    *,
    show: bool,
    interval: float = 1.0,
) -> JobT:
    """Poll with ``poll()`` every ``interval`` s until ``finished(job)``; return the last job."""
    if not show or not sys.stderr.isatty():
        while not finished(job):
            await asyncio.sleep(interval)
            job = await poll()
        return job
    console = Console(file=sys.stderr)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[files]} files"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("starting", total=None, files=0)
        while True:
            now = snapshot(job)
            bar.update(
                task,
                description=now.state,
                completed=now.bytes_done,
                total=now.bytes_total or None,
                files=now.files_done,
            )
            if finished(job):
                return job
            await asyncio.sleep(interval)
            job = await poll()
