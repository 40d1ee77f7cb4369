"""Fetching a restore's content from the gateway (restic's restorer is the model).

One ``ReadChunks`` call fetches a batch's distinct chunks (the gateway reads
them pack by pack); they are kept as sent and decoded by the writer threads
as each file is written (``content.py``). A file larger than a batch is
streamed on its own in windows of at most
``LARGE_FILE_WINDOW_IDS`` chunk ids and about half a batch of content, appended to
a file the destination opened and finished (or discarded) at the end; the
next window is fetched while one is decoded and written (two at most). When
the gateway groups chunks by pack (PlanChunks, ADR 0081), a window holds
whole runs of the file's chunks in one pack, up to three quarters of a batch
(each run is then read with one GET, where windows of half a batch cut across
packs and read most packs in two or three); only a run larger than that is cut.

Damage (ADR 0030): a chunk the gateway reports damaged, one that does not
decode to its recorded length, and one the gateway leaves out fail only the
files that need it; such a file is never written (a streamed one is
discarded), and its error names the chunk and the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from strongroom.common.v1 import common_pb2

from strongroom_agent.gateway_client import ChunkSent, GatewayClient
from strongroom_agent.restore.content import Contents, ContentWriter, damage_reason, encoded
from strongroom_agent.restore.destination import Destination, EntryProblem
from strongroom_agent.restore.plan import PLAN_WINDOW_IDS

# A file larger than a batch is streamed in windows of at most this many ids.
LARGE_FILE_WINDOW_IDS = 256

# The storage groups of distinct chunk ids (PlanChunks), or None from a gateway without them.
Planner = Callable[[list[bytes]], Awaitable[dict[bytes, int] | None]]


class Fetcher:
    """Reads a restore job's chunks from the gateway; decodes and writes the windows of large files."""

    def __init__(
        self,
        client: GatewayClient,
        restore_job_id: str,
        dest: Destination,
        fetch_batch_bytes: int,
        plan: Planner | None = None,
    ) -> None:
        self._client = client
        self._plan = plan
        self._job_id = restore_job_id
        self._dest = dest
        self._batch_bytes = fetch_batch_bytes
        # The large-file windows' decode buffer: one window is written at a time.
        self._content = ContentWriter()

    async def batch(self, ids: list[bytes], *, grouped: bool = False) -> Contents:
        """The distinct chunks ``ids`` as sent (decoded when written), fetched in one call.

        ``grouped``: ``ids`` come grouped by storage group (PlanChunks, ADR 0081)."""
        if not ids:
            return Contents.of([])
        return Contents.of([c async for c in self._client.read_chunks(self._job_id, ids, grouped=grouped)])

    def _decode_and_write(self, fd: int, wanted: list[bytes], fetched: dict[bytes, ChunkSent]) -> int:
        """Decode a window of a large file and append it (one worker-thread call); the bytes written.

        Raises EntryProblem, before writing anything of the window, when a chunk
        is damaged or declares another length; while writing, when one does not
        inflate to it.
        """
        return self._content.write(fd, [encoded(fetched[c]) for c in wanted])

    async def _window(self, wanted: list[bytes], grouped: bool) -> dict[bytes, ChunkSent]:
        """One window of a large file's chunks, fetched (by id)."""
        fetched: dict[bytes, ChunkSent] = {}
        async for chunk in self._client.read_chunks(self._job_id, list(dict.fromkeys(wanted)), grouped=grouped):
            fetched[chunk.chunk_id] = chunk
        return fetched

    async def _windows(self, ids: list[bytes], size: int) -> list[tuple[list[bytes], bool]]:
        """A large file's chunk ids cut into windows, each with whether it is one storage group's run.

        Windows hold at most ``LARGE_FILE_WINDOW_IDS`` ids and, by the file's
        average chunk, half a batch of content (the lane's two windows hold what
        one batch does, ADR 0076). Grouped: whole runs of one group each, up to
        three quarters of a batch, so a pack's run is not cut for a small
        remainder; a run that does not fit starts the next window.
        """
        average = max(1, size // max(1, len(ids)))
        plain = max(1, min(LARGE_FILE_WINDOW_IDS, self._batch_bytes // 2 // average))
        grouped = max(1, min(LARGE_FILE_WINDOW_IDS, self._batch_bytes * 3 // 4 // average))
        windows: list[tuple[list[bytes], bool]] = []
        start = 0
        while start < len(ids):
            part = ids[start : start + PLAN_WINDOW_IDS]
            groups = await self._plan(list(dict.fromkeys(part))) if self._plan is not None else None
            if groups is None:
                windows += [(ids[n : n + plain], False) for n in range(start, len(ids), plain)]
                break
            runs: list[list[bytes]] = []  # consecutive ids of one group
            group = -1
            for cid in part:
                if not runs or groups.get(cid, 0) != group:
                    group = groups.get(cid, 0)
                    runs.append([])
                runs[-1].append(cid)
            window: list[bytes] = []
            for run in runs:  # whole runs while they fit; a run larger than a window is cut
                if window and len(window) + len(run) > grouped:
                    windows.append((window, True))
                    window = []
                while len(run) > grouped:
                    windows.append((run[:grouped], True))
                    run = run[grouped:]
                window += run
            windows.append((window, True))
            start += len(part)
        return windows

    async def large_file(
        self, parts: list[str], entry: common_pb2.FileEntry, *, fresh: bool, overwrite: bool
    ) -> int | None:
        """Stream a file larger than a batch in windows; its bytes, or None when SKIP leaves a name taken since."""
        created = await asyncio.to_thread(self._dest.create_file, parts, fresh=fresh, overwrite=overwrite)
        if created is None:
            return None
        fd, temp = created
        written = 0
        # The next window is fetched while this one is decoded and written (two windows at most).
        ahead: asyncio.Task[dict[bytes, ChunkSent]] | None = None
        try:
            windows = await self._windows(list(entry.chunk_ids), entry.size)
            if windows:
                ahead = asyncio.create_task(self._window(*windows[0]))
            for n, (wanted, _) in enumerate(windows):
                assert ahead is not None
                fetched = await ahead
                ahead = asyncio.create_task(self._window(*windows[n + 1])) if n + 1 < len(windows) else None
                damaged = next((c for c in wanted if c in fetched and fetched[c].damage), None)
                if damaged is not None:
                    raise EntryProblem(damage_reason(damaged, fetched[damaged].damage))
                missing = [c for c in wanted if c not in fetched]
                if missing:
                    raise EntryProblem(f"gateway did not return chunk {missing[0].hex()}")
                written += await asyncio.to_thread(self._decode_and_write, fd, wanted, fetched)
            if written != entry.size:
                raise EntryProblem(f"content is {written} bytes, expected {entry.size}")
            await asyncio.to_thread(self._dest.finish_file, parts, fd, temp, entry)
        except BaseException:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
            await asyncio.shield(asyncio.to_thread(self._dest.discard_file, parts, fd, temp))
            raise
        return written
