"""The native write of new small files: a run of them in one GIL-free call (ADR 0082).

``strongroom_agent._native`` (``native/`` in the repository, built by ``make
native`` where cargo is installed; never packaged; ADR 0080) writes a run of
files whose names were free at the conflict check into one open parent
directory, with the GIL released for the whole run: per file the
``O_EXCL | O_NOFOLLOW`` create of ``Destination.write_new``, its chunks decoded
(zstd frames inflated to exactly their declared length) and written, the
metadata of ``Destination._apply_metadata`` (fchown before fchmod, then the
mtime), close; a file that fails after its create is unlinked again. Every
outcome is a value: written, the name taken since the check (``EXISTS``: the
caller takes the Python path's SKIP / OVERWRITE), an errno, or the index of a
chunk that did not inflate (``DAMAGED``: the caller writes the file on the
Python path, which gives that chunk's error in its own words).

Without the module, or with ``STRONGROOM_AGENT_NATIVE=0`` (read by the
composition root, ``from_env``), the agent writes every file on the Python path.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from types import ModuleType

from strongroom.agent.v1 import gateway_pb2

from strongroom_agent.backup.native import chosen, extension
from strongroom_agent.restore.content import Encoded

WRITE_FORMAT = 1  # the shape of ``write_new_files``' arguments and results (the module's own WRITE_FORMAT)


class Written(enum.IntEnum):
    """What became of one file of a native run (``native/src/lib.rs`` has the same values)."""

    WRITTEN = 0  # created, filled, metadata applied, closed
    EXISTS = 1  # the name was taken since the check: nothing touched
    OS_ERROR = 2  # value: the errno (the file, if created, unlinked again)
    DAMAGED = 3  # value: the index of the chunk that did not inflate to its length (file unlinked)


# A file of a run: name, creation mode, (uid, gid) to fchown or None, mode to fchmod or None, mtime in ns, chunks.
NewFile = tuple[str, int, tuple[int, int] | None, int | None, int, list[tuple[bytes | memoryview, bool, int]]]


def new_file(
    name: str, mode: int, chown: tuple[int, int] | None, chmod: int | None, mtime_ns: int, chunks: Sequence[Encoded]
) -> NewFile:
    """The native call's description of a file (chunks checked by ``Contents.chunks_of`` before)."""
    zstd = gateway_pb2.CHUNK_COMPRESSION_ZSTD
    return (name, mode, chown, chmod, mtime_ns, [(c.data, c.compression == zstd, c.length) for c in chunks])


class NativeWrites:
    """The extension's run write (thread-safe: each call is independent; each writer thread keeps its buffer)."""

    def __init__(self, module: ModuleType) -> None:
        self._write = module.write_new_files

    def write(self, pfd: int, files: list[NewFile]) -> list[tuple[Written, int]]:
        """Create and write ``files`` in the open directory ``pfd``, GIL released throughout; per file its outcome.

        Names must be single checked components (``safe_parts``). Blocks the
        calling (writer) thread for the whole run; holds one 4 MiB decode
        buffer per thread (``content.DECODE_BUFFER_BYTES``).
        """
        return [(Written(code), value) for code, value in self._write(pfd, files)]


def load() -> NativeWrites | None:
    """The extension's run write, or None when it is not built (or built for another shape)."""
    module = extension("WRITE_FORMAT", WRITE_FORMAT)
    return None if module is None else NativeWrites(module)


def from_env(environ: Mapping[str, str]) -> NativeWrites | None:
    """The composition root's choice: the native write unless ``STRONGROOM_AGENT_NATIVE=0`` or not built."""
    return chosen(environ, "new restored files written", "ADR 0082", load)
