"""The gateway's S3 connections: full backup and restore with versitygw closing or keeping them (ADR 0070).

    uv run python bench/s3_connections.py [--rounds 3] [--quick] [--plain] [--peers restic] [--work DIR] [--out F]

One stack (the servers and services of ``run.py``), S3 over TLS unless ``--plain``. The gateway is
restarted once with ``bench/_s3_probe`` first on its ``PYTHONPATH``: that probe counts every TCP
connection its S3 client opens (over HTTPS each is a full TLS handshake) and every request it sends.
Then ``--rounds`` rounds, each of two sides in turn: versitygw restarted on the same port and data
without ``--keep-alive`` (``closes``: versitygw's own default, which every benchmark ran with before
ADR 0070; it answers each request with ``Connection: close``) and with it (``keep-alive``, the
launcher's default now). Per side: a full backup of the day-1 tree into a fresh account, then a full
restore of that point into tmpfs; and each ``--peers`` tool's restore of its own backup (made once, at
the start) on the same server. Every run prints its wall time, the agent's, gateway's and
versitygw's CPU seconds, the gateway's new S3 connections and requests, and the 1-minute load
average; the tables give the medians and keep-alive / closes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
import peers  # noqa: E402
from run import count_files, s3_bucket  # noqa: E402
from strongroom_runner import StrongroomBench, cpu_seconds  # noqa: E402
from strongroom_servers import LocalVersityGW  # noqa: E402

TMPFS = Path("/dev/shm")
PROBE = HERE / "_s3_probe"
SIDES = {"closes": False, "keep-alive": True}


def load() -> float:
    return os.getloadavg()[0]


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Counts:
    """The probe's file: ``c`` per new S3 connection, ``r`` per request, appended by the gateway."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def now(self) -> tuple[int, int]:
        text = self.path.read_bytes() if self.path.exists() else b""
        return text.count(b"c"), text.count(b"r")


async def probed_gateway(bench: StrongroomBench, counts: Counts) -> None:
    """Restart the gateway (same listeners) with the probe on its path, counting into ``counts``."""
    stack = bench.stack
    assert stack is not None
    old = stack.processes["gateway"]
    public = old.announced["gateway"]
    await old.stop()
    env = {**bench.env, "PYTHONPATH": str(PROBE), "BENCH_S3_PROBE": str(counts.path)}
    stack.processes["gateway"] = await stack._start_one("gateway", env, bench.work / "logs", public, 90.0)


def restart_s3(bench: StrongroomBench, keep_alive: bool) -> None:
    """versitygw again on the same port, data and credentials, with or without ``--keep-alive``."""
    old = bench.s3
    assert old is not None
    port = old.port
    old.stop()
    new = LocalVersityGW(
        old.work_dir,
        port=port,
        access_key=old.access_key,
        secret_key=old.secret_key,
        tls=old.tls,
        keep_alive=keep_alive,
    )
    new.start()
    bench.servers[bench.servers.index(old)] = new
    bench.s3 = new


class Table:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, metric: str, side: str, value: float) -> None:
        self.values[metric][side].append(value)

    def render(self) -> str:
        out = [
            "| metric | closes (median) | keep-alive (median) | keep-alive / closes | all closes | all keep-alive |",
            "|---|---:|---:|---:|---|---|",
        ]
        for metric, sides in self.values.items():
            a, b = sides.get("closes", []), sides.get("keep-alive", [])
            if not a or not b:
                continue
            ma, mb = statistics.median(a), statistics.median(b)
            ratio = f"{mb / ma:.3f}" if ma else "—"
            out.append(
                f"| {metric} | {ma:.2f} | {mb:.2f} | {ratio} | "
                f"{', '.join(f'{v:.2f}' for v in a)} | {', '.join(f'{v:.2f}' for v in b)} |"
            )
        return "\n".join(out)


async def amain(args: argparse.Namespace) -> int:
    work: Path = args.work
    day1 = dataset.day1_tree(work, quick=args.quick).resolve()  # a symlinked tree: the tools back up its target
    source_files = count_files(day1)
    bench = StrongroomBench(work / "strongroom-s3-connections", s3_tls=not args.plain)
    shutil.rmtree(bench.work, ignore_errors=True)
    await bench.start(unthrottled_gateway=True)
    counts = Counts(bench.work / "gateway-s3-probe")
    table = Table()
    peer_list: list[tuple[str, peers.Peer]] = []
    try:
        await probed_gateway(bench, counts)
        for tool in [p for p in args.peers.split(",") if p]:
            peer = peers.Peer(tool, work / f"s3-connections-{tool}", s3_bucket(bench, tool))
            peer.init()
            m = peer.backup(day1, "day1")
            log(f"{tool} backup {m.wall:.1f}s (load {load():.1f})")
            peer_list.append((tool, peer))
        for n in range(args.rounds):
            for side, keep_alive in SIDES.items():
                await asyncio.to_thread(restart_s3, bench, keep_alive)
                assert bench.s3 is not None and bench.s3.pid is not None
                s3_pid = bench.s3.pid
                inst = await bench.new_instance(day1, unthrottled=True)
                try:
                    before, s3_before, (c0, r0) = load(), cpu_seconds(s3_pid), counts.now()
                    r = await bench.backup(inst)
                    c1, r1 = counts.now()
                    s3 = cpu_seconds(s3_pid) - s3_before
                    record(table, "full backup", side, r.wall, r.agent_cpu, r.gateway_cpu, s3, c1 - c0, r1 - r0)
                    log(
                        f"round {n + 1} {side} full backup: {r.wall:.2f}s, agent CPU {r.agent_cpu:.2f}s, gateway CPU"
                        f" {r.gateway_cpu:.2f}s, versitygw CPU {s3:.2f}s, S3 connections {c1 - c0} for"
                        f" {r1 - r0} requests (load {before:.1f} -> {load():.1f})"
                    )
                    point = await bench.latest_point(inst, 1)
                    dest = TMPFS / f"s3-connections-{uuid.uuid4().hex[:6]}"
                    before, s3_before, (c0, r0) = load(), cpu_seconds(s3_pid), counts.now()
                    try:
                        r = await bench.restore(inst, point, dest)
                        c1, r1 = counts.now()
                        s3 = cpu_seconds(s3_pid) - s3_before
                        if count_files(dest) != source_files:
                            raise RuntimeError(f"{count_files(dest)} files restored of {source_files}")
                    finally:
                        shutil.rmtree(dest, ignore_errors=True)
                    record(table, "restore", side, r.wall, r.agent_cpu, r.gateway_cpu, s3, c1 - c0, r1 - r0)
                    log(
                        f"round {n + 1} {side} restore: {r.wall:.2f}s, agent CPU {r.agent_cpu:.2f}s, gateway CPU"
                        f" {r.gateway_cpu:.2f}s, versitygw CPU {s3:.2f}s, S3 connections {c1 - c0} for"
                        f" {r1 - r0} requests (load {before:.1f} -> {load():.1f})"
                    )
                finally:
                    await bench.drop_instance(inst)
                    shutil.rmtree(inst.state_dir, ignore_errors=True)
                for tool, peer in peer_list:
                    dest = TMPFS / f"s3-connections-{uuid.uuid4().hex[:6]}"
                    before = load()
                    m, s3 = await asyncio.to_thread(
                        peer.restore_removed, day1, "day1", dest, functools.partial(cpu_seconds, s3_pid)
                    )
                    table.add(f"{tool} restore, wall (s)", side, m.wall)
                    table.add(f"{tool} restore, {tool} CPU (s)", side, m.cpu)
                    table.add(f"{tool} restore, versitygw CPU (s)", side, s3)
                    log(
                        f"round {n + 1} {side} {tool} restore: {m.wall:.2f}s, CPU {m.cpu:.2f}s, versitygw CPU"
                        f" {s3:.2f}s (load {before:.1f} -> {load():.1f})"
                    )
    except BaseException:
        # The services' logs outlive a failed run (the stack's directory is removed below).
        shutil.copytree(bench.work / "logs", work / "s3-connections-logs", dirs_exist_ok=True)
        raise
    finally:
        for _tool, peer in peer_list:
            peer.cleanup()
        await bench.stop()
        shutil.rmtree(bench.work, ignore_errors=True)
    transport = "HTTP" if args.plain else "HTTPS"
    text = f"S3 over {transport}, {args.rounds} rounds, sides alternating (closes, keep-alive)\n\n" + table.render()
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def record(
    table: Table, phase: str, side: str, wall: float, agent: float, gateway: float, s3: float, conns: int, reqs: int
) -> None:
    table.add(f"{phase}, wall (s)", side, wall)
    table.add(f"{phase}, agent CPU (s)", side, agent)
    table.add(f"{phase}, gateway CPU (s)", side, gateway)
    table.add(f"{phase}, versitygw CPU (s)", side, s3)
    table.add(f"{phase}, agent + gateway + versitygw CPU (s)", side, agent + gateway + s3)
    table.add(f"{phase}, gateway's new S3 connections", side, conns)
    table.add(f"{phase}, gateway's S3 requests", side, reqs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plain", action="store_true", help="S3 over plain HTTP (default: HTTPS)")
    parser.add_argument("--peers", default="restic", help="peer tools whose restores are measured too ('' for none)")
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "strongroom-bench"
    )
    parser.add_argument("--out", type=Path)
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
