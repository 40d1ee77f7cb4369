"""The agent's allocator settings: keep the process's resident memory close to what the pipeline holds.

Chunk content, compressed copies and gRPC messages are large short-lived
buffers allocated and freed in several threads. With glibc's defaults each
thread gets its own arena (up to 8 per core) and the mmap threshold rises to
the largest buffer freed so far (up to 32 MiB), so buffers of up to a few
MiB come from arenas that keep their pages after ``free``: on the benchmark
tree the agent's peak RSS was ~60 MB above what the pipeline held. Two arenas
and a fixed mmap threshold took that away; a 128 KiB threshold saved a little
more but cost ~25% more CPU in page faults (ADR 0064). The threshold was 1 MiB
until ADR 0077: every buffer from 1 MiB up (the content of a large chunk, its
compressed copy, the upload message carrying it and gRPC's copy of that, the
read buffers of files over 1 MiB) was then mapped fresh and unmapped whole, and
each of its pages faulted in and zero-filled: most of the agent's ~1.1 million
page faults in a full backup of the benchmark tree. At 9 MiB they come from the
arenas and reuse freed pages (faults -22%), and a trim ceiling keeps the peak
RSS where it was (``TRIM_CEILING_BYTES``).

Chunks below the threshold (most chunks: FastCDC's 256 KiB-1 MiB), compressed
copies and the step's small objects still come from the arenas, and pages
freed inside them stay resident until glibc happens to trim the top of an
arena. ``FreedPages`` hands them back (``malloc_trim``) after every few MiB
the pipeline released: with the smaller steps of ADR 0064 the full backup's
peak RSS on the benchmark tree fell from ~235-250 MB to ~205 MB.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Above the largest buffer the backup allocates: a whole file read at once (up to 8 MiB + 1 byte,
# backup/read.py) and FastCDC's stream buffer (twice the 4 MiB maximum chunk). ADR 0077.
MMAP_THRESHOLD_BYTES = 9 << 20
ARENA_MAX = 2
# ``free`` hands back the top of an arena once it holds more than this free: glibc's default, set
# explicitly. Higher (32 MiB) took 4% of the faults away but kept up to that much at the top of the
# worker threads' arena, which ``malloc_trim`` does not reach: peak RSS +20 MB (ADR 0077).
TRIM_THRESHOLD_BYTES = 128 << 10


def _glibc_function(name: str) -> Any | None:
    """glibc's function ``name`` (a ctypes foreign function), or None when the C library is not glibc."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return getattr(ctypes.CDLL(None), name)
    except (ValueError, OSError, AttributeError):
        return None


def tune_allocator() -> bool:
    """Apply the settings above when the C library is glibc; False (and nothing changed) otherwise.

    Called once by the agent's entry point before its jobs start; never at import.
    """
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False  # not glibc (musl, macOS): its allocator's own defaults stand
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (M_ARENA_MAX, ARENA_MAX),
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
    )
    applied = all([bool(mallopt(parameter, value)) for parameter, value in settings])  # each one tried
    if not applied:
        log.warning("could not tune the allocator (mallopt refused); memory use may be higher")
    return applied


def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)`` as a callable, or None when the C library is not glibc."""
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return functools.partial(trim, 0)


# Freed heap pages go back to the system after every this many bytes of released buffers: after about
# every upload call (batches of up to 16 MiB), at most once per 4 MiB when batches are small. Peak RSS
# of the full backup -30-45 MB (ADR 0064).
TRIM_EVERY_BYTES = 4 << 20
# ... but only while the process holds more than this (ADR 0074). Every trimmed page is faulted in
# again when the allocator hands it out next: trimming after every upload call, the full backup of
# the benchmark tree took 1.5 million minor page faults (~6 GB of fresh pages for 2.6 GB of data)
# and a third of its CPU in the kernel. Below the floor the freed pages stay for reuse; above it
# trims go on as before. 128 MiB: faults -25-32%, agent CPU -9%, peak RSS level (202.7 -> 202.9 MB
# over four pairs); 144 MiB saved more CPU (-14%) but peaked 5 MB higher.
TRIM_FLOOR_BYTES = 128 << 20


def resident_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``); 0 where there is no procfs."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# ... and at once, between the pipeline's steps, whenever the process holds more than this (ADR 0077).
# With the 9 MiB mmap threshold freed chunk-sized buffers stay in the arenas until the next trim, and
# the trims above the floor come only after an upload call returns: in between, the peak RSS rose by
# up to 20 MB.
TRIM_CEILING_BYTES = 168 << 20


class FreedPages:
    """Returns freed heap pages to the system once ``every_bytes`` of buffers were released, while the
    process holds more than ``floor_bytes`` (``resident``: its resident bytes; no floor without it),
    and whenever it holds more than ``ceiling_bytes`` (``over_ceiling``; 0: no ceiling).

    One per process, made by the agent's composition root (``session.make_backup_runner``).
    ``released(n)`` is called on the event loop as the pipeline lets go of
    buffers; it returns the trim when one is due (run it in a worker thread: it
    walks the arenas and takes each one's lock in turn), else None.
    """

    def __init__(
        self,
        every_bytes: int,
        trim: Callable[[], object] | None,
        *,
        floor_bytes: int = 0,
        ceiling_bytes: int = 0,
        resident: Callable[[], int] | None = None,
    ) -> None:
        self._every = every_bytes
        self._since = 0
        self._trim = trim
        self._floor = floor_bytes
        self._ceiling = ceiling_bytes
        self._resident = resident

    def released(self, nbytes: int) -> Callable[[], object] | None:
        if self._trim is None or self._every <= 0:
            return None
        self._since += nbytes
        if self._since < self._every:
            return None
        self._since = 0
        if self._floor > 0 and self._resident is not None and self._resident() <= self._floor:
            return None  # below the floor: the freed pages are reused without faults
        return self._trim

    def over_ceiling(self) -> Callable[[], object] | None:
        """The trim when the process holds more than the ceiling now, else None (run it as ``released``'s).

        Called on the event loop between the pipeline's steps. A trim it returns also returns what was
        released so far, so the count towards ``released``'s next trim starts again.
        """
        if self._trim is None or self._ceiling <= 0 or self._resident is None:
            return None
        if self._resident() <= self._ceiling:
            return None
        self._since = 0  # this trim returns what was released so far too
        return self._trim
