"""One side of an A/B run: start the stack of THIS checkout, back up a tree N times, print JSON.

    python bench/full_backup_once.py --data DIR --work DIR [--runs 1]

Prints one JSON line ``{"full_s": [...], "nochange_s": [...], "cpu_s": [...], "nochange_load": [...]}``
(and ``agent_cpu_s``, ``gateway_cpu_s``, ``agent_peak_rss_mb``, ``full_load``: the full backup's CPU per process,
the agent's peak RSS and the load after it; ``stored_mb``: what the full backup added to the bucket;
``agent_minflt_k``, ``gateway_minflt_k``: the processes' minor page faults during it, in thousands;
``agent_user_s``, ``agent_sys_s``: the agent's CPU split into user and system time; ``postgres_cpu_s``: the CPU of
PostgreSQL's processes during it, ``pg_commits_k``: the transactions its databases committed, in thousands: every
service's round trips have a cost on the server too, on the same cores, ADR 0079)
(``--nochange N``: N no-change backups after each full one, each with the 1-minute load average, the agent's and
the gateway's CPU seconds and the agent's peak RSS during it: ``nochange_agent_cpu_s``, ``nochange_gateway_cpu_s``,
``nochange_agent_peak_rss_mb``).
``--perf-faults FILE``: ``perf record`` samples the agent's page faults (every ``--perf-period``-th, with
call stacks) during the first full backup, into FILE (``perf report -i FILE`` shows where they come from).
``--strace DIR``: ``strace -c -f`` on the agent and on the gateway during the first full backup: the system
calls of every thread, counted, with their system time, into ``DIR/agent.txt`` and ``DIR/gateway.txt`` (tracing
slows both processes several-fold: for counts, not timings; ADR 0079).
``--timeline FILE``: the agent's resident set, minor page faults, user and system CPU and bytes read
(``rchar``), sampled every half second during the first full backup, as JSON lines into FILE. Used by
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
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from strongroom_runner import StrongroomBench  # noqa: E402


def proc_stat(pid: int) -> list[str]:
    """``/proc/<pid>/stat``'s fields after the command name (index 0 is field 3, the state).

    Kept in this file rather than imported: ``ab.py`` runs it inside older checkouts.
    """
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far (``/proc/<pid>/stat`` field 10)."""
    return int(proc_stat(pid)[7])


def user_system_seconds(pid: int) -> tuple[float, float]:
    """The process's user and system CPU seconds so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = proc_stat(pid)
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


async def perf_faults(pid: int, out: Path, period: int) -> asyncio.subprocess.Process:
    """``perf record`` of the process's page faults, every ``period``-th with its call stack (DWARF unwinding)."""
    perf = await asyncio.create_subprocess_exec(
        *("perf", "record", "-q", "-e", "page-faults", "-c", str(period), "--call-graph", "dwarf,16384"),
        *("-p", str(pid), "-o", str(out)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(2)  # attached
    return perf


async def strace_counts(pids: dict[str, int], out: Path) -> list[asyncio.subprocess.Process]:
    """``strace -c -f`` attached to each process (name: pid), its summary into ``out/<name>.txt`` once interrupted."""
    out.mkdir(parents=True, exist_ok=True)
    tracers = [
        await asyncio.create_subprocess_exec(
            *("strace", "-c", "-f", "-o", str(out / f"{name}.txt"), "-p", str(pid)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    await asyncio.sleep(2)  # attached to every thread
    return tracers


def postgres_cpu_seconds(data_dir: Path) -> float:
    """CPU seconds of the PostgreSQL server whose data directory is ``data_dir``: the postmaster, its children
    that exited (reaped: ``cutime``/``cstime``) and those alive (the connections' backends)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    postmaster = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stats[int(entry.name)] = proc_stat(int(entry.name))
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        if str(data_dir).encode() in command and Path(command[0].decode()).name == "postgres":
            postmaster = int(entry.name)
    if not postmaster:
        return 0.0
    total = sum(int(v) for v in stats[postmaster][11:15])
    total += sum(int(fields[11]) + int(fields[12]) for fields in stats.values() if int(fields[1]) == postmaster)
    return total / ticks


async def pg_commits(dsn: str) -> int:
    """Transactions committed so far in every database of the server (``pg_stat_database``)."""
    import asyncpg  # the bench's stack has it; imported here so --help works without it

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT sum(xact_commit) FROM pg_stat_database"))
    finally:
        await conn.close()


async def sample_agent(pid: int, out: Path, every: float = 0.5) -> None:
    """Append the agent's RSS, minor faults, CPU and bytes read to ``out`` every ``every`` seconds until cancelled."""
    ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    start = time.perf_counter()
    with out.open("w") as f:
        while True:
            stat = proc_stat(pid)
            io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
            sample = {
                "t": round(time.perf_counter() - start, 2),
                "rss_mb": int(stat[21]) * page / 1e6,
                "minflt": int(stat[7]),
                "user_s": int(stat[11]) / ticks,
                "sys_s": int(stat[12]) / ticks,
                "read_mb": int(io["rchar"]) / 1e6,
            }
            f.write(json.dumps(sample) + "\n")
            await asyncio.sleep(every)


async def main(
    data: Path,
    work: Path,
    runs: int,
    nochange: int = 1,
    s3_tls: bool = False,
    perf_out: Path | None = None,
    perf_period: int = 64,
    timeline: Path | None = None,
    strace_out: Path | None = None,
) -> dict[str, list[float]]:
    bench = StrongroomBench(work, s3_tls=s3_tls)
    await bench.start(unthrottled_gateway=True)
    out: dict[str, list[float]] = {"full_s": [], "nochange_s": [], "cpu_s": []}
    try:
        for _ in range(runs):
            inst = await bench.new_instance(data, priority="high", unthrottled=True)
            try:
                faults0 = minor_faults(inst.agent.process.pid), minor_faults(bench.gateway_pid)
                perf = await perf_faults(inst.agent.process.pid, perf_out, perf_period) if perf_out else None
                pids = {"agent": inst.agent.process.pid, "gateway": bench.gateway_pid}
                tracers = await strace_counts(pids, strace_out) if strace_out else []
                pg_dsn, pg_data = bench.env["STRONGROOM_PG_MIGRATE_DSN"], work / "postgres" / "data"
                pg0 = await pg_commits(pg_dsn), postgres_cpu_seconds(pg_data)
                split0 = user_system_seconds(inst.agent.process.pid)
                sampler = asyncio.create_task(sample_agent(inst.agent.process.pid, timeline)) if timeline else None
                full = await bench.backup(inst)
                if sampler is not None:
                    sampler.cancel()
                    await asyncio.gather(sampler, return_exceptions=True)
                    timeline = None  # the first full backup only
                if perf is not None:
                    perf.send_signal(signal.SIGINT)
                    await perf.wait()
                    perf_out = None  # the first full backup only
                for tracer in tracers:
                    tracer.send_signal(signal.SIGINT)  # detaches and writes the summary
                    await tracer.wait()
                strace_out = None  # the first full backup only
                faults1 = minor_faults(inst.agent.process.pid), minor_faults(bench.gateway_pid)
                split1 = user_system_seconds(inst.agent.process.pid)
                pg1 = await pg_commits(pg_dsn), postgres_cpu_seconds(pg_data)
                out["full_s"].append(full.wall)
                out["cpu_s"].append(full.agent_cpu + full.gateway_cpu)
                out.setdefault("agent_cpu_s", []).append(full.agent_cpu)
                out.setdefault("gateway_cpu_s", []).append(full.gateway_cpu)
                out.setdefault("agent_peak_rss_mb", []).append(full.agent_peak_rss / 1e6)
                out.setdefault("full_load", []).append(os.getloadavg()[0])
                out.setdefault("stored_mb", []).append(full.bytes_added / 1e6)
                out.setdefault("agent_minflt_k", []).append((faults1[0] - faults0[0]) / 1e3)
                out.setdefault("gateway_minflt_k", []).append((faults1[1] - faults0[1]) / 1e3)
                out.setdefault("agent_user_s", []).append(split1[0] - split0[0])
                out.setdefault("agent_sys_s", []).append(split1[1] - split0[1])
                out.setdefault("postgres_cpu_s", []).append(round(pg1[1] - pg0[1], 2))
                out.setdefault("pg_commits_k", []).append((pg1[0] - pg0[0]) / 1e3)
                await bench.latest_point(inst, 1)
                for _ in range(nochange):
                    unchanged = await bench.backup(inst)
                    out["nochange_s"].append(unchanged.wall)
                    out.setdefault("nochange_agent_cpu_s", []).append(unchanged.agent_cpu)
                    out.setdefault("nochange_gateway_cpu_s", []).append(unchanged.gateway_cpu)
                    out.setdefault("nochange_agent_peak_rss_mb", []).append(unchanged.agent_peak_rss / 1e6)
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
    parser.add_argument("--perf-faults", type=Path, help="perf record the agent's page faults into this file")
    parser.add_argument("--perf-period", type=int, default=64, help="sample every N-th page fault")
    parser.add_argument("--timeline", type=Path, help="the agent's RSS, faults and CPU every 0.5 s, into this file")
    parser.add_argument("--strace", type=Path, help="count the agent's and the gateway's system calls into this dir")
    args = parser.parse_args()
    perf = (args.perf_faults, args.perf_period)
    result = asyncio.run(
        main(args.data, args.work, args.runs, args.nochange, args.s3_tls, *perf, args.timeline, args.strace)
    )
    print(json.dumps(result), flush=True)
