"""The agent's compress + upload-message path, measured piece by piece (ADR 0071).

    uv run python bench/compress_path.py [--data DIR | --work DIR [--quick]] [--config PIECE:STRIDE:MIN:SAVING ...]

One invocation, single-threaded, CPU time of this thread (``time.thread_time``), three parts:

1. **Sampling, per chunk** (``timeit``-style, best of ``--repeat``): 1 MiB of random bytes, of the
   data set's log text, of its mixed blocks, and of this repository's Python source: zstd level 1 in
   full (``chunking.compress``) against a sample estimate alone (``incompressible`` below: pieces
   spread over the chunk, compressed as one buffer), in microseconds, and what the estimate decides.
2. **Sampling, the data set** (the benchmark's day-1 tree, ``dataset.py``; built under ``--work``
   unless ``--data`` names one): every file cut with the gateway's chunker sizes (256 KiB / 1 MiB /
   4 MiB), each file's chunks encoded by every variant in turn (the order rotates per file):
   ``full`` (``chunking.compress``, what the agent does) and each sampling (``--config``; default three).
   Per category of the tree (source, random binary, logs, mixed): raw MB, CPU seconds, stored MB,
   chunks sent raw, and the ratios to ``full``. Stored bytes are the payloads as uploaded.
3. **Upload messages**: 16 MiB of payload as 1 MiB, 16 KiB and 4 MiB chunks, made into 4 MiB
   messages by the protobuf runtime (build ``UploadedChunk`` / ``UploadChunkRequest``, then
   ``SerializeToString``: the agent before ADR 0071, reproduced here) and by
   ``messages.upload_requests`` (hand-encoded, one join), alternating, ``malloc_trim`` before each
   (as the agent trims freed pages), CPU milliseconds per MiB of payload.
4. **Small files read** (the data set's source files under 256 KiB: one chunk each): read into a
   ``bytearray`` with ``readv`` and the chunk copied out with ``bytes()`` (before ADR 0071) against
   one ``os.read`` whose ``bytes`` is the chunk, alternating per file, page cache warm.

``--levels 1,-1,...`` instead: only the data set's compression CPU and stored bytes at each zstd
level, per category, the levels alternating per file (ADR 0074).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
from pyfastcdc import FastCDC  # noqa: E402
from strongroom.agent.v1 import gateway_pb2  # noqa: E402
from strongroom_agent.backup.messages import Upload, upload_requests  # noqa: E402
from strongroom_agent.chunking import _compressor, compress  # noqa: E402

MiB = 1 << 20
# The gateway's chunker sizes (docs/formats/chunk-id.md); the seed only moves boundaries.
MIN_SIZE, AVG_SIZE, MAX_SIZE, SEED = 256 << 10, 1 << 20, 4 << 20, 7
NONE = gateway_pb2.CHUNK_COMPRESSION_NONE
ZSTD = gateway_pb2.CHUNK_COMPRESSION_ZSTD


@dataclass(frozen=True)
class Sampling:
    """A chunk of at least ``min_chunk`` bytes is sampled: a ``piece`` every ``stride`` bytes, spread evenly
    from its start to its end, compressed as one buffer at the agent's level; saving less than
    ``min_saving`` of the sample, the chunk is sent raw without being compressed in full."""

    piece: int
    stride: int
    min_chunk: int
    min_saving: float

    def offsets(self, length: int) -> list[int]:
        if length < self.min_chunk or length < self.piece:
            return []
        count = max(2, length // self.stride)
        span = length - self.piece
        return [span * i // (count - 1) for i in range(count)]


# Pieces no further apart than the smallest blocks of the data set's mixed files (64 KiB).
DEFAULT_SAMPLING = Sampling(piece=2 << 10, stride=64 << 10, min_chunk=128 << 10, min_saving=1 / 32)


def incompressible(data: bytes, sampling: Sampling = DEFAULT_SAMPLING) -> bool:
    offsets = sampling.offsets(len(data))
    if not offsets:
        return False
    view = memoryview(data)
    sample = b"".join(view[at : at + sampling.piece] for at in offsets)
    return len(_compressor().compress(sample)) >= len(sample) * (1 - sampling.min_saving)


def sampled_compress(data: bytes, sampling: Sampling | None) -> tuple[int, bytes]:
    """``chunking.compress``, or with ``sampling`` the chunk raw when its sample says it will not shrink."""
    if sampling is not None and incompressible(data, sampling):
        return NONE, data
    return compress(data)


def best_us(fn: Callable[[], object], repeat: int) -> float:
    """The smallest CPU time of one call, over ``repeat`` timed loops of enough calls for ~20 ms each."""
    calls = 1
    while True:
        start = time.thread_time()
        for _ in range(calls):
            fn()
        if time.thread_time() - start > 0.02:
            break
        calls *= 2
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time() - start) / calls)
    return best * 1e6


def sample_inputs() -> dict[str, bytes]:
    rng = random.Random(dataset.SEED)
    log = b"".join(dataset._log(random.Random(1), MiB))[:MiB]
    mixed = b"".join(dataset._mixed(random.Random(2), 8 * MiB))[3 * MiB : 4 * MiB]
    source = bytearray()
    for root, _dirs, files in sorted(os.walk(HERE.parent / "agent" / "src")):
        for name in sorted(files):
            if name.endswith(".py"):
                source += Path(root, name).read_bytes()
    return {
        "random": rng.randbytes(MiB),
        "log text": log,
        "mixed blocks": mixed,
        "python source": bytes((source * (MiB // len(source) + 1))[:MiB]),
    }


def per_chunk(repeat: int) -> None:
    print(f"## Sampling, per chunk: 1 MiB, CPU microseconds (best of {repeat}), sampling {label(DEFAULT_SAMPLING)}\n")
    print("| content | full compress | sample estimate | sample / full | full ratio | sample says |")
    print("|---|---:|---:|---:|---:|---|")
    for name, data in sample_inputs().items():
        full = best_us(lambda d=data: _compressor().compress(d), repeat)  # type: ignore[misc]
        sample = best_us(lambda d=data: incompressible(d), repeat)  # type: ignore[misc]
        ratio = len(_compressor().compress(data)) / len(data)
        verdict = "raw" if incompressible(data) else "compress"
        print(f"| {name} | {full:,.0f} | {sample:,.1f} | {sample / full:.3f} | {ratio:.3f} | {verdict} |")
    print()


def category(rel: str) -> str:
    if rel.startswith("src/"):
        return "source tree"
    if "/disk-" in rel:
        return "random binary"
    if "/logs/" in rel or rel.endswith(".log"):
        return "logs"
    if "/mixed" in rel:
        return "mixed"
    return "other"


@dataclass
class Tally:
    raw: int = 0
    stored: int = 0
    cpu: float = 0.0
    chunks: int = 0
    sent_raw: int = 0


def parse_config(text: str) -> Sampling:
    piece, stride, min_chunk, saving = text.split(":")
    return Sampling(int(piece) << 10, int(stride) << 10, int(min_chunk) << 10, float(saving))


def label(s: Sampling | None) -> str:
    if s is None:
        return "full"
    return f"{s.piece >> 10}K every {s.stride >> 10}K, >= {s.min_chunk >> 10}K, saving < {s.min_saving:.3f}"


def over_dataset(root: Path, variants: list[Sampling | None]) -> None:
    encoders = [functools.partial(sampled_compress, sampling=v) for v in variants]
    over_files(root, "## Sampling, the data set", "variant", [label(v) for v in variants], encoders)


def over_files(
    root: Path, title: str, column: str, labels: list[str], encoders: list[Callable[[bytes], tuple[int, bytes]]]
) -> None:
    """Every file of ``root`` cut with the gateway's chunker sizes, its chunks encoded by each of ``encoders``
    in turn (the order rotates per file); CPU and stored bytes per category (``report``)."""
    cdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, seed=SEED)
    tallies: dict[tuple[str, int], Tally] = defaultdict(Tally)
    files = sorted(os.path.join(d, f) for d, _s, fs in os.walk(root) for f in fs if os.path.isfile(os.path.join(d, f)))
    for n, path in enumerate(files):
        kind = category(os.path.relpath(path, root))
        with open(path, "rb") as f:
            data = f.read()
        chunks = [bytes(c.data) for c in cdc.cut_buf(data)] if data else []
        order = list(range(len(encoders)))
        shift = n % len(order)
        for v in order[shift:] + order[:shift]:
            encode, tally = encoders[v], tallies[(kind, v)]
            stored = sent_raw = 0
            start = time.thread_time()
            for chunk in chunks:
                encoding, payload = encode(chunk)
                stored += len(payload)
                sent_raw += encoding == NONE
            tally.cpu += time.thread_time() - start
            tally.raw += len(data)
            tally.stored += stored
            tally.chunks += len(chunks)
            tally.sent_raw += sent_raw
    sizes = f"{MIN_SIZE >> 10}K/{AVG_SIZE >> 10}K/{MAX_SIZE >> 10}K"
    report(f"{title}: {len(files):,} files, chunker {sizes}", column, labels, tallies)


def report(title: str, column: str, labels: list[str], tallies: dict[tuple[str, int], Tally]) -> None:
    """Print per category and for all of them (``labels[i]`` names variant ``i``; ratios to variant 0)."""
    kinds = sorted({k for k, _ in tallies})
    for k in range(len(labels)):
        total = tallies[("all", k)] = Tally()
        for kind in kinds:
            t = tallies[(kind, k)]
            total.raw += t.raw
            total.stored += t.stored
            total.cpu += t.cpu
            total.chunks += t.chunks
            total.sent_raw += t.sent_raw
    print(f"{title}\n")
    first = labels[0]
    print(f"| content | {column} | raw MB | CPU s | stored MB | sent raw / chunks | CPU / {first} | stored / {first} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind in [*kinds, "all"]:
        base = tallies[(kind, 0)]
        for k, name in enumerate(labels):
            t = tallies[(kind, k)]
            print(
                f"| {kind} | {name} | {t.raw / 1e6:,.1f} | {t.cpu:.2f} | {t.stored / 1e6:,.1f} "
                f"| {t.sent_raw:,} / {t.chunks:,} | {t.cpu / base.cpu:.3f} | {t.stored / base.stored:.4f} |"
            )
    print()


def over_levels(root: Path, levels: list[int]) -> None:
    """Compression CPU and stored bytes of the data set at each zstd level (ADR 0074), levels alternating per file."""
    import zstandard

    def at_level(level: int) -> Callable[[bytes], tuple[int, bytes]]:
        compressor = zstandard.ZstdCompressor(level=level)

        def encode(chunk: bytes) -> tuple[int, bytes]:  # as chunking.compress: the content when zstd does not shrink it
            compressed = compressor.compress(chunk)
            return (ZSTD, compressed) if len(compressed) < len(chunk) else (NONE, chunk)

        return encode

    encoders = [at_level(level) for level in levels]
    over_files(root, "## zstd levels, the data set", "level", [str(level) for level in levels], encoders)


def protobuf_requests(job_id: str, uploads: list[Upload], message_bytes: int) -> list[bytes]:
    """The upload messages as the agent built them before ADR 0071: message objects, then serialized."""
    requests: list[gateway_pb2.UploadChunkRequest] = []
    current: list[gateway_pb2.UploadedChunk] = []
    size = 0
    for u in uploads:
        if current and size + len(u.payload) > message_bytes:
            requests.append(gateway_pb2.UploadChunkRequest(job_id=job_id, chunks=current))
            current, size = [], 0
        current.append(
            gateway_pb2.UploadedChunk(
                chunk_id=u.id, compression=u.compression, raw_length=u.raw_length, payload=u.payload
            )
        )
        size += len(u.payload)
    if current:
        requests.append(gateway_pb2.UploadChunkRequest(job_id=job_id, chunks=current))
    return [r.SerializeToString() for r in requests]


def messages(rounds: int) -> None:
    libc_name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None) if libc_name else None
    rng = random.Random(3)
    job = "5f0c6a52-8f57-4cd2-9d55-3a1f3b3c9e01"
    print(f"## Upload messages: 16 MiB of payload in 4 MiB messages, CPU ms per MiB (mean of {rounds}, alternating)\n")
    print("| chunks | protobuf objects + serialize | hand-encoded join | hand / protobuf |")
    print("|---|---:|---:|---:|")
    for name, size in (("16 x 1 MiB", MiB), ("1024 x 16 KiB", 16 << 10), ("4 x 4 MiB", 4 * MiB)):
        uploads = [
            Upload(rng.randbytes(32), size, gateway_pb2.CHUNK_COMPRESSION_ZSTD, rng.randbytes(size), 0)
            for _ in range((16 * MiB) // size)
        ]
        assert protobuf_requests(job, uploads, 4 * MiB) == upload_requests(job, uploads, 4 * MiB)
        cpu = {"protobuf": 0.0, "hand": 0.0}
        for r in range(rounds):
            sides = [("protobuf", protobuf_requests), ("hand", upload_requests)]
            for side, build in sides if r % 2 == 0 else sides[::-1]:
                if trim is not None:
                    trim(0)
                start = time.thread_time()
                out = build(job, uploads, 4 * MiB)
                cpu[side] += time.thread_time() - start
                del out
        old, new = (cpu[k] / rounds * 1e3 / 16 for k in ("protobuf", "hand"))
        print(f"| {name} | {old:.2f} | {new:.2f} | {new / old:.3f} |")
    print()


def small_reads(root: Path) -> None:
    paths = sorted(
        os.path.join(d, f)
        for d, _s, fs in os.walk(root / "src")
        for f in fs
        if os.path.isfile(os.path.join(d, f)) and 0 < os.path.getsize(os.path.join(d, f)) < MIN_SIZE
    )

    def copied(fd: int, size: int) -> bytes:
        buffer = bytearray(size + 1)
        n = os.readv(fd, [buffer])
        return bytes(memoryview(buffer)[:n])

    def direct(fd: int, size: int) -> bytes:
        return os.read(fd, size + 1)

    cpu = {"copied": 0.0, "direct": 0.0}
    total = 0
    for n, path in enumerate(paths):
        size = os.path.getsize(path)
        total += size
        sides = [("copied", copied), ("direct", direct)]
        for side, read in sides if n % 2 == 0 else sides[::-1]:
            fd = os.open(path, os.O_RDONLY)
            start = time.thread_time()
            content = read(fd, size)
            cpu[side] += time.thread_time() - start
            os.close(fd)
            assert len(content) == size
    print(f"## Small files read: {len(paths):,} files, {total / 1e6:,.1f} MB, CPU seconds\n")
    print("| readv into bytearray + bytes() copy | os.read as the chunk | direct / copied |")
    print("|---:|---:|---:|")
    print(f"| {cpu['copied']:.3f} | {cpu['direct']:.3f} | {cpu['direct'] / cpu['copied']:.3f} |")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="an existing day-1 tree")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "strongroom-bench")
    parser.add_argument("--quick", action="store_true", help="the small data subset")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--skip-dataset", action="store_true", help="parts 1 and 3 only")
    parser.add_argument("--message-rounds", type=int, default=40)
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="PIECE:STRIDE:MIN_CHUNK:SAVING",
        help="a sampling to compare (sizes in KiB; default three), e.g. 4:128:256:0.03",
    )
    parser.add_argument(
        "--levels", help="only compare these zstd levels over the data set, e.g. 1,-1,-2 (the first is the base)"
    )
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    if args.levels:
        levels = [int(x) for x in args.levels.split(",")]
        over_levels(args.data or dataset.day1_tree(args.work, quick=args.quick), levels)
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 0
    per_chunk(args.repeat)
    if not args.skip_dataset:
        root = args.data or dataset.day1_tree(args.work, quick=args.quick)
        configs = [parse_config(c) for c in args.config] or [
            DEFAULT_SAMPLING,
            Sampling(4 << 10, 128 << 10, 256 << 10, 1 / 32),
            Sampling(2 << 10, 32 << 10, 64 << 10, 1 / 32),
        ]
        over_dataset(root, [None, *configs])
    messages(args.message_rounds)
    if not args.skip_dataset:
        small_reads(root)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
