"""An incremental backup of one large file changed in a few places: the agent's CPU per read path (issue 13, ADR 0083).

    uv run python bench/incremental_large.py --work DIR [--size-mib 256] [--rounds 3] [--edits 6]

In this process, against the in-memory gateway of the agent's tests (``agent/tests/agent_fakes.py``),
with the gateway's chunker sizes (256 KiB / 1 MiB / 4 MiB): one file of ``--size-mib`` MiB of
compressible records (text rows of random words in 64 KiB pages, each MiB its own sequence of
numbered pages: chunks differ, zstd finds matches within each) is backed up once, then
before each measured backup ``--edits`` 4 KiB regions spread over the file are rewritten (each
makes one or two of its ~1 MiB chunks new: a few percent of the file) and the file is backed up
again with the cache in ``--work``. The sides, rotating per round (the first side rotates too):

- ``python``: ``STRONGROOM_AGENT_NATIVE=0``'s path (pyfastcdc, BLAKE3, the compress stage after dedup);
- ``eager``: the native cutter compressing every chunk in its step, as before issue 13 (the flag
  forced on: ``NativeExtension.cutter(..., compress=True)`` for every file);
- ``native``: the native cutter as the agent runs it now: a modified file's chunks go to dedup raw
  and the compress stage compresses only the new ones.

Per backup: CPU seconds of this process (user + system; the in-memory gateway's verification of
the few uploaded chunks included, alike on every side), wall seconds, new chunks, the 1-minute load
average; then each side's median and the ratios to ``python`` and ``eager``, measured in this invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "agent" / "tests"))

from agent_fakes import KEY, FakeGateway  # noqa: E402
from nochange_agent import backup, cpu_seconds  # noqa: E402  (the gateway's chunker sizes, the cache in state)
from strongroom.common.v1 import common_pb2  # noqa: E402
from strongroom_agent.backup import native  # noqa: E402
from strongroom_agent.chunking import ChunkParams  # noqa: E402

MiB = 1 << 20
SIDES = ("python", "eager", "native")
PAGE = 64 << 10


class Eager:
    """The native extension with every cutter compressing in its step (the agent before issue 13)."""

    def __init__(self, files: native.NativeExtension) -> None:
        self._files = files

    def __getattr__(self, name: str) -> object:
        return getattr(self._files, name)

    def cutter(self, params: ChunkParams, *, compress: bool) -> native.NativeCutter | None:
        return self._files.cutter(params, compress=True)


def pages(rnd: random.Random, count: int) -> list[bytes]:
    """``count`` pages of text rows: random words with numbers, like a table's export."""
    words = [rnd.randbytes(rnd.randint(3, 9)).hex().encode() for _ in range(2000)]
    out = []
    for _ in range(count):
        text = b" ".join(rnd.choices(words, k=PAGE // 8))
        out.append(text[:PAGE])
    return out


def write_data(path: Path, size: int) -> None:
    rnd = random.Random(83)
    pool = pages(rnd, 64)
    with path.open("wb") as f:
        for mib in range(size // MiB):
            for n in range(MiB // PAGE):
                page = rnd.choice(pool)
                f.write(b"%012d:%04d|" % (mib, n) + page[18:])


def edit(path: Path, count: int, round_: int) -> None:
    """Rewrite ``count`` 4 KiB regions spread over the file, at places no earlier edit touched."""
    size = path.stat().st_size
    rnd = random.Random(round_)
    with path.open("r+b") as f:
        for i in range(count):
            f.seek((i * size // count + round_ * 7 * MiB + rnd.randrange(MiB)) % (size - 4096))
            f.write(rnd.randbytes(2048).hex().encode())


async def main(work: Path, size_mib: int, rounds: int, edits: int) -> int:
    files = native.load()
    if files is None:
        raise SystemExit("the native extension is not built: make native")
    shutil.rmtree(work, ignore_errors=True)
    root, state = work / "tree", work / "state"
    root.mkdir(parents=True)
    big = root / "database.img"
    write_data(big, size_mib * MiB)
    by_side: dict[str, native.NativeExtension | Eager | None] = {
        "python": None,
        "eager": Eager(files),
        "native": files,
    }
    gateway = FakeGateway(key=KEY)
    first = await backup(gateway, str(root), str(state), "job-0", files)
    print(f"full backup: {first.stats.chunks_new} chunks, {first.stats.bytes_uploaded / MiB:.1f} MB stored", flush=True)
    cpu: dict[str, list[float]] = {side: [] for side in SIDES}
    wall: dict[str, list[float]] = {side: [] for side in SIDES}
    job = 0
    for round_ in range(rounds):
        for k in range(len(SIDES)):
            side = SIDES[(round_ + k) % len(SIDES)]
            job += 1
            edit(big, edits, job)
            before, started = cpu_seconds(), time.perf_counter()
            result = await backup(gateway, str(root), str(state), f"job-{job}", by_side[side])  # type: ignore[arg-type]
            spent, took = cpu_seconds() - before, time.perf_counter() - started
            if result.status != common_pb2.JOB_STATUS_COMPLETE or result.stats.files_read != 1:
                raise SystemExit(f"backup {job} ({side}) did not read the one file: {result}")
            cpu[side].append(spent)
            wall[side].append(took)
            print(
                f"round {round_ + 1} {side:>6}: CPU {spent:.3f} s, wall {took:.3f} s,"
                f" new chunks {result.stats.chunks_new} of ~{size_mib}, load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    median = {side: (statistics.median(cpu[side]), statistics.median(wall[side])) for side in SIDES}
    for side in SIDES:
        print(f"median {side:>6}: CPU {median[side][0]:.3f} s, wall {median[side][1]:.3f} s")
    for side in ("eager", "native"):
        c, w = median[side][0] / median["python"][0], median[side][1] / median["python"][1]
        print(f"{side}/python: CPU {c:.3f}, wall {w:.3f}")
    c, w = median["native"][0] / median["eager"][0], median["native"][1] / median["eager"][1]
    print(f"native/eager: CPU {c:.3f}, wall {w:.3f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a directory the benchmark may delete and fill")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--edits", type=int, default=6)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.work, args.size_mib, args.rounds, args.edits)))
