"""The restore writers' decode-and-write step alone: one new buffer per chunk, or one reused buffer (ADR 0072).

    uv run python bench/restore_decode.py [DIR] [--small N] [--large-mib M] [--rounds 5] [--target /dev/shm]

Takes ``N`` small files of ``DIR`` (default: the benchmark's day-1 tree, each one chunk, as the
benchmark's chunker leaves files under 256 KiB) and ``M`` MiB of its large files (the same part of
each: binary, log and mixed) cut into 1 MiB
chunks, compresses every chunk as the agent does (zstd level 3, incompressible ones stored), then
writes them into fresh files under ``--target`` in one thread, alternating in each round:

- ``per-chunk``: the previous writers' way: a batch's chunks decoded first, each into new memory
  (``decode_chunk``), held, then written per file (``Destination.write``, one ``writev``);
- ``reused``: ``ContentWriter``: each file's chunks inflated into one reused buffer and written
  from there.

Both write the same files (32 MiB batches, the agent's). Prints the CPU seconds (user + system),
wall time and minor page faults of each side per round, and the medians.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
from strongroom.agent.v1 import gateway_pb2  # noqa: E402
from strongroom_agent.chunking import compress, decode_chunk  # noqa: E402
from strongroom_agent.restore.content import ContentWriter, Encoded  # noqa: E402
from strongroom_agent.restore.destination import Destination  # noqa: E402

BATCH_BYTES = 32 << 20
CHUNK = 1 << 20


def cpu() -> tuple[float, int]:
    """CPU seconds (user + system) and minor page faults of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def load_files(root: Path, small: int, large_mib: int) -> list[list[Encoded]]:
    """The chunks of ``small`` small files, then of ``large_mib`` MiB of large ones, encoded as the agent sends them."""
    files: list[list[Encoded]] = []
    for dirpath, _dirs, names in os.walk(root / "src"):
        for name in sorted(names):
            path = Path(dirpath) / name
            if len(files) >= small or not path.is_file() or path.is_symlink():
                continue
            content = path.read_bytes()
            if 0 < len(content) < 256 << 10:
                compression, data = compress(content)
                files.append([Encoded(b"", data, compression, len(content))])
        if len(files) >= small:
            break
    bigs = sorted(p for p in (root / "big").rglob("*") if p.is_file())
    each = large_mib * CHUNK // max(1, len(bigs))  # a part of every large file: binary, log and mixed
    for path in bigs:
        chunks = []
        left = each
        with open(path, "rb") as f:
            while left > 0 and (content := f.read(CHUNK)):
                compression, data = compress(content)
                chunks.append(Encoded(b"", data, compression, len(content)))
                left -= len(content)
        files.append(chunks)
    return files


def batches(files: list[list[Encoded]]) -> list[list[list[Encoded]]]:
    out: list[list[list[Encoded]]] = [[]]
    size = 0
    for chunks in files:
        length = sum(c.length for c in chunks)
        if out[-1] and size + length > BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(chunks)
        size += length
    return out


def per_chunk(target: Path, work: list[list[list[Encoded]]]) -> None:
    n = 0
    for batch in work:
        decoded = [[decode_chunk(c.data, c.compression, c.length) for c in chunks] for chunks in batch]
        for pieces in decoded:
            fd = os.open(target / f"f{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            Destination.write(fd, pieces)
            os.close(fd)
            n += 1


def reused(target: Path, work: list[list[list[Encoded]]]) -> None:
    writer = ContentWriter()
    n = 0
    for batch in work:
        for chunks in batch:
            fd = os.open(target / f"f{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            writer.write(fd, chunks)
            os.close(fd)
            n += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, nargs="?", help="a day-1 tree (default: the benchmark's, built on first use)")
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--target", type=Path, default=Path("/dev/shm"))
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "strongroom-bench"
    )
    args = parser.parse_args()
    root = args.dir or dataset.day1_tree(args.work, quick=False)
    files = load_files(root, args.small, args.large_mib)
    work = batches(files)
    raw = sum(c.length for chunks in files for c in chunks)
    zstd = sum(1 for chunks in files for c in chunks if c.compression == gateway_pb2.CHUNK_COMPRESSION_ZSTD)
    chunks = sum(len(f) for f in files)
    print(f"{len(files)} files, {chunks} chunks ({zstd} zstd), {raw / 2**20:.0f} MiB, {len(work)} batches", flush=True)
    figures: dict[str, list[tuple[float, float, int]]] = {"per-chunk": [], "reused": []}
    for n in range(args.rounds):
        for name, step in (("per-chunk", per_chunk), ("reused", reused)):
            target = Path(tempfile.mkdtemp(prefix="restore-decode-", dir=args.target))
            load = os.getloadavg()[0]
            (c0, f0), w0 = cpu(), time.perf_counter()
            step(target, work)
            (c1, f1), w = cpu(), time.perf_counter() - w0
            shutil.rmtree(target)
            figures[name].append((c1 - c0, w, f1 - f0))
            print(
                f"round {n + 1} {name}: CPU {c1 - c0:.2f}s, wall {w:.2f}s, {f1 - f0} page faults (load {load:.1f})",
                flush=True,
            )
    for name, runs in figures.items():
        c = statistics.median(r[0] for r in runs)
        w = statistics.median(r[1] for r in runs)
        faults = statistics.median(r[2] for r in runs)
        print(f"median {name}: CPU {c:.2f}s, wall {w:.2f}s, {faults:.0f} page faults")
    base = statistics.median(r[0] for r in figures["per-chunk"])
    print(f"reused / per-chunk CPU: {statistics.median(r[0] for r in figures['reused']) / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
