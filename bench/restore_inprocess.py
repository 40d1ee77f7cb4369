"""The agent's restore alone, in one process, against an in-memory gateway (ADR 0060).

    uv run python bench/restore_inprocess.py [DIR] [--quick] [--runs 3] [--target /dev/shm] [--yappi] [--gc SPEC ...]

Backs ``DIR`` (default: the benchmark's day-1 tree, ``dataset.day1_tree``, built on first use) up
into the test suite's in-memory gateway (``agent/tests/agent_fakes.py``), encodes every chunk once
as the real gateway sends it (zstd level 1), then restores the point ``--runs`` times into a fresh
directory under ``--target`` with ``run_restore``. ``ReadChunks`` answers are real
``ReadChunksResponse`` messages of at most 4 MiB, serialized and parsed again on the event loop as
the agent's gRPC client does (by protobuf, or by the revision's ``gateway_client.parse_read_chunks``
where it has one, ADR 0073), so the agent's message handling is measured too (the serialization,
the gateway's share, is included in the process CPU; it is a copy of the payload). Prints wall time, the process's CPU
time (user and system), the cyclic garbage collector's time, minor page faults, context switches
(voluntary and involuntary: a thread waiting for the GIL sleeps) and the restored file count per run;
``--agent-allocator`` applies the agent's allocator settings first (``memory.tune_allocator``: the
mmap threshold and arenas of ``memory.py``, as the agent process runs). With ``--yappi`` the last run is
profiled per thread (``uv pip install yappi`` first).

``--gc SPEC`` adds a side: this checkout's restore under other collector settings (``gc_side``).

The agent's code is whatever ``strongroom_agent`` imports: put another checkout's ``agent/src``
first on ``PYTHONPATH`` to measure it (before/after, interleaved by the caller).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import zstandard
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "agent" / "tests"))
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
from agent_fakes import FakeGateway, run_backup_command  # noqa: E402
from strongroom_agent.backup import run_backup  # noqa: E402
from strongroom_agent.exclusions import LinuxExclusions  # noqa: E402
from strongroom_agent.restore import run_restore  # noqa: E402

MESSAGE_BYTES = 4 << 20


class EncodedGateway(FakeGateway):
    """The in-memory gateway, answering ReadChunks with real messages of pre-encoded chunks."""

    encoded: dict[bytes, tuple[bytes, int]]
    per_entry = False  # read_manifest as agents before ADR 0060 take it: one entry per step
    parse: Callable[[bytes], Sequence[Any]]  # how the restoring agent's client parses a message (set per side)

    async def read_manifest(self, request: gateway_pb2.ReadManifestRequest) -> AsyncIterator[Any]:
        async for entries in super().read_manifest(request):
            if not self.per_entry:
                yield entries
                continue
            for entry in entries:
                yield entry

    def encode(self) -> None:
        compressor = zstandard.ZstdCompressor(level=1, write_content_size=True)
        self.encoded = {}
        self.parse = protobuf_chunks
        for cid, content in self.chunks.items():
            packed = compressor.compress(content)
            if len(packed) < len(content):
                self.encoded[cid] = (packed, gateway_pb2.CHUNK_COMPRESSION_ZSTD)
            else:
                self.encoded[cid] = (content, gateway_pb2.CHUNK_COMPRESSION_NONE)

    async def read_chunks(
        self, restore_job_id: str, chunk_ids: Sequence[bytes]
    ) -> AsyncIterator[gateway_pb2.ServedChunk]:  # type: ignore[override]
        self.read_chunk_calls += 1
        message = gateway_pb2.ReadChunksResponse()
        size = 0
        for cid in chunk_ids:
            data, compression = self.encoded[cid]
            message.chunks.add(chunk_id=cid, data=data, compression=compression, raw_length=len(self.chunks[cid]))
            size += len(data)
            if size >= MESSAGE_BYTES:
                for chunk in self.parse(message.SerializeToString()):
                    yield chunk
                await asyncio.sleep(0)
                message, size = gateway_pb2.ReadChunksResponse(), 0
        for chunk in self.parse(message.SerializeToString()):
            yield chunk


def protobuf_chunks(message: bytes) -> Sequence[Any]:
    """A ReadChunks message parsed by protobuf: the ``ServedChunk`` objects (agents before ADR 0073)."""
    return gateway_pb2.ReadChunksResponse.FromString(message).chunks


def parser_of(package: str) -> Callable[[bytes], Sequence[Any]]:
    """The ReadChunks message parser of the agent imported as ``package``: its own, or protobuf's."""
    client = importlib.import_module(f"{package}.gateway_client")
    parse: Callable[[bytes], Sequence[Any]] = getattr(client, "parse_read_chunks", protobuf_chunks)
    return parse


def base_restore(rev: str, into: Path) -> Callable[..., Coroutine[Any, Any, gateway_pb2.JobFinished]]:
    """``run_restore`` of the agent at ``rev``, imported as package ``strongroom_agent_base`` (same process)."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev, "agent/src/strongroom_agent"], cwd=HERE.parent, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into), "--strip-components=2"], input=archive.stdout, check=True)
    package = into / "strongroom_agent_base"
    (into / "strongroom_agent").rename(package)
    for source in package.rglob("*.py"):
        source.write_text(re.sub(r"\bstrongroom_agent\b", "strongroom_agent_base", source.read_text()))
    sys.path.insert(0, str(into))
    module = importlib.import_module("strongroom_agent_base.restore")
    restore: Callable[..., Coroutine[Any, Any, gateway_pb2.JobFinished]] = module.run_restore
    return restore


def _variant(module: Any, constant: str, value: int) -> Callable[..., Coroutine[Any, Any, gateway_pb2.JobFinished]]:
    """``run_restore`` with ``module.constant`` set to ``value`` while it runs."""

    async def restore(*args: Any, **kwargs: Any) -> gateway_pb2.JobFinished:
        old = getattr(module, constant)
        setattr(module, constant, value)
        try:
            return await run_restore(*args, **kwargs)
        finally:
            setattr(module, constant, old)

    return restore


def count_files(path: Path) -> int:
    return sum(len(files) for _d, _s, files in os.walk(path))


class GcTime:
    """Seconds the cyclic garbage collector ran, and how often, since ``reset``; per generation too."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self.by_generation = [[0, 0.0], [0, 0.0], [0, 0.0]]
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            spent = time.perf_counter() - self._start
            self.seconds += spent
            self.collections += 1
            self.by_generation[info["generation"]][0] += 1
            self.by_generation[info["generation"]][1] += spent

    def reset(self) -> None:
        self.seconds, self.collections = 0.0, 0
        self.by_generation = [[0, 0.0], [0, 0.0], [0, 0.0]]

    def detail(self) -> str:
        return ", ".join(f"gen{g} {n}x {s:.2f}s" for g, (n, s) in enumerate(self.by_generation))


def gc_side(spec: str) -> Callable[..., Coroutine[Any, Any, gateway_pb2.JobFinished]]:
    """This checkout's ``run_restore`` under other collector settings while it runs (ADR 0076).

    ``spec``: ``freeze`` (``gc.collect()`` then ``gc.freeze()`` first: the heap so far, the in-memory
    gateway's included, is never traversed again), ``T0/T1/T2`` (``gc.set_threshold``), or both
    joined by ``+``.
    """

    async def restore(*args: Any, **kwargs: Any) -> gateway_pb2.JobFinished:
        thresholds = gc.get_threshold()
        freeze = False
        for part in spec.split("+"):
            if part == "freeze":
                freeze = True
            else:
                t0, t1, t2 = (int(v) for v in part.split("/"))
                gc.set_threshold(t0, t1, t2)
        if freeze:
            gc.collect()
            gc.freeze()
        try:
            return await run_restore(*args, **kwargs)
        finally:
            gc.set_threshold(*thresholds)
            if freeze:
                gc.unfreeze()

    return restore


async def amain(args: argparse.Namespace) -> int:
    if args.agent_allocator:
        from strongroom_agent.memory import tune_allocator

        print(f"agent allocator settings applied: {tune_allocator()}", flush=True)
    gc_time = GcTime()
    if args.dir is None:
        args.dir = dataset.day1_tree(args.work, quick=args.quick)
    gateway = EncodedGateway()
    fs = common_pb2.Filesystem(mount_point=str(args.dir), device="/dev/vdz", fs_type="ext4")
    t0 = time.perf_counter()
    command = run_backup_command()
    # The benchmark's chunker (bench/README.md), not the test suite's small chunks.
    command.repository.chunker_min_size = 256 << 10
    command.repository.chunker_avg_size = 1 << 20
    command.repository.chunker_max_size = 4 << 20
    finished = await run_backup(
        command, client=gateway, points=[fs], exclusions=LinuxExclusions(), cancel=asyncio.Event()
    )
    if finished.status != common_pb2.JOB_STATUS_COMPLETE:
        raise RuntimeError(f"backup ended {finished.status}: {finished.error}")
    gateway.encode()
    point_id = gateway.only_point().point_id
    print(f"backup + encode {time.perf_counter() - t0:.1f}s, {len(gateway.chunks)} chunks", flush=True)
    source = count_files(args.dir)
    sides: list[tuple[str, Callable[..., Coroutine[Any, Any, gateway_pb2.JobFinished]]]] = [("this", run_restore)]
    parsers = {"this": parser_of("strongroom_agent")}
    if args.base:
        sides.insert(0, (args.base, base_restore(args.base, args.target / "restore-inprocess-base")))
        parsers[args.base] = parser_of("strongroom_agent_base")
    for setting in args.variant:  # MODULE.NAME=VALUE: this checkout's code with one constant changed
        name, _, value = setting.partition("=")
        module_name, _, constant = name.rpartition(".")
        sides.append(
            (
                setting,
                _variant(importlib.import_module(f"strongroom_agent.restore.{module_name}"), constant, int(value)),
            )
        )
    for spec in args.gc:
        sides.append((f"gc {spec}", gc_side(spec)))
    figures: dict[str, list[tuple[float, float, float]]] = {side: [] for side, _ in sides}
    for n, (side, restore) in ((n, side) for n in range(args.runs) for side in sides):
        target = args.target / f"restore-inprocess-{uuid.uuid4().hex[:6]}"
        target.mkdir()
        profile = args.yappi and n == args.runs - 1 and side == "this"
        if profile:
            import yappi  # type: ignore[import-not-found]

            yappi.set_clock_type("cpu")
            yappi.start()
        load = os.getloadavg()[0]
        gc_time.reset()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        command = gateway_pb2.RunRestore(
            restore_job_id="r-1",
            point_id=point_id,
            target_path=str(target),
            conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE,
        )
        gateway.per_entry = side == args.base and args.per_entry_base
        gateway.parse = parsers.get(side, parsers["this"])
        done = await restore(command, client=gateway, cancel=asyncio.Event())
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        user, system = usage.ru_utime - usage0.ru_utime, usage.ru_stime - usage0.ru_stime
        faults = usage.ru_minflt - usage0.ru_minflt
        switches = usage.ru_nvcsw - usage0.ru_nvcsw + usage.ru_nivcsw - usage0.ru_nivcsw
        if profile:
            yappi.stop()
            columns = {0: ("name", 90), 1: ("ncall", 9), 2: ("tsub", 8), 3: ("ttot", 8), 4: ("tavg", 8)}
            yappi.get_func_stats().sort("tsub").print_all(out=sys.stdout, columns=columns)
            yappi.get_thread_stats().print_all()
        figures[side].append((cpu, wall, system))
        restored = count_files(target)
        shutil.rmtree(target)
        status = common_pb2.JobStatus.Name(done.status)
        print(
            f"run {n + 1} {side}: wall {wall:.2f}s, CPU {cpu:.2f}s (user {user:.2f}, sys {system:.2f}),"
            f" gc {gc_time.seconds:.2f}s ({gc_time.detail()}), {faults} minor faults,"
            f" {switches} context switches, {restored}/{source} files, {status}"
            f" (load {load:.1f} -> {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    for side, runs in figures.items():
        cpu, wall, system = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"median {side}: CPU {cpu:.2f}s (sys {system:.2f}), wall {wall:.2f}s over {len(runs)} runs")
    reference = args.base or "this"
    base_cpu = statistics.median(r[0] for r in figures[reference])
    base_wall = statistics.median(r[1] for r in figures[reference])
    for side, runs in figures.items():
        if side != reference:
            cpu, wall = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            print(f"{side} / {reference}: CPU {cpu / base_cpu:.2f}, wall {wall / base_wall:.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, nargs="?", help="the tree to back up and restore (default: the day-1 tree)")
    parser.add_argument("--quick", action="store_true", help="the quick day-1 tree (without DIR)")
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "strongroom-bench"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--target", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--yappi", action="store_true")
    parser.add_argument("--agent-allocator", action="store_true", help="the agent's malloc settings (memory.py)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="job.BATCHES_IN_FLIGHT=3 (a constant of strongroom_agent.restore): one more side",
    )
    parser.add_argument(
        "--gc",
        action="append",
        default=[],
        metavar="SPEC",
        help="one more side: this checkout under collector settings (freeze, T0/T1/T2, or freeze+T0/T1/T2)",
    )
    parser.add_argument(
        "--per-entry-base", action="store_true", help="the base agent takes read_manifest one entry at a time"
    )
    parser.add_argument("--base", help="also restore with the agent of this revision, alternating (A, B, A, B)")
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
