"""Read planning for ReadChunks: which ranged GETs serve a request, window by window.

Contract: pure functions over chunk locations (no I/O). ``coalesce`` merges nearby blobs of one
pack object into ranges; ``plan_reads`` cuts a request into windows of bounded distinct content
and orders each window's ranges by the first position that needs them; ``plan_grouped`` cuts a
request whose ids come grouped by pack (``group_chunks``, PlanChunks) into one window per run of a
pack, each read with one ranged GET of its span where the span allows (ADR 0081).
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
# A grouped request (ADR 0081): a window is a run of one pack's blobs spanning at most this many stored
# bytes (a pack is 16 MiB, plus its last blob), read with one GET; two windows are held at most.
GROUPED_SPAN_BYTES = 24 << 20
# ... and blobs of the run farther apart than this are read with GETs of their own (a run asking for a
# few blobs of a pack does not read the whole pack). As ``COALESCE_GAP``: 4 MiB read 7% more bytes in a
# restore of the day-1 tree (packs hold a large file's chunks among small files', read apart; ADR 0081).
GROUPED_GAP = COALESCE_GAP


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
        windows.append(_window(start, end, first_use, locations, max_gap=max_gap, max_bytes=max_bytes))
        start = end
    return windows


def plan_grouped(
    ids: Sequence[bytes],
    locations: dict[bytes, ChunkLocation],
    *,
    span_bytes: int = GROUPED_SPAN_BYTES,
    max_gap: int = GROUPED_GAP,
) -> list[ReadWindow]:
    """Cut a request grouped by pack into windows, one per run of consecutive ids of one pack object.

    A window ends where the next located id is in another pack (or version),
    or where its distinct blobs would span more than ``span_bytes`` of the
    pack; ids without a location take no room and no read. Each window's blobs
    are read with one range, or several where they lie more than ``max_gap``
    apart. The content held is bounded by the span, not by the decoded sizes:
    the caller uses this only when chunks are sent as stored. Any order is
    answered correctly; an order that is not grouped only costs more, smaller
    windows.
    """
    windows: list[ReadWindow] = []
    start = 0
    while start < len(ids):
        first_use: dict[bytes, int] = {}
        pack: tuple[str, str | None] | None = None
        low = high = 0
        end = start
        while end < len(ids):
            cid = ids[end]
            location = locations.get(cid)
            if location is not None and cid not in first_use:
                where = (location.object_key, location.version_id)
                blob_end = location.offset + location.length
                if pack is None:
                    pack, low, high = where, location.offset, blob_end
                elif where != pack or max(high, blob_end) - min(low, location.offset) > span_bytes:
                    break
                else:
                    low, high = min(low, location.offset), max(high, blob_end)
                first_use[cid] = end
            end += 1
        windows.append(_window(start, end, first_use, locations, max_gap=max_gap, max_bytes=span_bytes))
        start = end
    return windows


def _window(
    start: int,
    end: int,
    first_use: dict[bytes, int],
    locations: dict[bytes, ChunkLocation],
    *,
    max_gap: int,
    max_bytes: int,
) -> ReadWindow:
    """The window of positions ``[start, end)`` reading the distinct chunks ``first_use`` (id -> first
    position), coalesced, its ranges ordered by the first position that needs them."""
    ranges = coalesce((locations[c] for c in first_use), max_gap=max_gap, max_bytes=max_bytes)
    ranges.sort(key=lambda r: min(first_use[b.chunk_id] for b in r.blobs))
    return ReadWindow(start, end, tuple(ranges))


def group_chunks(ids: Sequence[bytes], locations: dict[bytes, ChunkLocation]) -> list[int]:
    """PlanChunks' answer: per id, the ordinal (1, 2, ... by first appearance) of the pack object
    holding it, 0 for an id without a location. Nothing about the pack itself is given out."""
    numbers: dict[tuple[str, str | None], int] = {}
    groups: list[int] = []
    for cid in ids:
        location = locations.get(cid)
        if location is None:
            groups.append(0)
            continue
        where = (location.object_key, location.version_id)
        number = numbers.get(where)
        if number is None:
            number = numbers[where] = len(numbers) + 1
        groups.append(number)
    return groups
