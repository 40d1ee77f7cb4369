"""Pure CPU checks of a verification: one pack's stored bytes, and a manifest's files against damage.

Run in worker threads (hashing, AES-GCM and zstd release the GIL).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from strongroom.common.v1 import common_pb2

from strongroom_gateway.chunks import ChunkRejected, verify_payload
from strongroom_gateway.crypto import DataKey
from strongroom_gateway.packfile import ENCRYPTED_VERSIONS, PackFormatError, decode_index, open_blob
from strongroom_gateway.ports import ChunkLocation
from strongroom_gateway.verify.model import MAX_PATH_CHARS, MAX_REASON_CHARS, DamagedFile

MISSING = "its pack is missing from storage"
NOT_STORED = "it is not stored for this account"


@dataclass(frozen=True, slots=True)
class PackVerdict:
    """What reading one pack back found: damaged chunks (id -> reason) and a pack-level problem."""

    pack_id: str
    bytes_read: int
    damaged: Mapping[bytes, str] = field(default_factory=dict)
    problem: str = ""

    @property
    def is_damaged(self) -> bool:
        return bool(self.damaged or self.problem)


def missing_pack(pack_id: str, chunks: Sequence[ChunkLocation]) -> PackVerdict:
    """The verdict for a pack object (or its pinned version) that is gone."""
    return PackVerdict(pack_id, 0, {c.chunk_id: MISSING for c in chunks}, MISSING)


def check_pack(
    pack_id: str, chunk_id_key: bytes, data_key: DataKey | None, chunks: Sequence[ChunkLocation], data: bytes
) -> PackVerdict:
    """Check a whole pack object against the chunk rows recorded in it.

    - the object hashes to its pack id (SHA-256 of the object, docs/formats/pack.md): any byte
      changed anywhere, even between blobs, is seen;
    - the header and the index open (the index authenticates under the account's data key);
    - every recorded blob lies inside the object, decrypts (AES-GCM, format 2), decodes to its raw
      length and hashes (keyed BLAKE3) to its chunk id, exactly what a restore relies on.

    A problem of the object as a whole is ``problem``; the chunks restores could not serve are
    ``damaged``, with the reason a restore would give (ADR 0030).
    """
    problems: list[str] = []
    if hashlib.sha256(data).hexdigest() != pack_id:
        problems.append("the object does not hash to its pack id")
    try:
        decode_index(data, data_key)
    except PackFormatError as exc:
        problems.append(f"its index cannot be read ({exc})")
    damaged: dict[bytes, str] = {}
    view = memoryview(data)
    for chunk in chunks:
        end = chunk.offset + chunk.length
        if end > len(data):
            damaged[chunk.chunk_id] = f"its pack is shorter than recorded ({len(data)} bytes)"
            continue
        stored = bytes(view[chunk.offset : end])
        try:
            payload = open_blob(
                data_key, chunk.pack_format, chunk.chunk_id, chunk.compression, chunk.raw_length, stored
            )
        except PackFormatError as exc:
            encrypted = chunk.pack_format in ENCRYPTED_VERSIONS and data_key is not None
            damaged[chunk.chunk_id] = "authentication failed" if encrypted else f"cannot be opened: {exc}"
            continue
        try:
            verify_payload(chunk_id_key, chunk.chunk_id, payload, chunk.compression, chunk.raw_length)
        except ChunkRejected as exc:
            damaged[chunk.chunk_id] = f"verification failed: {exc}"
    view.release()
    return PackVerdict(pack_id, len(data), damaged, "; ".join(problems))


def file_reason(chunk_id: bytes, reason: str) -> str:
    """A damaged file's reason, worded as a restore words it (ADR 0030)."""
    return f"chunk {chunk_id.hex()} of this file is damaged in storage ({reason})"


@dataclass
class FileDamage:
    """Damaged files of one point: every one counted, the first ``limit`` listed."""

    limit: int
    count: int = 0
    listed: list[DamagedFile] = field(default_factory=list)

    def add(self, point_id: str, path: str, reason: str) -> None:
        self.count += 1
        if len(self.listed) < self.limit:
            self.listed.append(DamagedFile(point_id, _clip(path, MAX_PATH_CHARS), _clip(reason, MAX_REASON_CHARS)))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def damaged_files(
    point_id: str,
    entries: Iterable[common_pb2.FileEntry],
    damaged: Callable[[bytes], str | None],
    *,
    limit: int,
) -> FileDamage:
    """The files among ``entries`` that need a damaged chunk (``damaged(id)`` gives its reason, else None).

    Streams: ``entries`` may be a manifest decoder; only the listed files are kept.
    """
    found = FileDamage(limit)
    for entry in entries:
        for cid in entry.chunk_ids:
            reason = damaged(bytes(cid))
            if reason is not None:
                found.add(point_id, entry.path, file_reason(bytes(cid), reason))
                break
    return found


def chunk_id_batches(entries: Iterable[common_pb2.FileEntry], size: int) -> Iterator[list[bytes]]:
    """The chunk ids the entries reference, in batches of at most ``size`` (repeats within a batch dropped)."""
    batch: dict[bytes, None] = {}
    for entry in entries:
        for cid in entry.chunk_ids:
            batch[bytes(cid)] = None
            if len(batch) >= size:
                yield list(batch)
                batch = {}
    if batch:
        yield list(batch)
