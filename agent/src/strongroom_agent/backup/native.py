"""The native small-file read path: one GIL-free call per group of one-chunk files (ADR 0080).

``strongroom_agent._native`` (``native/`` in the repository, built by
``make native`` where cargo is installed; never packaged) reads, hashes and
compresses a group of files of at most the chunker's minimum size, each of
which is one chunk, with the GIL released for the whole group. It opens like
``read.open_for_backup``, applies ``FileReader``'s consistency rule (one more
attempt when the inode, size, mtime or ctime moved; a short or long read is a
change) and returns per file what the Python path would have found: the
``fstat`` it was read under, the chunk's keyed BLAKE3 id and its content
compressed as ``chunking.compress`` does (zstd at ``ZSTD_LEVEL``, or the
content itself when that is not smaller), or why the file is left out. Chunk
ids and content are the Python path's; zstd frames may differ in bytes but
decode to the same content, with its length in the frame header.

Without the module, or with ``STRONGROOM_AGENT_NATIVE=0`` (read by the
composition root, ``from_env``), the agent reads on the Python path.
"""

from __future__ import annotations

import enum
import importlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType

from strongroom.agent.v1 import gateway_pb2

from strongroom_agent.backup.stages import Chunk
from strongroom_agent.chunking import ZSTD_LEVEL, ChunkParams

log = logging.getLogger(__name__)

NATIVE_ENV = "STRONGROOM_AGENT_NATIVE"  # "0": the Python read path even where the extension is built
MODULE = "strongroom_agent._native"
FORMAT = 1  # the shape of the module's results this code decodes (the module's own FORMAT)


class Code(enum.IntEnum):
    """What became of one file of a native group (``native/src/lib.rs`` has the same values)."""

    OK = 0  # read consistently
    TOO_BIG = 1  # larger than one chunk when read: the caller reads it on the Python path
    OS_ERROR = 2  # open, read or fstat failed with ``errno``
    NOT_REGULAR = 3  # not a regular file once opened
    CHANGED = 4  # changed while being read, twice


@dataclass(slots=True)
class NativeRead:
    """One file's outcome: ``stat`` and ``chunk`` (None for an empty file) when ``code`` is OK."""

    code: Code
    bytes_read: int
    stat: os.stat_result | None = None
    chunk: Chunk | None = None
    errno: int = 0


def _stat_result(fields: Sequence[int]) -> os.stat_result:
    """The ``os.stat_result`` ``os.fstat`` gives for these fields (CPython's own arithmetic for the times)."""
    mode, ino, dev, nlink, uid, gid, size, a_s, a_ns, m_s, m_ns, c_s, c_ns, blksize, blocks, rdev = fields
    return os.stat_result(
        (
            *(mode, ino, dev, nlink, uid, gid, size, a_s, m_s, c_s),
            *(a_s + a_ns * 1e-9, m_s + m_ns * 1e-9, c_s + c_ns * 1e-9),
            *(a_s * 1_000_000_000 + a_ns, m_s * 1_000_000_000 + m_ns, c_s * 1_000_000_000 + c_ns),
            *(blksize, blocks, rdev),
        )
    )


class NativeSmallFiles:
    """The extension's group read, with its results decoded (thread-safe: each call is independent)."""

    def __init__(self, module: ModuleType) -> None:
        self._read = module.read_small_files

    def read(self, paths: list[str], params: ChunkParams) -> list[NativeRead]:
        """Read ``paths`` (one chunk each at most: larger ones come back TOO_BIG), GIL released throughout.

        Blocks the calling (worker) thread for the whole group; charges nothing to a throttle
        (the caller does, with the bytes read).
        """
        results: list[NativeRead] = []
        for raw in self._read(paths, params.key, ZSTD_LEVEL, params.min_size):
            code, bytes_read, *rest = raw
            result = NativeRead(Code(code), bytes_read)
            if result.code is Code.OK:
                fields, chunk = rest
                result.stat = _stat_result(fields)
                if chunk is not None:
                    cid, compressed, payload, raw_length = chunk
                    encoding = gateway_pb2.CHUNK_COMPRESSION_ZSTD if compressed else gateway_pb2.CHUNK_COMPRESSION_NONE
                    result.chunk = Chunk(cid, payload, 0, encoding, raw_length)
            elif result.code is Code.OS_ERROR:
                result.errno = rest[0]
            results.append(result)
        return results


def load() -> NativeSmallFiles | None:
    """The extension's group read, or None when it is not built (or built for another result shape)."""
    try:
        module = importlib.import_module(MODULE)
    except ImportError:
        return None
    if getattr(module, "FORMAT", None) != FORMAT:
        log.warning("%s has result format %r, expected %d: not used", MODULE, getattr(module, "FORMAT", None), FORMAT)
        return None
    return NativeSmallFiles(module)


def from_env(environ: Mapping[str, str]) -> NativeSmallFiles | None:
    """The composition root's choice: the native path unless ``STRONGROOM_AGENT_NATIVE=0`` or not built."""
    if environ.get(NATIVE_ENV, "1") == "0":
        log.info("small files on the Python read path (%s=0)", NATIVE_ENV)
        return None
    native = load()
    if native is None:
        log.info("small files on the Python read path (the native extension is not built: `make native`)")
    else:
        log.info("small files on the native read path (ADR 0080)")
    return native
