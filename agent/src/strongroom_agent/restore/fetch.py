"""Fetching a restore's content from the gateway (restic's restorer is the model).

One ``ReadChunks`` call fetches a batch's distinct chunks (the gateway reads
them pack by pack); they are decompressed in the writer threads. A file
larger than a batch is streamed on its own in windows of at most
``LARGE_FILE_WINDOW_IDS`` chunk ids and about a batch of content, appended to
a file the destination opened and finished (or discarded) at the end. A chunk
that does not decode fails the job (DATA_LOSS); one the gateway leaves out
fails only its file.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from strongroom.common.v1 import common_pb2

from strongroom_agent.chunking import decode_chunk
from strongroom_agent.gateway_client import GatewayClient, GatewayError, SentChunk
from strongroom_agent.restore.destination import Destination, EntryProblem
from strongroom_agent.restore.writer import WRITE_THREADS

# A file larger than a batch is streamed in windows of at most this many ids.
LARGE_FILE_WINDOW_IDS = 256


def decode_all(sent: list[SentChunk]) -> list[tuple[bytes, bytes]]:
    """(chunk id, content) of each chunk; a chunk that does not decode fails the job (DATA_LOSS)."""
    out = []
    for chunk in sent:
        try:
            out.append((chunk.chunk_id, decode_chunk(chunk.data, chunk.compression, chunk.raw_length)))
        except ValueError as exc:
            raise GatewayError("DATA_LOSS", f"chunk {chunk.chunk_id.hex()} sent by the gateway: {exc}") from None
    return out


class Fetcher:
    """Reads a restore job's chunks from the gateway and decodes them."""

    def __init__(
        self,
        client: GatewayClient,
        restore_job_id: str,
        pool: ThreadPoolExecutor,
        dest: Destination,
        fetch_batch_bytes: int,
    ) -> None:
        self._client = client
        self._job_id = restore_job_id
        self._pool = pool
        self._dest = dest
        self._batch_bytes = fetch_batch_bytes

    async def batch(self, ids: list[bytes]) -> dict[bytes, bytes]:
        """The decoded content of the distinct chunks ``ids``, fetched in one call."""
        sent = [c async for c in self._client.read_chunks(self._job_id, ids)] if ids else []
        return await self._decode(sent)

    async def _decode(self, sent: list[SentChunk]) -> dict[bytes, bytes]:
        """Decompress a batch's chunks in the writer threads (``WRITE_THREADS`` runs)."""
        loop = asyncio.get_running_loop()
        step = max(1, -(-len(sent) // WRITE_THREADS))
        parts = await asyncio.gather(
            *(loop.run_in_executor(self._pool, decode_all, sent[i : i + step]) for i in range(0, len(sent), step))
        )
        return {chunk_id: content for part in parts for chunk_id, content in part}

    def _decode_and_write(self, fd: int, wanted: list[bytes], fetched: dict[bytes, SentChunk]) -> int:
        """Decode a window of a large file and append it (one worker-thread call); the bytes written."""
        decoded = dict(decode_all(list(fetched.values())))
        pieces = [decoded[c] for c in wanted]
        self._dest.write(fd, pieces)
        return sum(len(p) for p in pieces)

    async def large_file(
        self, parts: list[str], entry: common_pb2.FileEntry, *, fresh: bool, overwrite: bool
    ) -> int | None:
        """Stream a file larger than a batch in windows; its bytes, or None when SKIP leaves a name taken since."""
        created = await asyncio.to_thread(self._dest.create_file, parts, fresh=fresh, overwrite=overwrite)
        if created is None:
            return None
        fd, temp = created
        written = 0
        try:
            ids = list(entry.chunk_ids)
            average = max(1, entry.size // max(1, len(ids)))
            window = max(1, min(LARGE_FILE_WINDOW_IDS, self._batch_bytes // average))
            for start in range(0, len(ids), window):
                wanted = ids[start : start + window]
                fetched: dict[bytes, SentChunk] = {}
                async for chunk in self._client.read_chunks(self._job_id, list(dict.fromkeys(wanted))):
                    fetched[chunk.chunk_id] = chunk
                missing = [c for c in wanted if c not in fetched]
                if missing:
                    raise EntryProblem(f"gateway did not return chunk {missing[0].hex()}")
                written += await asyncio.to_thread(self._decode_and_write, fd, wanted, fetched)
            if written != entry.size:
                raise EntryProblem(f"content is {written} bytes, expected {entry.size}")
            await asyncio.to_thread(self._dest.finish_file, parts, fd, temp, entry)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self._dest.discard_file, parts, fd, temp))
            raise
        return written
