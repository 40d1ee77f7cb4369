"""The agent's no-change backup in one process, against an in-memory gateway: wall and CPU seconds per run.

    uv run python bench/nochange_agent.py --data DIR [--runs 5] [--state DIR] [--pause S]

A full backup of ``--data`` (the in-memory gateway of the agent's tests, ``agent/tests/agent_fakes.py``,
with the benchmark's chunker sizes), then ``--runs`` no-change backups with the cache in ``--state``.
The no-change commits go to a gateway stand-in that only counts what it receives (the real gateway's
commit is measured by ``run.py`` / ``day2.py``), so the CPU seconds printed are the agent's own: the
walk, the cache comparison, the new cache and the spool. Each line has the 1-minute load average and
the process's peak RSS during that backup.
``--pause S`` sleeps S seconds after the full backup and prints the pid first (to attach py-spy).
To compare with another checkout's agent, put its ``agent/src`` first on ``PYTHONPATH`` (ADR 0059).
``--ab`` alternates the Python path and the native extension's (``STRONGROOM_AGENT_NATIVE``'s two sides:
the native walk of ADR 0085 and the small-file reader of ADR 0080) run by run, and prints each side's
median wall and CPU seconds and their ratios, measured in this invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "agent" / "tests"))

from agent_fakes import KEY, FakeGateway  # noqa: E402
from strongroom.agent.v1 import gateway_pb2  # noqa: E402
from strongroom.common.v1 import common_pb2  # noqa: E402
from strongroom_agent.backup import native, run_backup  # noqa: E402
from strongroom_agent.exclusions import LinuxExclusions  # noqa: E402

Request = gateway_pb2.CommitPointRequest
REPOSITORY = gateway_pb2.RepositoryParameters(
    chunker_min_size=256 << 10, chunker_avg_size=1 << 20, chunker_max_size=4 << 20, chunk_id_key=KEY, chunker_seed=7
)


def peak_rss_mb() -> float:
    """This process's peak RSS since the last ``reset_peak_rss`` (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not permitted: the peak is then since the process started


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def backup(
    gateway: FakeGateway, root: str, state: str, job: str, native_files: native.NativeExtension | None = None
) -> gateway_pb2.JobFinished:
    command = gateway_pb2.RunBackup(job_id=job, max_cores=2, accepts_base_point=True)
    command.repository.CopyFrom(REPOSITORY)
    point = common_pb2.Filesystem(mount_point=root, device="bench", fs_type="ext4", capacity_bytes=1 << 40)
    return await run_backup(
        command,
        client=gateway,
        points=[point],
        exclusions=LinuxExclusions(),
        cancel=asyncio.Event(),
        state_dir=state,
        native=native_files,
    )


async def main(data: str, state: str, runs: int, pause: float, ab: bool) -> int:
    native_files = native.load()
    if ab and native_files is None:
        raise SystemExit("--ab needs the native extension: make native")
    shutil.rmtree(state, ignore_errors=True)
    gateway = FakeGateway(key=KEY)
    started = time.perf_counter()
    full = await backup(gateway, data, state, "job-0")
    print(f"full backup: {time.perf_counter() - started:.2f} s, {full.stats.files_scanned} entries", flush=True)
    gateway.chunks = dict.fromkeys(gateway.chunks, b"")  # the content is not needed any more
    commits = 0

    async def counting_commit(
        requests: AsyncIterator[gateway_pb2.CommitPointRequest],
    ) -> gateway_pb2.CommitPointResponse:
        nonlocal commits
        header = (await anext(requests)).header
        sent = deleted = 0
        async for request in requests:
            sent += len(request.entries.entries)
            deleted += len(request.entries.deleted_paths)
        if not header.base_point_id or sent or deleted:
            raise SystemExit(f"not a no-change commit: base {header.base_point_id!r}, {sent} sent, {deleted} deleted")
        commits += 1
        return gateway_pb2.CommitPointResponse(point_id=f"nochange-{commits}")

    gateway.commit_point = counting_commit  # type: ignore[method-assign]
    if pause:
        print(f"pid {os.getpid()}", flush=True)
        await asyncio.sleep(pause)
    sides: dict[str, list[tuple[float, float]]] = {"python": [], "native": []}
    for run in range(runs):
        side = ("python", "native")[run % 2] if ab else "default"
        files = native_files if side == "native" else None
        reset_peak_rss()
        cpu, started = cpu_seconds(), time.perf_counter()
        result = await backup(gateway, data, state, f"job-{run + 1}", files)
        wall = time.perf_counter() - started
        spent = cpu_seconds() - cpu
        sides.setdefault(side, []).append((wall, spent))
        print(
            f"no-change {run + 1} ({side}): wall {wall:.3f} s, CPU {spent:.3f} s, peak RSS {peak_rss_mb():.1f} MB,"
            f" files read {result.stats.files_read}, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    if ab and sides["python"] and sides["native"]:
        medians = {
            side: (statistics.median(w for w, _ in runs_), statistics.median(c for _, c in runs_))
            for side, runs_ in sides.items()
            if runs_
        }
        (pw, pc), (nw, nc) = medians["python"], medians["native"]
        print(
            f"median python: wall {pw:.3f} s, CPU {pc:.3f} s; native: wall {nw:.3f} s, CPU {nc:.3f} s;"
            f" native/python wall {nw / pw:.3f}, CPU {nc / pc:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--state", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "strongroom-nochange-state"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--ab", action="store_true", help="alternate the Python and the native path, run by run")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.data, args.state, args.runs, args.pause, args.ab)))
