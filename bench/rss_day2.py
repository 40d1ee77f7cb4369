"""What the agent's backup peak RSS and the day-2 upload are made of (issue 13, ADR 0064).

    uv run python bench/rss_day2.py [--agent REV ...] [--env NAME=VALUE ...] [--rounds 2] [--quick]
                                    [--day1 DIR] [--work DIR] [--out F]

One stack (PostgreSQL, Kafka, versitygw, the services). Each *variant* is an agent: this checkout's
agent as committed (``HEAD``), the agent of every ``--agent REV`` (its ``agent/src`` from ``git
archive``, first on the agent's ``PYTHONPATH``; the services are this checkout's), and HEAD with
each ``--env NAME=VALUE`` set for the agent process. Variants run interleaved, ``--rounds`` times.
Per variant and round, on a fresh hard-linked copy of the day-1 tree, in a new account:

* full backup: wall, agent CPU, the agent's ``VmHWM`` (reset before the job), and ``VmRSS``,
  ``RssAnon``, ``RssFile`` and ``Threads`` sampled every 50 ms (the sample with the highest
  ``VmRSS`` is shown);
* no-change backup: wall and agent CPU;
* ``dataset.day2`` then a backup: the objects added under ``packs/<account>/`` and
  ``manifests/<account>/`` (listed before and after), by kind, count and bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
from restore_ab import base_agent  # noqa: E402
from run import fresh_copy, log, rmtree  # noqa: E402
from strongroom_runner import StrongroomBench  # noqa: E402


def load() -> float:
    return os.getloadavg()[0]


def status_fields(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "Threads"):
            parts = value.split()
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return out


def smaps_breakdown(pid: int) -> dict[str, int]:
    """Resident bytes by kind of mapping: the main heap, other anonymous maps by size class, files."""
    out: dict[str, int] = {}
    kind = ""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        head = line.split()
        if not head:
            continue
        if "-" in head[0] and not head[0].endswith(":"):
            start, _, end = head[0].partition("-")
            size = int(end, 16) - int(start, 16)
            name = head[5] if len(head) > 5 else ""
            if name == "[heap]":
                kind = "heap"
            elif name.startswith("["):
                kind = name
            elif name:
                kind = "file"
            elif size >= 32 << 20:
                kind = "anon >=32M (arenas)"
            elif size >= 1 << 20:
                kind = "anon 1-32M (buffers, stacks)"
            else:
                kind = "anon <1M"
        elif head[0] == "Rss:":
            out[kind] = out.get(kind, 0) + int(head[1]) * 1024
    return out


class Sampler:
    """``/proc/<pid>/status`` every 50 ms in a thread; keeps the sample with the highest VmRSS."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak: dict[str, int] = {}
        self.max_threads = 0
        self.smaps: dict[str, int] = {}
        self._smaps_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.05):
            sample = status_fields(self.pid)
            self.max_threads = max(self.max_threads, sample.get("Threads", 0))
            if sample.get("VmRSS", 0) > self.peak.get("VmRSS", 0):
                self.peak = sample
            tick += 1
            if tick % 10 == 0:  # the mappings every 0.5 s; the breakdown with the most resident bytes is kept
                smaps = smaps_breakdown(self.pid)
                if sum(smaps.values()) > self._smaps_rss:
                    self.smaps, self._smaps_rss = smaps, sum(smaps.values())


def listing(bench: StrongroomBench, account: str) -> dict[str, int]:
    client = bench.minio()
    objects: dict[str, int] = {}
    for prefix in (f"packs/{account}/", f"manifests/{account}/"):
        for obj in client.list_objects(bench.bucket, prefix=prefix, recursive=True):
            objects[str(obj.object_name)] = obj.size or 0
    return objects


def added_by_kind(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    kinds: dict[str, tuple[int, int]] = {}
    for key, size in after.items():
        if key in before:
            continue
        kind = key.split("/", 1)[0]
        count, total = kinds.get(kind, (0, 0))
        kinds[kind] = (count + 1, total + size)
    return kinds


async def one(bench: StrongroomBench, day1: Path, data: Path, env: dict[str, str]) -> dict[str, object]:
    fresh_copy(day1, data)
    saved = {k: v for k, v in os.environ.items() if k.startswith("BENCH_AGENT_ENV_")}
    for key in saved:
        del os.environ[key]
    os.environ.update({f"BENCH_AGENT_ENV_{k}": v for k, v in env.items()})
    try:
        inst = await bench.new_instance(data, priority="high", unthrottled=True)
    finally:
        for key in [k for k in os.environ if k.startswith("BENCH_AGENT_ENV_")]:
            del os.environ[key]
        os.environ.update(saved)
    loop = asyncio.get_running_loop()
    try:
        full_load = load()
        idle = status_fields(inst.agent.process.pid)
        with Sampler(inst.agent.process.pid) as sampler:
            full = await bench.backup(inst)
        nochange = await bench.backup(inst)
        dataset.day2(data)
        before = await loop.run_in_executor(None, listing, bench, inst.account_id)
        d2 = await bench.backup(inst)
        after = await loop.run_in_executor(None, listing, bench, inst.account_id)
        return {
            "full_s": full.wall,
            "full_cpu": full.agent_cpu,
            "full_load": (full_load + load()) / 2,
            "hwm_mb": full.agent_peak_rss / 1e6,
            "idle_mb": idle.get("VmRSS", 0) / 1e6,
            "sample": {k: (v / 1e6 if k != "Threads" else v) for k, v in sampler.peak.items()},
            "threads": sampler.max_threads,
            "smaps": {k: round(v / 1e6, 1) for k, v in sorted(sampler.smaps.items())},
            "nochange_s": nochange.wall,
            "nochange_cpu": nochange.agent_cpu,
            "day2_mb": d2.bytes_added / 1e6,
            "day2_kinds": added_by_kind(before, after),
            "day2_sent": {
                "files_read": d2.stats.files_read if d2.stats else -1,
                "chunks_new": d2.stats.chunks_new if d2.stats else -1,
                "bytes_uploaded": d2.stats.bytes_uploaded if d2.stats else -1,
            },
        }
    finally:
        await bench.drop_instance(inst)
        rmtree(inst.state_dir)


def report(results: dict[str, list[dict[str, object]]], header: list[str]) -> str:
    lines = ["# Agent backup peak RSS and day-2 bytes by agent variant", "", *header, ""]
    lines += [
        "| variant | runs | peak RSS MB (median; runs) | full s | full agent CPU s"
        " | no-change s | no-change CPU s | day-2 MB |"
    ]
    lines += ["|---|---:|---|---:|---:|---:|---:|---:|"]

    def med(rows: list[dict[str, object]], key: str) -> float:
        return statistics.median(float(r[key]) for r in rows)  # type: ignore[arg-type]

    for name, rows in results.items():
        if not rows:
            continue
        hwm = ", ".join(f"{float(r['hwm_mb']):.1f}" for r in rows)  # type: ignore[arg-type]
        lines.append(
            f"| {name} | {len(rows)} | {med(rows, 'hwm_mb'):.1f} ({hwm}) | {med(rows, 'full_s'):.2f} |"
            f" {med(rows, 'full_cpu'):.2f} | {med(rows, 'nochange_s'):.2f} | {med(rows, 'nochange_cpu'):.2f} |"
            f" {med(rows, 'day2_mb'):.2f} |"
        )
    lines += ["", "Per run (the VmRSS sample at the peak, MB; the day-2 objects added by kind: count, MB):", ""]
    for name, rows in results.items():
        for i, r in enumerate(rows, 1):
            kinds = r["day2_kinds"]
            assert isinstance(kinds, dict)
            added = ", ".join(f"{k}: {c} / {b / 1e6:.2f}" for k, (c, b) in sorted(kinds.items()))
            hwm, idle, d2, at_load = (float(r[k]) for k in ("hwm_mb", "idle_mb", "day2_mb", "full_load"))  # type: ignore[arg-type]
            lines.append(
                f"- {name} run {i}: VmHWM {hwm:.1f} (idle before: {idle:.1f}), sample {r['sample']},"
                f" max threads {r['threads']}, load {at_load:.1f}; day-2 {d2:.2f} MB = {added}"
            )
            lines.append(f"  - day-2 job: {r['day2_sent']}")
            lines.append(f"  - resident MB by mapping at the highest 0.5 s sample: {r['smaps']}")
    return "\n".join(lines) + "\n"


async def amain(args: argparse.Namespace) -> int:
    work: Path = args.work
    day1 = args.day1 or dataset.day1_tree(work, quick=args.quick)
    data = work / "data-rss"
    variants: dict[str, dict[str, str]] = {"HEAD": {"PYTHONPATH": str(base_agent("HEAD", work / "rss-agent-head"))}}
    for n, rev in enumerate(args.agent):
        variants[rev] = {"PYTHONPATH": str(base_agent(rev, work / f"rss-agent-{n}"))}
    for setting in args.env:
        name, _, value = setting.partition("=")
        variants[f"HEAD {setting}"] = {**variants["HEAD"], name: value}
    results: dict[str, list[dict[str, object]]] = {name: [] for name in variants}
    bench = StrongroomBench(work / "strongroom")
    log("starting PostgreSQL, Kafka, versitygw and the Strongroom services")
    await bench.start()
    header = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} cores; rounds: {args.rounds}",
        f"- data set: {(day1 / 'DATASET').read_text().splitlines()[0]}",
    ]
    try:
        for n in range(args.rounds):
            for name, env in variants.items():
                log(f"round {n + 1}/{args.rounds}: {name} (load {load():.1f})")
                results[name].append(await one(bench, day1, data, env))
                log(f"  {results[name][-1]}")
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
    parser.add_argument("--agent", action="append", default=[], help="an agent revision to compare (repeatable)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for HEAD's agent (a variant each)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small data subset, for smoke testing")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "strongroom-bench")
    parser.add_argument("--day1", type=Path, help="an existing day-1 tree (default: built under --work)")
    parser.add_argument("--out", type=Path)
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
