"""One command for the whole benchmark: Strongroom against restic, kopia, rustic and borg.

    uv run python bench/run.py [--quick] [--runs 3] [--peers restic,kopia,rustic,borg]
                               [--targets s3,local] [--throttle-seconds 60] [--scale N]

See bench/README.md for what each metric means and how medians and ratios are computed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _pagecache  # noqa: E402
import dataset  # noqa: E402
import peers  # noqa: E402
from strongroom.scheduler.v1 import scheduler_pb2  # noqa: E402
from strongroom_runner import StrongroomBench, cpu_seconds, peak_rss  # noqa: E402

SR = "strongroom"
TMPFS = Path("/dev/shm")

# metric -> (title, unit, lower is better)
METRICS = {
    "full_s": ("Full backup, wall time", "s"),
    "nochange_s": ("No-change backup, wall time", "s"),
    "day2_s": ("Day-2 backup, wall time", "s"),
    "day2_bytes": ("Day-2 bytes added to storage", "MB"),
    "stored_bytes": ("Stored bytes after the full backup", "MB"),
    "restore_disk_s": ("Full restore onto disk, wall time", "s"),
    "restore_tmpfs_s": ("Full restore into tmpfs, wall time", "s"),
    "single_s": ("Single-file restore, wall time", "s"),
    "backup_rss": ("Peak RSS during the full backup (agent / peer process)", "MB"),
    "restore_rss": ("Peak RSS during the full restore (agent / peer process)", "MB"),
    "full_cpu": ("CPU time of the full backup (agent [+ gateway] / peer process)", "s"),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fresh_copy(day1: Path, data: Path, cache: str | None = None) -> str:
    """A hard-linked copy of the day-1 tree at the same path for every engine (day 2 never writes in place).

    With ``cache`` (one of ``_pagecache.MODES``) the copy is then put in that page-cache state, the
    same for every engine, and the return value says what was found and left.
    """
    if data.exists():
        shutil.rmtree(data)
    subprocess.run(["cp", "-al", str(day1), str(data)], check=True)
    # Hard-linking sets every file's ctime to "now". Strongroom's agent does not trust the cache for
    # a file changed within 2 s before a scan (PipelineLimits.racy_window_ns: its timestamps may not
    # show a later change yet) and reads it again at the next backup; a tree that was entirely
    # rewritten a moment ago is not what a server looks like. Untimed, for every engine alike.
    time.sleep(3)
    return _pagecache.prepare(data, cache) if cache else ""


def pick_single_file(root: Path) -> str:
    """A deterministic mid-sized source file (relative path) for the single-file restore."""
    for dirpath, dirnames, files in os.walk(root / "src"):
        dirnames.sort()
        for name in sorted(files):
            p = Path(dirpath) / name
            if 64 << 10 <= p.stat().st_size <= 1 << 20:
                return str(p.relative_to(root))
    raise SystemExit("no file between 64 KiB and 1 MiB in the data set")


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def settle() -> None:
    """Write back every dirty page before a timed phase, untimed, for every engine alike.

    Without it a phase pays for the write-back of whatever ran before it (the S3 server's objects of the
    full backup, the previous restore): the disk restore's runs spread over 15-27 s for the same engine.
    """
    os.sync()


def count_files(path: Path) -> int:
    return sum(len(files) for _d, _s, files in os.walk(path))


class Recorder:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.notes: list[str] = []

    def add(self, engine: str, metric: str, value: float) -> None:
        self.values[metric][engine].append(value)
        log(f"  {engine:16s} {metric:16s} {value:,.3f}")


# ---------------------------------------------------------------- one run per engine


async def run_strongroom(
    bench: StrongroomBench, day1: Path, data: Path, work: Path, single: str, rec: Recorder, check: bool, cache: str
) -> None:
    rec.notes.append(f"{SR} page cache before the full backup: {fresh_copy(day1, data, cache)}")
    inst = await bench.new_instance(data, priority="high", unthrottled=True)
    try:
        settle()
        full = await bench.backup(inst)
        rec.add(SR, "full_s", full.wall)
        rec.add(SR, "stored_bytes", full.bytes_added / 1e6)
        rec.add(SR, "backup_rss", full.agent_peak_rss / 1e6)
        rec.add(SR, "full_cpu", full.agent_cpu + full.gateway_cpu)
        rec.add(SR, "full_cpu_agent", full.agent_cpu)
        rec.add(SR, "full_cpu_gateway", full.gateway_cpu)
        point = await bench.latest_point(inst, 1)
        settle()
        nochange = await bench.backup(inst)
        rec.add(SR, "nochange_s", nochange.wall)
        if nochange.stats is not None:
            rec.notes.append(
                f"strongroom no-change backup: {nochange.stats.files_read} files read,"
                f" {nochange.stats.files_unchanged} taken from the cache"
            )
        disk = work / "restore-disk"
        rmtree(disk)
        settle()
        r = await bench.restore(inst, point, disk)
        rec.add(SR, "restore_disk_s", r.wall)
        rec.add(SR, "restore_rss", r.agent_peak_rss / 1e6)
        if check:
            rec.notes.append(f"strongroom restore file count: {count_files(disk)} (source {count_files(data)})")
        rmtree(disk)
        shm = TMPFS / f"sr-bench-{uuid.uuid4().hex[:6]}"
        try:
            settle()
            r = await bench.restore(inst, point, shm)
            rec.add(SR, "restore_tmpfs_s", r.wall)
        finally:
            rmtree(shm)
        shm = TMPFS / f"sr-bench-{uuid.uuid4().hex[:6]}"
        try:
            settle()
            r = await bench.restore(inst, point, shm, include=[single])
            rec.add(SR, "single_s", r.wall)
            if (shm / single).read_bytes() != (data / single).read_bytes():
                raise RuntimeError("strongroom single-file restore differs")
        finally:
            rmtree(shm)
        dataset.day2(data)
        settle()
        d2 = await bench.backup(inst)
        rec.add(SR, "day2_s", d2.wall)
        rec.add(SR, "day2_bytes", d2.bytes_added / 1e6)
    finally:
        await bench.drop_instance(inst)
        rmtree(inst.state_dir)


def s3_bucket(bench: StrongroomBench, tool: str) -> peers.S3Target:
    assert bench.s3 is not None
    bucket = f"{tool}-{uuid.uuid4().hex[:8]}"
    bench.minio().make_bucket(bucket)
    return peers.S3Target(bench.s3.endpoint, bench.s3.access_key, bench.s3.secret_key, bucket, bench.s3_ca_file)


def bucket_bytes(bench: StrongroomBench, bucket: str) -> int:
    return sum(o.size or 0 for o in bench.minio().list_objects(bucket, recursive=True))


def run_peer(
    bench: StrongroomBench,
    tool: str,
    target: str,
    day1: Path,
    data: Path,
    work: Path,
    single: str,
    rec: Recorder,
    cache: str,
) -> None:
    engine = f"{tool}/{target}"
    rec.notes.append(f"{engine} page cache before the full backup: {fresh_copy(day1, data, cache)}")
    s3 = s3_bucket(bench, tool) if target == "s3" else None
    peer = peers.Peer(tool, work / f"peer-{tool}-{target}", s3)

    def stored() -> int:
        return bucket_bytes(bench, s3.bucket) if s3 else peer.local_bytes()

    try:
        peer.init()
        base = stored()
        settle()
        full = peer.backup(data, "day1")
        after_full = stored()
        rec.add(engine, "full_s", full.wall)
        rec.add(engine, "stored_bytes", (after_full - base) / 1e6)
        rec.add(engine, "backup_rss", full.peak_rss / 1e6)
        rec.add(engine, "full_cpu", full.cpu)
        settle()
        nochange = peer.backup(data, "day1b")
        rec.add(engine, "nochange_s", nochange.wall)
        disk = work / "restore-disk"
        rmtree(disk)
        settle()
        r = peer.restore(data, "day1", disk)
        rec.add(engine, "restore_disk_s", r.wall)
        rec.add(engine, "restore_rss", r.peak_rss / 1e6)
        rmtree(disk)
        shm = TMPFS / f"sr-bench-{uuid.uuid4().hex[:6]}"
        try:
            settle()
            r = peer.restore(data, "day1", shm)
            rec.add(engine, "restore_tmpfs_s", r.wall)
        finally:
            rmtree(shm)
        shm = TMPFS / f"sr-bench-{uuid.uuid4().hex[:6]}"
        try:
            settle()
            r = peer.restore(data, "day1", shm, include=single)
            rec.add(engine, "single_s", r.wall)
            found = [p for p in shm.rglob(Path(single).name) if p.is_file()]
            if not found or found[0].read_bytes() != (data / single).read_bytes():
                raise RuntimeError(f"{engine} single-file restore: file not found or differs")
        finally:
            rmtree(shm)
        dataset.day2(data)
        before = stored()
        settle()
        d2 = peer.backup(data, "day2")
        rec.add(engine, "day2_s", d2.wall)
        rec.add(engine, "day2_bytes", (stored() - before) / 1e6)
    finally:
        peer.cleanup()
        if s3:
            _drop_bucket(bench, s3.bucket)


def _drop_bucket(bench: StrongroomBench, bucket: str) -> None:
    client = bench.minio()
    try:
        for obj in client.list_objects(bucket, recursive=True):
            client.remove_object(bucket, obj.object_name)
        client.remove_bucket(bucket)
    except Exception as exc:  # leftovers only cost disk space
        log(f"could not drop bucket {bucket}: {exc}")


# ---------------------------------------------------------------- tables


def fmt(value: float, unit: str) -> str:
    if unit == "MB":
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def tables(rec: Recorder, engines: list[str]) -> str:
    out = []
    for metric, (title, unit) in METRICS.items():
        values = rec.values.get(metric)
        if not values:
            continue
        sr = statistics.median(values[SR]) if values.get(SR) else None
        out.append(f"### {title} ({unit}, median of runs)\n")
        out.append("| engine | median | runs | min | max | Strongroom / engine |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for engine in engines:
            vals = values.get(engine)
            if not vals:
                continue
            med = statistics.median(vals)
            ratio = f"{sr / med:.2f}" if sr is not None and med > 0 and engine != SR else "—"
            lo, hi = fmt(min(vals), unit), fmt(max(vals), unit)
            out.append(f"| {engine} | {fmt(med, unit)} | {len(vals)} | {lo} | {hi} | {ratio} |")
        out.append("")
    extra = {m: v for m, v in rec.values.items() if m.startswith("full_cpu_")}
    if extra:
        out.append("### Strongroom full-backup CPU split (s, median)\n")
        for m, v in extra.items():
            out.append(f"- {m}: {statistics.median(v[SR]):.1f}")
        out.append("")
    return "\n".join(out)


def render(
    header: list[str], rec: Recorder, engines: list[str], throttle: list[str], scale: list[str], partial: str = ""
) -> str:
    report = ["## Benchmark" + (f" (partial, {partial})" if partial else ""), "", *header, "", tables(rec, engines)]
    if throttle:
        report += [
            "### Throttle (Strongroom stock agent, MB/s = bytes read by the agent / wall time)\n",
            "| priority | MB/s | 10 s windows min – max MB/s | cores (agent CPU / wall) | seconds |",
            "|---|---:|---|---:|---:|",
            *throttle,
            "",
        ]
    if scale:
        report += ["### Scale run\n", *scale, ""]
    if rec.notes:
        report += ["### Notes\n", *[f"- {n}" for n in rec.notes], ""]
    return "\n".join(report)


def save(args: argparse.Namespace, work: Path, text: str, rec: Recorder) -> None:
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    (work / "raw.json").write_text(json.dumps({m: dict(v) for m, v in rec.values.items()}, indent=1))


# ---------------------------------------------------------------- main


async def amain(args: argparse.Namespace) -> int:
    work: Path = args.work
    day1 = dataset.day1_tree(work, quick=args.quick)
    data = work / "data"
    single = pick_single_file(day1)
    files = count_files(day1)
    size = sum(os.lstat(os.path.join(d, f)).st_size for d, _s, fs in os.walk(day1) for f in fs)

    throttle_lines: list[str] = []
    scale_lines: list[str] = []
    available = []
    versions = {}
    for tool in [t for t in args.peers.split(",") if t]:
        try:
            peers.ensure(tool)
            versions[tool] = peers.version_of(tool)
            available.append(tool)
        except Exception as exc:
            log(f"peer {tool} not available, continuing without it: {exc}")
            versions[tool] = f"NOT AVAILABLE ({str(exc).splitlines()[0][:120]})"
    targets = [t for t in args.targets.split(",") if t]
    engines = [SR] + [f"{t}/{tg}" for t in available for tg in targets if not (t == "borg" and tg == "s3")]

    rec = Recorder()
    bench = StrongroomBench(work / "strongroom", s3_tls=args.s3_tls)
    log("starting PostgreSQL, Kafka, versitygw and the Strongroom services")
    await bench.start()
    header = []
    try:
        versions.update(bench.server_versions())
        header += [
            f"- date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, {platform.platform()}",
            f"- data set: {(day1 / 'DATASET').read_text().splitlines()[0]}; {files:,} files, {size / 1e9:.2f} GB"
            f"{' (quick)' if args.quick else ''}; single-file restore: `{single}`",
            f"- runs per metric: {args.runs}; engines: {', '.join(engines)}; "
            f"S3 over {'HTTPS (verified against a private CA)' if args.s3_tls else 'plain HTTP'} on 127.0.0.1",
            f"- the tree's page cache before every engine's full backup: {args.tree_cache}"
            " (warm: read through once; cold: evicted, as on a server's first backup; as-is: left alone)",
            "- versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()),
        ]
        for run in range(1, args.runs + 1):
            for engine in engines:
                log(f"run {run}/{args.runs}: {engine}")
                try:
                    if engine == SR:
                        await run_strongroom(
                            bench, day1, data, work, single, rec, check=run == 1, cache=args.tree_cache
                        )
                    else:
                        tool, target = engine.split("/")
                        await asyncio.get_running_loop().run_in_executor(
                            None, run_peer, bench, tool, target, day1, data, work, single, rec, args.tree_cache
                        )
                except Exception as exc:
                    traceback.print_exc()
                    rec.notes.append(f"run {run} {engine} FAILED: {str(exc).splitlines()[0][:200]}")
            save(args, work, render(header, rec, engines, [], [], partial=f"after run {run}"), rec)
        throttle_lines = await throttle_runs(bench, day1, data, args.throttle_seconds, rec)
        if args.scale:
            scale_lines = await scale_run(bench, args.scale, args.scale_dir, args.scale_limit)
    finally:
        await bench.stop()
        rmtree(data)

    text = render(header, rec, engines, throttle_lines, scale_lines)
    print(text)
    save(args, work, text, rec)
    return 0


def hardlinked_copies(day1: Path, data: Path, part: str, copies: int = 3) -> None:
    """``copies`` hard-linked copies of the day-1 tree's ``part`` (``big`` or ``src``) under ``data``.

    The throttle runs back this up: a throttle is a cap, and it is only seen where the pipeline
    could go faster, so the data must outlast the run. Three copies of ``big/`` (~4 GB of reads)
    or of the kernel tree ``src/`` (~4.2 GB in ~236k small files) outlast a 60 s HIGH run; every
    path is read, since the agent reads hard links one by one.
    """
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    for n in range(copies):
        subprocess.run(["cp", "-al", str(day1 / part), str(data / f"{part}-{n}")], check=True)
    time.sleep(3)  # as fresh_copy: no racy timestamps


# The throttle rows: (label, priority, the part of the day-1 tree read). HIGH must reach its cap on
# the small-file half too (issue 13), not only on large files.
THROTTLE_RUNS = (
    ("LOW", "low", "big"),
    ("HIGH", "high", "big"),
    ("HIGH, small files", "high", "src"),
)


async def throttle_runs(bench: StrongroomBench, day1: Path, data: Path, seconds: float, rec: Recorder) -> list[str]:
    lines: list[str] = []
    if seconds <= 0:
        return lines
    copied = ""
    for label, prio, part in THROTTLE_RUNS:
        if part != copied:
            hardlinked_copies(day1, data, part)
            copied = part
        log(f"throttle run {label} for {seconds}s")
        try:
            t = await bench.throttled(data, prio, seconds)
            lines.append(
                f"| {label} (`{part}/` ×3) | {t['mb_per_s']:.2f} | {t['min_10s_mb_per_s']:.2f} – "
                f"{t['max_10s_mb_per_s']:.2f} | {t['cores']:.2f} | {t['seconds']:.0f} |"
            )
        except Exception as exc:
            traceback.print_exc()
            rec.notes.append(f"throttle {label} FAILED: {exc}")
    return lines


async def scale_run(bench: StrongroomBench, count: int, where: Path, limit: float) -> list[str]:
    root = where / f"scale-{count}"
    if not (root / ".complete").exists():
        rmtree(root)
        log(f"generating {count:,} small files in {root}")
        t = time.perf_counter()
        dataset.scale(root, count)
        (root / ".complete").touch()
        log(f"generated in {time.perf_counter() - t:.0f}s")
    inst = await bench.new_instance(root, priority="high", unthrottled=True)
    pid = inst.agent.process.pid
    lines = []
    try:
        task = asyncio.create_task(bench.backup(inst))
        start = time.perf_counter()
        progress = ""
        while not task.done():
            await asyncio.wait({task}, timeout=30)
            if task.done():
                break
            elapsed = time.perf_counter() - start
            jobs = await bench.scheduler.ListJobs(scheduler_pb2.ListJobsRequest(instance_id=inst.instance_id, limit=1))
            done = jobs.jobs[0].stats.files_read if jobs.jobs else 0
            progress = (
                f"{elapsed:.0f}s: {done:,} files read (progress report), agent VmHWM {peak_rss(pid) / 1e6:.0f} MB, "
                f"agent CPU {cpu_seconds(pid):.0f}s"
            )
            log(f"scale: {progress}")
            if limit and elapsed > limit:
                task.cancel()
                lines.append(f"- {count:,} small files: stopped after {limit:.0f}s; last progress {progress}")
                return lines
        r = task.result()
        files = r.stats.files_scanned if r.stats else count
        lines.append(
            f"- {count:,} small files: backup COMPLETE in {r.wall:.0f}s ({files / r.wall:,.0f} files/s); "
            f"agent peak RSS {r.agent_peak_rss / 1e6:.0f} MB; agent CPU {r.agent_cpu:.0f}s, gateway CPU "
            f"{r.gateway_cpu:.0f}s; stored {r.bytes_added / 1e6:.0f} MB"
        )
    except Exception as exc:
        traceback.print_exc()
        lines.append(f"- {count:,} small files: FAILED: {exc}")
    finally:
        await bench.drop_instance(inst)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data subset, for smoke testing")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peers", default="restic,kopia,rustic,borg")
    parser.add_argument("--targets", default="s3,local")
    parser.add_argument("--throttle-seconds", type=float, default=60.0, help="0 skips the throttle runs")
    parser.add_argument("--scale", type=int, default=0, metavar="N", help="also back up N generated small files")
    parser.add_argument("--scale-limit", type=float, default=0, help="stop the scale backup after S seconds")
    parser.add_argument("--scale-dir", type=Path, default=Path("/tmp/strongroom-bench"))
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "strongroom-bench")
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument(
        "--tree-cache",
        choices=_pagecache.MODES,
        default="warm",
        help="page-cache state of the tree before every engine's full backup (default: warm, read through once)",
    )
    parser.add_argument("--s3-tls", action="store_true", help="S3 over HTTPS (verified) for Strongroom and every peer")
    args = parser.parse_args()
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
