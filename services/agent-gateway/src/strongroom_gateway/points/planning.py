"""Read planning for ReadChunks: which ranged GETs serve a request, window by window.

Contract: pure functions over chunk locations (no I/O). ``coalesce`` merges nearby blobs of one
pack object into ranges; ``plan_reads`` cuts a request into windows of bounded distinct content
and orders each window's ranges by the first position that needs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from strongroom_gateway.ports import ChunkLocation

# Blobs of one pack at most this far apart are read with one ranged GET (the gap is read and dropped).
COALESCE_GAP = 1 << 20
# A coalesced range stops growing here (a pack is 16 MiB; a larger single blob is read alone).
MAX_RANGE_BYTES = 8 << 20
# Distinct content per read window; two windows are held at most (the one being sent, the next one).
READ_WINDOW_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class ReadRange:
    """One ranged GET of a pack object and the blobs inside it (in offset order)."""

    object_key: str
    offset: int
    length: int
    blobs: tuple[ChunkLocation, ...]
    # The pack's recorded object version (None: recorded before version ids, read the latest).
    version_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ReadWindow:
    """A run of request positions ``[start, end)`` and the ranges that hold their chunks."""

    start: int
    end: int
    ranges: tuple[ReadRange, ...]


def coalesce(
    locations: Iterable[ChunkLocation], *, max_gap: int = COALESCE_GAP, max_bytes: int = MAX_RANGE_BYTES
) -> list[ReadRange]:
    """Group blobs by pack object and merge blobs at most ``max_gap`` bytes apart into one range.

    A range never grows beyond ``max_bytes`` (a single larger blob gets its own
    range). Ranges come per object in offset order; each blob appears once.
    """
    by_object: dict[tuple[str, str | None], list[ChunkLocation]] = {}
    for location in locations:
        by_object.setdefault((location.object_key, location.version_id), []).append(location)
    ranges: list[ReadRange] = []
    for (key, version_id), blobs in by_object.items():
        blobs.sort(key=lambda b: (b.offset, b.length))
        current = [blobs[0]]
        start, end = blobs[0].offset, blobs[0].offset + blobs[0].length
        for blob in blobs[1:]:
            blob_end = blob.offset + blob.length
            if blob.offset - end <= max_gap and max(end, blob_end) - start <= max_bytes:
                current.append(blob)
                end = max(end, blob_end)
                continue
            ranges.append(ReadRange(key, start, end - start, tuple(current), version_id))
            current, start, end = [blob], blob.offset, blob_end
        ranges.append(ReadRange(key, start, end - start, tuple(current), version_id))
    return ranges


def plan_reads(
    ids: Sequence[bytes],
    locations: dict[bytes, ChunkLocation],
    *,
    window_bytes: int = READ_WINDOW_BYTES,
    max_gap: int = COALESCE_GAP,
    max_bytes: int = MAX_RANGE_BYTES,
) -> list[ReadWindow]:
    """Cut the request into windows of at most ``window_bytes`` of distinct content, and plan each window's GETs.

    A window holds at least one position. Ids without a location (unknown
    chunks a damage-tolerant request is answered about) take no room and no
    read. Within a window every distinct chunk is read once, coalesced with its neighbours in the same pack; ranges are
    ordered by the first position that needs them, so the head of the window
    arrives first. A chunk repeated in a later window is read again there (the
    memory bound wins over the extra read).
    """
    windows: list[ReadWindow] = []
    start = 0
    while start < len(ids):
        first_use: dict[bytes, int] = {}
        size = 0
        end = start
        while end < len(ids):
            cid = ids[end]
            if cid not in first_use and cid in locations:
                raw = locations[cid].raw_length
                if first_use and size + raw > window_bytes:
                    break
                first_use[cid] = end
                size += raw
            end += 1
        ranges = coalesce((locations[c] for c in first_use), max_gap=max_gap, max_bytes=max_bytes)
        ranges.sort(key=lambda r: min(first_use[b.chunk_id] for b in r.blobs))
        windows.append(ReadWindow(start, end, tuple(ranges)))
        start = end
    return windows
