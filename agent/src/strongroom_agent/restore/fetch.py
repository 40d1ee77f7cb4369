"""Fetching a restore's content from the gateway (restic's restorer is the model).

One ``ReadChunks`` call fetches a batch's distinct chunks (the gateway reads
them pack by pack); they are kept as sent and decoded by the writer threads
as each file is written (``content.py``). A file larger than a batch is
streamed on its own in windows of at most
``LARGE_FILE_WINDOW_IDS`` chunk ids and about half a batch of content, appended to
a file the destination opened and finished (or discarded) at the end; the
next window is fetched while one is decoded and written (two at most).

Damage (ADR 0030): a chunk the gateway reports damaged, one that does not
decode to its recorded length, and one the gateway leaves out fail only the
files that need it; such a file is never written (a streamed one is
discarded), and its error names the chunk and the reason.
"""

from __future__ import annotations

import asyncio

from strongroom.common.v1 import common_pb2

from strongroom_agent.gateway_client import ChunkSent, GatewayClient
from strongroom_agent.restore.content import Contents, ContentWriter, damage_reason, encoded
from strongroom_agent.restore.destination import Destination, EntryProblem

# A file larger than a batch is streamed in windows of at most this many ids.
LARGE_FILE_WINDOW_IDS = 256


class Fetcher:
    """Reads a restore job's chunks from the gateway; decodes and writes the windows of large files."""

    def __init__(
        self,
        client: GatewayClient,
        restore_job_id: str,
        dest: Destination,
        fetch_batch_bytes: int,
    ) -> None:
        self._client = client
        self._job_id = restore_job_id
        self._dest = dest
        self._batch_bytes = fetch_batch_bytes
        # The large-file windows' decode buffer: one window is written at a time.
        self._content = ContentWriter()

    async def batch(self, ids: list[bytes]) -> Contents:
        """The distinct chunks ``ids`` as sent (decoded when written), fetched in one call."""
        return Contents.of([c async for c in self._client.read_chunks(self._job_id, ids)] if ids else [])

    def _decode_and_write(self, fd: int, wanted: list[bytes], fetched: dict[bytes, ChunkSent]) -> int:
        """Decode a window of a large file and append it (one worker-thread call); the bytes written.

        Raises EntryProblem, before writing anything of the window, when a chunk
        is damaged or declares another length; while writing, when one does not
        inflate to it.
        """
        return self._content.write(fd, [encoded(fetched[c]) for c in wanted])

    async def _window(self, wanted: list[bytes]) -> dict[bytes, ChunkSent]:
        """One window of a large file's chunks, fetched (by id)."""
        fetched: dict[bytes, ChunkSent] = {}
        async for chunk in self._client.read_chunks(self._job_id, list(dict.fromkeys(wanted))):
            fetched[chunk.chunk_id] = chunk
        return fetched

    async def large_file(
        self, parts: list[str], entry: common_pb2.FileEntry, *, fresh: bool, overwrite: bool
    ) -> int | None:
        """Stream a file larger than a batch in windows; its bytes, or None when SKIP leaves a name taken since."""
        created = await asyncio.to_thread(self._dest.create_file, parts, fresh=fresh, overwrite=overwrite)
        if created is None:
            return None
        fd, temp = created
        written = 0
        ids = list(entry.chunk_ids)
        average = max(1, entry.size // max(1, len(ids)))
        # Half a batch: the lane's two windows hold what one batch does while the batches go on (ADR 0076).
        window = max(1, min(LARGE_FILE_WINDOW_IDS, self._batch_bytes // 2 // average))
        windows = [ids[start : start + window] for start in range(0, len(ids), window)]
        # The next window is fetched while this one is decoded and written (two windows at most).
        ahead: asyncio.Task[dict[bytes, ChunkSent]] | None = None
        try:
            if windows:
                ahead = asyncio.create_task(self._window(windows[0]))
            for n, wanted in enumerate(windows):
                assert ahead is not None
                fetched = await ahead
                ahead = asyncio.create_task(self._window(windows[n + 1])) if n + 1 < len(windows) else None
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
