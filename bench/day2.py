"""The day-2 backup alone, Strongroom against restic on the same S3 server, interleaved per run.

    uv run python bench/day2.py [--runs 3] [--quick] [--no-restic] [--tmpfs-restore] [--work DIR] [--out F]

Each run, for each engine: a fresh hard-linked copy of the day-1 tree, a full backup, a no-change
backup, the data set's day-2 change (``dataset.day2``) and the day-2 backup, each timed. For
Strongroom the agent's and the gateway's CPU seconds of the day-2 backup are recorded too, with the
gateway's commit lines ("committed point ... (receive ..., read base ..., synthesis ...)") of the
no-change and day-2 backups. The 1-minute load average is noted next to every figure: the machine
may be shared. Quicker than ``run.py`` (no disk or single-file restores), for work on the day-2
path (ADR 0034, update of session 5).
``--tmpfs-restore`` also restores the full backup into ``/dev/shm`` and times it, before day 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
import peers  # noqa: E402
from run import SR, TMPFS, _drop_bucket, fresh_copy, log, rmtree, s3_bucket  # noqa: E402
from strongroom_runner import StrongroomBench  # noqa: E402

RESTIC = "restic/s3"


def load() -> float:
    return os.getloadavg()[0]


def commit_line(logs: Path, since: int) -> str:
    """The gateway's last commit line written after byte ``since`` of its log."""
    with (logs / "gateway.log").open("rb") as f:
        f.seek(since)
        lines = [line for line in f.read().decode(errors="replace").splitlines() if "committed point" in line]
    if not lines:
        return "(no commit line)"
    found = re.search(r"committed point [^\"]*", lines[-1])  # the message, without the JSON around it
    return found.group(0) if found else lines[-1][-400:]


def log_size(logs: Path) -> int:
    path = logs / "gateway.log"
    return path.stat().st_size if path.exists() else 0


async def strongroom_run(bench: StrongroomBench, day1: Path, data: Path, tmpfs: bool) -> dict[str, object]:
    fresh_copy(day1, data)
    inst = await bench.new_instance(data, priority="high", unthrottled=True)
    try:
        full = await bench.backup(inst)
        restored: dict[str, object] = {}
        if tmpfs:
            shm = TMPFS / f"sr-day2-{uuid.uuid4().hex[:6]}"
            try:
                point = await bench.latest_point(inst, 1)
                restore_load = load()
                r = await bench.restore(inst, point, shm)
                restored = {
                    "tmpfs_s": r.wall,
                    "tmpfs_agent_cpu": r.agent_cpu,
                    "tmpfs_load": (restore_load + load()) / 2,
                }
            finally:
                rmtree(shm)
        logs = bench.work / "logs"
        since = log_size(logs)
        nochange_load = load()
        nochange = await bench.backup(inst)
        restored.update(
            nochange_s=nochange.wall,
            nochange_load=(nochange_load + load()) / 2,
            nochange_commit=commit_line(logs, since),
        )
        dataset.day2(data)
        since = log_size(logs)
        started_load = load()
        d2 = await bench.backup(inst)
        return {
            "full_s": full.wall,
            "day2_s": d2.wall,
            "agent_cpu": d2.agent_cpu,
            "gateway_cpu": d2.gateway_cpu,
            "bytes": d2.bytes_added / 1e6,
            "load": (started_load + load()) / 2,
            "at": time.strftime("%H:%M:%S"),
            "commit": commit_line(logs, since),
            **restored,
        }
    finally:
        await bench.drop_instance(inst)
        rmtree(inst.state_dir)


def restic_run(bench: StrongroomBench, day1: Path, data: Path, work: Path, tmpfs: bool) -> dict[str, object]:
    fresh_copy(day1, data)
    s3 = s3_bucket(bench, "restic")
    peer = peers.Peer("restic", work / "peer-restic-s3", s3)
    try:
        peer.init()
        full = peer.backup(data, "day1")
        restored: dict[str, object] = {}
        if tmpfs:
            shm = TMPFS / f"sr-day2-{uuid.uuid4().hex[:6]}"
            try:
                restore_load = load()
                r = peer.restore(data, "day1", shm)
                restored = {"tmpfs_s": r.wall, "tmpfs_load": (restore_load + load()) / 2}
            finally:
                rmtree(shm)
        nochange_load = load()
        nochange = peer.backup(data, "day1b")
        restored.update(nochange_s=nochange.wall, nochange_load=(nochange_load + load()) / 2)
        dataset.day2(data)
        started_load = load()
        d2 = peer.backup(data, "day2")
        return {
            "full_s": full.wall,
            "day2_s": d2.wall,
            "load": (started_load + load()) / 2,
            "at": time.strftime("%H:%M:%S"),
            **restored,
        }
    finally:
        peer.cleanup()
        _drop_bucket(bench, s3.bucket)


def _extra_table(results: dict[str, list[dict[str, object]]], key: str, title: str) -> list[str]:
    """Medians and runs of ``key`` (with its load, ``<key minus _s>_load``) per engine, and the ratio."""
    load_key = key.removesuffix("_s") + "_load"
    lines = ["", f"| engine | {title} s (median) | runs: s (load) |", "|---|---:|---|"]
    medians: dict[str, float] = {}
    for engine, runs in results.items():
        measured = [r for r in runs if key in r]
        if not measured:
            continue
        medians[engine] = statistics.median(float(r[key]) for r in measured)  # type: ignore[arg-type]
        per_run = ", ".join(f"{float(r[key]):.2f} ({float(r[load_key]):.1f})" for r in measured)  # type: ignore[arg-type]
        lines.append(f"| {engine} | {medians[engine]:.2f} | {per_run} |")
    if not medians:
        return []
    if SR in medians and RESTIC in medians:
        lines += ["", f"{title}, Strongroom / restic (medians): **{medians[SR] / medians[RESTIC]:.2f}**"]
    return lines


def report(results: dict[str, list[dict[str, object]]], header: list[str]) -> str:
    lines = ["# Day-2 backup, focused loop (bench/day2.py)", "", *header, ""]
    lines += ["| engine | day-2 s (median) | runs: day-2 s @ time (load) |", "|---|---:|---|"]
    medians: dict[str, float] = {}
    for engine, runs in results.items():
        if not runs:
            continue
        values = [float(r["day2_s"]) for r in runs]  # type: ignore[arg-type]
        medians[engine] = statistics.median(values)
        per_run = ", ".join(f"{float(r['day2_s']):.2f} @{r['at']} ({float(r['load']):.1f})" for r in runs)  # type: ignore[arg-type]
        lines.append(f"| {engine} | {medians[engine]:.2f} | {per_run} |")
    if SR in medians and RESTIC in medians:
        lines += ["", f"Strongroom / restic (medians): **{medians[SR] / medians[RESTIC]:.2f}**"]
    for key, title in (("nochange_s", "no-change backup"), ("tmpfs_s", "tmpfs restore")):
        lines += _extra_table(results, key, title)
    sr = results.get(SR, [])
    if sr:
        lines += ["", "Strongroom per run:", ""]
        lines += ["| run | full s | day-2 s | agent CPU s | gateway CPU s | MB added | gateway commit line |"]
        lines += ["|---|---:|---:|---:|---:|---:|---|"]
        for i, r in enumerate(sr, 1):
            lines.append(
                f"| {i} | {float(r['full_s']):.2f} | {float(r['day2_s']):.2f} | {float(r['agent_cpu']):.2f}"  # type: ignore[arg-type]
                f" | {float(r['gateway_cpu']):.2f} | {float(r['bytes']):.1f} | `{r['commit']}` |"  # type: ignore[arg-type]
            )
        lines += ["", "No-change commits (gateway):", ""]
        lines += [f"- run {i}: `{r['nochange_commit']}`" for i, r in enumerate(sr, 1) if "nochange_commit" in r]
    return "\n".join(lines) + "\n"


async def amain(args: argparse.Namespace) -> int:
    work: Path = args.work
    day1 = dataset.day1_tree(work, quick=args.quick)
    data = work / "data"
    engines = [SR] + ([] if args.no_restic else [RESTIC])
    if not args.no_restic:
        peers.ensure("restic")
    results: dict[str, list[dict[str, object]]] = {e: [] for e in engines}
    bench = StrongroomBench(work / "strongroom")
    log("starting PostgreSQL, Kafka, versitygw and the Strongroom services")
    await bench.start()
    header = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} cores; python: {sys.executable}",
        f"- data set: {(day1 / 'DATASET').read_text().splitlines()[0]}",
        f"- runs: {args.runs}; engines: {', '.join(engines)}; load = 1-minute load average (start/end mean)",
    ]
    try:
        for run in range(1, args.runs + 1):
            for engine in engines:
                log(f"run {run}/{args.runs}: {engine} (load {load():.1f})")
                if engine == SR:
                    results[SR].append(await strongroom_run(bench, day1, data, args.tmpfs_restore))
                else:
                    loop = asyncio.get_running_loop()
                    results[RESTIC].append(
                        await loop.run_in_executor(None, restic_run, bench, day1, data, work, args.tmpfs_restore)
                    )
                log(f"  {results[engine][-1]}")
    finally:
        await bench.stop()
        rmtree(data)
    text = report(results, header)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small data subset, for smoke testing")
    parser.add_argument("--no-restic", action="store_true")
    parser.add_argument("--tmpfs-restore", action="store_true", help="also time a full restore into /dev/shm")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "strongroom-bench")
    parser.add_argument("--out", type=Path)
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
