"""A diagnostic timeline of the backup pipeline's state (``bench/backup_timeline.py``; off by default).

When the job is given a trace file (``STRONGROOM_BACKUP_TRACE``), a point's run
samples every ``every`` seconds what each stage holds: the memory budget's
bytes in use and waiters, the queue depths, readers and uploads in flight. The
samples are kept in memory (about 240 a minute) and appended to the file as
JSON lines when the point's stages end. Nothing is sampled without the file.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

TRACE_ENV = "STRONGROOM_BACKUP_TRACE"
SAMPLE_SECONDS = 0.25


@dataclass
class PipelineProbe:
    """Samples ``gauges`` (name → current value) every ``every`` seconds until stopped."""

    path: str
    gauges: dict[str, Callable[[], float]]
    anchor: float  # the caller's wall-clock time at loop time ``start`` (aligns the trace with /proc samples)
    every: float = SAMPLE_SECONDS
    rows: list[dict[str, float]] = field(default_factory=list)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            row = {"t": round(self.anchor + loop.time() - start, 3)}
            row.update({name: gauge() for name, gauge in self.gauges.items()})
            self.rows.append(row)
            await asyncio.sleep(self.every)

    def _write(self) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.writelines(json.dumps(row) + "\n" for row in self.rows)

    async def save(self) -> None:
        await asyncio.to_thread(self._write)
        self.rows.clear()
