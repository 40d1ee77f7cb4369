"""The agent's allocator settings (``memory.tune_allocator``), observed through glibc's own statistics.

mallopt is process-wide, so each check runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


# Prints whether a block just below the mmap threshold comes from the heap (glibc's mallinfo2 counts
# mapped blocks in ``hblks``) and whether one just above it is mapped.
PROBE = """
import ctypes, sys
from strongroom_agent import memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    assert memory.tune_allocator()
threshold = memory.MMAP_THRESHOLD_BYTES
mapped = libc.mallinfo2().hblks
below = libc.malloc(threshold - (64 << 10))
heap_below = libc.mallinfo2().hblks == mapped
above = libc.malloc(threshold + (64 << 10))
mapped_above = libc.mallinfo2().hblks == mapped + (0 if heap_below else 1) + 1
libc.free(above)
libc.free(below)
print(heap_below, mapped_above)
"""


def _probe(mode: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split()


@pytest.mark.skipif(not _glibc(), reason="mallopt and mallinfo2 are glibc's")
def test_tuned_buffers_up_to_the_mmap_threshold_come_from_the_heap_and_larger_ones_are_mapped() -> None:
    from strongroom_agent import memory
    from strongroom_agent.backup.read import WHOLE_FILE_BYTES

    # The backup's largest buffer (ADR 0077): a whole file read at once, one byte more to notice growth.
    assert memory.MMAP_THRESHOLD_BYTES > WHOLE_FILE_BYTES + 1
    assert _probe("tuned") == ["True", "True"]
    # glibc's own dynamic threshold starts at 128 KiB: without the settings the same block is mapped.
    assert _probe("default") == ["False", "True"]
