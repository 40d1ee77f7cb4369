"""One side of an A/B run: start the stack of THIS checkout, back up a tree N times, print JSON.

    python bench/full_backup_once.py --data DIR --work DIR [--runs 1]

Prints one JSON line ``{"full_s": [...], "nochange_s": [...], "cpu_s": [...], "nochange_load": [...]}``
(and ``agent_cpu_s``, ``gateway_cpu_s``, ``agent_peak_rss_mb``, ``full_load``: the full backup's CPU per process,
the agent's peak RSS and the load after it; ``stored_mb``: what the full backup added to the bucket;
``agent_minflt_k``, ``gateway_minflt_k``: the processes' minor page faults during it, in thousands)
(``--nochange N``: N no-change backups after each full one, each with the 1-minute load average). Used by
``bench/ab.py``, which runs it from two checkouts (say, before and after the trust boundary) in one
invocation, alternating, so both sides see the same machine. Only ``StrongroomBench``'s public
methods are used, so the same file runs against older checkouts (``ab.py`` copies it there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from strongroom_runner import StrongroomBench  # noqa: E402


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far (``/proc/<pid>/stat`` field 10)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


async def main(data: Path, work: Path, runs: int, nochange: int = 1, s3_tls: bool = False) -> dict[str, list[float]]:
    bench = StrongroomBench(work, s3_tls=s3_tls)
    await bench.start(unthrottled_gateway=True)
    out: dict[str, list[float]] = {"full_s": [], "nochange_s": [], "cpu_s": []}
    try:
        for _ in range(runs):
            inst = await bench.new_instance(data, priority="high", unthrottled=True)
            try:
                faults0 = minor_faults(inst.agent.process.pid), minor_faults(bench.gateway_pid)
                full = await bench.backup(inst)
                faults1 = minor_faults(inst.agent.process.pid), minor_faults(bench.gateway_pid)
                out["full_s"].append(full.wall)
                out["cpu_s"].append(full.agent_cpu + full.gateway_cpu)
                out.setdefault("agent_cpu_s", []).append(full.agent_cpu)
                out.setdefault("gateway_cpu_s", []).append(full.gateway_cpu)
                out.setdefault("agent_peak_rss_mb", []).append(full.agent_peak_rss / 1e6)
                out.setdefault("full_load", []).append(os.getloadavg()[0])
                out.setdefault("stored_mb", []).append(full.bytes_added / 1e6)
                out.setdefault("agent_minflt_k", []).append((faults1[0] - faults0[0]) / 1e3)
                out.setdefault("gateway_minflt_k", []).append((faults1[1] - faults0[1]) / 1e3)
                await bench.latest_point(inst, 1)
                for _ in range(nochange):
                    out["nochange_s"].append((await bench.backup(inst)).wall)
                    out.setdefault("nochange_load", []).append(os.getloadavg()[0])
            finally:
                await bench.drop_instance(inst)
                shutil.rmtree(inst.state_dir, ignore_errors=True)
    finally:
        await bench.stop()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--nochange", type=int, default=1, help="no-change backups after each full backup")
    parser.add_argument("--s3-tls", action="store_true", help="S3 over HTTPS, as run.py --s3-tls")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.data, args.work, args.runs, args.nochange, args.s3_tls))), flush=True)
