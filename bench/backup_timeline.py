"""Where the cores go during one full backup: CPU per process (and per agent/gateway thread) every 0.25 s.

    python bench/backup_timeline.py --data DIR --work DIR [--s3-tls] [--every 0.25] [--out FILE]

Starts the stack of THIS checkout (as ``full_backup_once.py``), backs up ``--data`` once (HIGH,
unthrottled) and samples ``/proc/<pid>/stat`` of the agent, the gateway, versitygw and PostgreSQL
(the postmaster and all its backends) every ``--every`` seconds while the job runs. The agent's and
the gateway's threads are split into the event-loop thread (the main thread) and the others
(the worker pool, gRPC's and asyncpg's threads), so a phase where the loop is saturated and the
workers idle shows as such. Prints a table of phases (one row per second: cores busy per process)
and a summary: how long fewer than ``--busy`` cores were busy, and which process was busy then.
``--out`` also writes every sample as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from strongroom_runner import StrongroomBench  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: Path) -> list[str] | None:
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _cpu(fields: list[str]) -> float:
    # After the ")": state is field 0, utime field 11, stime field 12 (proc(5) fields 14 and 15).
    return (int(fields[11]) + int(fields[12])) / TICKS


def process_cpu(pid: int) -> float:
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return _cpu(fields) if fields else 0.0


def threads_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the main thread (the event loop) and of all other threads of ``pid``.

    The others are the process's total less the main thread's: a thread that exited keeps counting.
    """
    main = _stat_fields(Path(f"/proc/{pid}/task/{pid}/stat"))
    if main is None:
        return 0.0, 0.0
    return _cpu(main), process_cpu(pid) - _cpu(main)


def children(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(Path(f"/proc/{name}/stat"))
        if fields is not None and int(fields[1]) == ppid:
            out.append(int(name))
    return out


def find_pid(program: str, under: str) -> int | None:
    """The process running ``program`` (its argv[0]'s name) whose command line names ``under`` (the work dir).

    Not its watchdog, which names both in its arguments but runs Python.
    """
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if argv and os.path.basename(argv[0]) == program and any(under in arg for arg in argv):
            return int(name)
    return None


@dataclass
class Sampler:
    """Cumulative CPU seconds per series; PostgreSQL's backends are summed (they come and go)."""

    agent: int
    gateway: int
    versitygw: int | None
    postmaster: int | None
    pg_seen: dict[int, float] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        agent_loop, agent_threads = threads_cpu(self.agent)
        gw_loop, gw_threads = threads_cpu(self.gateway)
        out = {
            "agent_loop": agent_loop,
            "agent_threads": agent_threads,
            "gateway_loop": gw_loop,
            "gateway_threads": gw_threads,
            "versitygw": process_cpu(self.versitygw) if self.versitygw else 0.0,
        }
        if self.postmaster:
            for pid in [self.postmaster, *children(self.postmaster)]:
                fields = _stat_fields(Path(f"/proc/{pid}/stat"))
                if fields is not None:
                    self.pg_seen[pid] = _cpu(fields)  # a backend that exits keeps its last figure
            out["postgres"] = sum(self.pg_seen.values())
        else:
            out["postgres"] = 0.0
        with open("/proc/stat") as f:
            cpu = f.readline().split()[1:]
        out["machine"] = sum(int(v) for i, v in enumerate(cpu) if i not in (3, 4)) / TICKS  # all but idle, iowait
        return out


SERIES = ("agent_loop", "agent_threads", "gateway_loop", "gateway_threads", "versitygw", "postgres")


def rates(samples: list[tuple[float, dict[str, float]]]) -> list[tuple[float, dict[str, float]]]:
    """Cores busy per series between consecutive samples."""
    out = []
    for (t0, a), (t1, b) in zip(samples, samples[1:], strict=False):
        dt = t1 - t0
        if dt > 0:
            out.append((t1, {k: (b[k] - a[k]) / dt for k in b}))
    return out


def per_second(busy: list[tuple[float, dict[str, float]]]) -> Iterable[tuple[int, dict[str, float]]]:
    buckets: dict[int, list[dict[str, float]]] = {}
    for t, row in busy:
        buckets.setdefault(int(t), []).append(row)
    for second in sorted(buckets):
        rows = buckets[second]
        yield second, {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def report(
    busy: list[tuple[float, dict[str, float]]],
    every: float,
    threshold: float,
    pipeline: dict[int, dict[str, float]],
) -> str:
    lines = [
        "| s | agent loop | agent threads | gateway loop | gateway threads | versitygw | postgres | ours | machine "
        "| budget MiB | budget waiters | wire MiB | wire waiters | reading | compressing | uploading | upload queue |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for second, row in per_second(busy):
        ours = sum(row[k] for k in SERIES)
        cells = " | ".join(f"{row[k]:.2f}" for k in SERIES)
        agent = pipeline.get(second)
        state = (
            f"{agent['budget_used'] / (1 << 20):.1f} | {agent['budget_waiting']:.1f} | "
            f"{agent['wire_used'] / (1 << 20):.1f} | " + " | ".join(f"{agent[k]:.1f}" for k in PIPELINE[3:])
            if agent
            else " | ".join("" for _ in PIPELINE)
        )
        lines.append(f"| {second} | {cells} | {ours:.2f} | {row['machine']:.2f} | {state} |")
    total = len(busy) * every
    low = [(t, r) for t, r in busy if sum(r[k] for k in SERIES) < threshold]
    lines.append("")
    lines.append(
        f"{len(low) * every:.1f} s of {total:.1f} s with fewer than {threshold:.1f} of our cores busy; "
        "mean cores busy over all samples: "
        + ", ".join(f"{k} {sum(r[k] for _, r in busy) / max(len(busy), 1):.2f}" for k in SERIES)
    )
    if low:
        lines.append(
            "mean cores busy in those samples: "
            + ", ".join(f"{k} {sum(r[k] for _, r in low) / len(low):.2f}" for k in SERIES)
        )
    return "\n".join(lines)


# The wire budget (ADR 0068) is absent from older agents' traces: 0 there.
PIPELINE = (
    "budget_used",
    "budget_waiting",
    "wire_used",
    "wire_waiting",
    "reading",
    "compressing",
    "uploading",
    "upload_queue",
)


def pipeline_per_second(trace: Path, wall_start: float) -> dict[int, dict[str, float]]:
    """The agent's pipeline samples (``STRONGROOM_BACKUP_TRACE``), averaged per second of the run."""
    buckets: dict[int, list[dict[str, float]]] = {}
    if trace.exists():
        for line in trace.read_text().splitlines():
            row = json.loads(line)
            buckets.setdefault(int(row["t"] - wall_start), []).append(row)
    return {s: {k: sum(r.get(k, 0) for r in rows) / len(rows) for k in PIPELINE} for s, rows in buckets.items()}


async def main(args: argparse.Namespace) -> None:
    trace = args.work / "pipeline.jsonl"
    trace.unlink(missing_ok=True)
    os.environ["STRONGROOM_BACKUP_TRACE"] = str(trace)  # the agent's pipeline probe (backup/probe.py)
    bench = StrongroomBench(args.work, s3_tls=args.s3_tls)
    await bench.start(unthrottled_gateway=True)
    try:
        inst = await bench.new_instance(args.data, priority="high", unthrottled=True)
        try:
            work = str(args.work)
            sampler = Sampler(
                agent=inst.agent.process.pid,
                gateway=bench.gateway_pid,
                versitygw=find_pid("versitygw", work),
                postmaster=find_pid("postgres", work),
            )
            samples: list[tuple[float, dict[str, float]]] = []
            wall_start = time.time()
            start = time.perf_counter()
            backup = asyncio.create_task(bench.backup(inst))
            while not backup.done():
                samples.append((time.perf_counter() - start, sampler.sample()))
                await asyncio.sleep(args.every)
            result = await backup
            samples.append((time.perf_counter() - start, sampler.sample()))
        finally:
            await bench.drop_instance(inst)
            shutil.rmtree(inst.state_dir, ignore_errors=True)
    finally:
        await bench.stop()
    busy = rates(samples)
    if args.out:
        rows = (json.dumps({"t": round(t, 3), **{k: round(v, 3) for k, v in row.items()}}) for t, row in busy)
        args.out.write_text("".join(row + "\n" for row in rows))
    print(
        f"full backup {result.wall:.2f} s, agent CPU {result.agent_cpu:.2f} s, gateway CPU {result.gateway_cpu:.2f} s, "
        f"peak RSS {result.agent_peak_rss / 1e6:.1f} MB, load {os.getloadavg()[0]:.2f}"
    )
    print(report(busy, args.every, args.busy, pipeline_per_second(trace, wall_start)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--s3-tls", action="store_true", help="S3 over HTTPS, as run.py --s3-tls")
    parser.add_argument("--every", type=float, default=0.25, help="seconds between samples")
    parser.add_argument("--busy", type=float, default=1.8, help="cores: a sample below this counts as idle")
    parser.add_argument("--out", type=Path, help="every sample as JSON lines")
    asyncio.run(main(parser.parse_args()))
