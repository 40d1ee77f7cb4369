"""Cutting a window of small files into batches, in the order the gateway stores their chunks (ADR 0081).

The walk collects up to ``PLAN_WINDOW_FILES`` small files (and at most
``PLAN_WINDOW_IDS`` distinct chunk ids: one PlanChunks call) before any of
them is fetched: only their entries are held, no content. The gateway groups
the window's chunk ids by the pack holding them (ordinals only: the agent
learns which chunks are stored together, never where). The files are then
ordered by the group of their first chunk (groups numbered in walk order, so
the order within a group, and of groups, stays the walk's) and cut into
batches bounded as before (``fetch_batch_bytes`` of content, at most
``FETCH_BATCH_MAX_FILES`` files and ``FETCH_BATCH_MAX_IDS`` distinct ids), a
batch ending where a group would not fit whole. A batch then asks for a few
packs' chunks, grouped (each pack read with one GET), where the walk order
asked each pack's chunks in ~3 requests (ADR 0078).

Without groups (a gateway that predates PlanChunks) the files are cut in walk
order, as before. The order changes nothing a file gets: each file is still
written whole by one writer, checked as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from strongroom_agent.restore.writer import Batch, File

# Distinct chunk ids per ReadChunks call of a batch (the gateway takes up to 20,000).
FETCH_BATCH_MAX_IDS = 4096
FETCH_BATCH_MAX_FILES = 4096
# A window of small files planned at once: entries only (~0.5 kB each held), never content. Files
# further apart in the walk than a window are not put in one batch even when their chunks share a pack.
PLAN_WINDOW_FILES = 16384
# Distinct chunk ids of a window: one PlanChunks call (the gateway takes up to 20,000 per call).
PLAN_WINDOW_IDS = 20_000


def batch_full(batch: Batch, f: File, batch_bytes: int) -> bool:
    """``f`` does not fit into ``batch`` (which holds files already) by content, files or distinct ids."""
    known = batch.ids
    return bool(batch.files) and (
        batch.content_bytes + f.entry.size > batch_bytes
        or len(batch.files) >= FETCH_BATCH_MAX_FILES
        or (
            len(known) + len(f.ids) > FETCH_BATCH_MAX_IDS  # an upper bound first: counting is rarely needed
            and len(known) + sum(1 for c in f.ids if c not in known) > FETCH_BATCH_MAX_IDS
        )
    )


def add_file(batch: Batch, f: File) -> None:
    """Put ``f`` into ``batch`` (its content and distinct chunk ids counted)."""
    batch.files.append(f)
    batch.content_bytes += f.entry.size
    if len(f.ids) == 1:
        batch.ids[f.ids[0]] = None
    else:
        batch.ids.update(dict.fromkeys(f.ids))


def window_full(files: Sequence[File], ids: dict[bytes, None]) -> bool:
    """The window cannot take another small file (whose ids, at most ``FETCH_BATCH_MAX_IDS``, are all new)."""
    return len(files) >= PLAN_WINDOW_FILES or len(ids) > PLAN_WINDOW_IDS - FETCH_BATCH_MAX_IDS


def cut_batches(
    files: Sequence[File], groups: dict[bytes, int] | None, first_seq: int, batch_bytes: int
) -> list[Batch]:
    """The window's ``files`` in batches numbered from ``first_seq``, grouped by ``groups`` (chunk id ->
    storage group) when given, else in walk order.

    Grouped: files are ordered by the group of their first chunk (a file
    without chunks, or whose first chunk has no group, counts as group 0), stably;
    a batch ends before a group that would not fit in it whole (a group larger
    than a batch is cut by the usual bounds). Every batch carries ``groups``, so
    its request can be grouped the same way.
    """
    if groups is None:
        ordered = list(files)
        totals: dict[int, int] = {}
    else:
        ordered = sorted(files, key=lambda f: groups.get(f.ids[0], 0) if f.ids else 0)
        totals = {}
        for f in ordered:
            key = groups.get(f.ids[0], 0) if f.ids else 0
            totals[key] = totals.get(key, 0) + f.entry.size
    batches = [Batch(first_seq, groups=groups)]
    previous: int | None = None
    for f in ordered:
        batch = batches[-1]
        full = batch_full(batch, f, batch_bytes)
        if groups is not None:
            key = groups.get(f.ids[0], 0) if f.ids else 0
            if not full and key != previous and batch.files:
                full = batch.content_bytes + totals[key] > batch_bytes
            previous = key
        if full:
            batch = Batch(batch.seq + 1, groups=groups)
            batches.append(batch)
        add_file(batch, f)
    return batches if batches[0].files else []
