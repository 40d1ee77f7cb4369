"""Where Strongroom's time goes: py-spy on the agent and the gateway during a full backup and a restore.

    uv run python bench/profile.py [--quick] [--source DIR] [--out DIR]

Starts the same servers and services as run.py, backs up the data set once (unthrottled agent) and
restores it into tmpfs, with ``py-spy record --format raw --threads`` (on-CPU samples only) attached to the agent and
gateway processes for each job. Prints, per process and job, the top functions by *self* samples and
by *inclusive* samples (share of on-CPU samples; a thread blocked in a system call is not
sampled). Raw collapsed stacks are kept in ``--out`` for
flame graphs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
from strongroom_runner import StrongroomBench  # noqa: E402


def pyspy() -> list[str]:
    exe = shutil.which("py-spy")
    if exe:
        return [exe]
    # `make` bootstraps uv into .bootstrap/ when the machine has none on PATH.
    uv = shutil.which("uv") or str(HERE.parent / ".bootstrap" / "bin" / "uv")
    return [uv, "run", "--no-project", "--with", "py-spy", "py-spy"]


def start_record(pid: int, out: Path, rate: int, *, native: bool = False) -> subprocess.Popen[bytes]:
    argv = [*pyspy(), "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate)]
    argv += ["--threads", "--output", str(out)]
    # --native: C frames too (hashing, AES, zstd, TLS); py-spy must pause the process to unwind them.
    argv.append("--native" if native else "--nonblocking")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_record(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py:123)"
    if "(" in frame and frame.endswith(")"):
        name, loc = frame.rsplit(" (", 1)
        return f"{name} ({os.path.basename(loc[:-1])})"
    return frame


def summarize(raw: Path, top: int = 15) -> str:
    self_count: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    if not raw.exists():
        return f"(no samples: {raw} missing)"
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        leaf = _short(frames[-1])
        self_count[leaf] += count
        for f in set(map(_short, frames[1:])):
            incl[f] += count
    if not total:
        return "(no samples)"
    lines = [f"samples: {total}", "", "self (top):"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_count.most_common(top)]
    lines += ["", "inclusive (top):"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top)]
    lines += ["", "threads:"]
    lines += [f"  {100 * c / total:5.1f}%  {t}" for t, c in threads.most_common(8)]
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> int:
    work: Path = args.work
    source = args.source
    if source is None:
        source = work / ("day1-quick" if args.quick else "day1")
        if not source.exists():
            dataset.build(source, quick=args.quick)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    bench = StrongroomBench(work / "strongroom-profile", s3_tls=args.s3_tls)
    await bench.start()
    report = []
    try:
        inst = await bench.new_instance(source, priority="high", unthrottled=True)
        jobs = [("backup", None)]
        if not args.backup_only:
            jobs.append(("restore", TMPFS_DIR / f"sr-profile-{uuid.uuid4().hex[:6]}"))
        point = ""
        for job, target in jobs:
            recs = {
                name: start_record(pid, out / f"{job}-{name}.raw", args.rate, native=args.native)
                for name, pid in (("agent", inst.agent.process.pid), ("gateway", bench.gateway_pid))
            }
            await asyncio.sleep(1.0)  # let py-spy attach
            try:
                if job == "backup":
                    r = await bench.backup(inst)
                    point = await bench.latest_point(inst, 1)
                else:
                    assert target is not None
                    r = await bench.restore(inst, point, target)
            finally:
                for proc in recs.values():
                    stop_record(proc)
                if target is not None:
                    shutil.rmtree(target, ignore_errors=True)
            head = (
                f"## {job}: {r.wall:.1f}s wall, agent CPU {r.agent_cpu:.1f}s, gateway CPU {r.gateway_cpu:.1f}s, "
                f"agent peak RSS {r.agent_peak_rss / 1e6:.0f} MB"
            )
            report.append(head)
            for name in recs:
                report += [f"\n### {job} / {name}\n", "```", summarize(out / f"{job}-{name}.raw"), "```"]
    finally:
        await bench.stop()
    text = "\n".join(report)
    print(text)
    (out / "summary.md").write_text(text + "\n")
    return 0


TMPFS_DIR = Path("/dev/shm")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--source", type=Path)
    parser.add_argument("--backup-only", action="store_true")
    parser.add_argument("--s3-tls", action="store_true", help="S3 over HTTPS, as run.py --s3-tls")
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames in the stacks")
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "strongroom-bench")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "strongroom-profile")
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
