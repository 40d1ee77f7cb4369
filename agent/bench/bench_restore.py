"""Full-restore throughput, in process: a real gateway servicer (in-memory stores) and the real agent.

Backs up a generated tree (many small files, a few large ones) through the
gateway's gRPC API, then times full restores of the point into each target
directory. The restore runs in a child process (the agent is a separate process
in production, and sharing one interpreter would make the agent and the gateway
compete for one GIL); the gateway serves from this process. Every restore is
compared with the source tree. Usage:

    uv run python agent/bench/bench_restore.py [--files 50000] [--large 3] [--large-mib 32]
        [--source DIR] [--target DIR ...] [--rounds 2] [--get-latency-ms 0 ...]

``--get-latency-ms`` adds a delay to every object-store read during the
restores, like a remote S3 GET; several values are measured one after another.
Each restore line also gives the CPU seconds of the agent (child) and of the
gateway (this process) during the restore.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2

GATEWAY_TESTS = Path(__file__).resolve().parents[2] / "services" / "agent-gateway" / "tests"


def generate(root: Path, files: int, large: int, large_mib: int, seed: int = 7) -> tuple[int, int]:
    """A tree of ``files`` small files (1-20 KiB; text and random) in nested dirs, plus ``large`` big files."""
    rng = random.Random(seed)
    words = [
        bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_(){};") for _ in range(rng.randint(2, 10))) for _ in range(4000)
    ]
    total = 0
    per_dir = 40
    for i in range(files):
        d = root / f"d{i // (per_dir * 25):03}" / f"s{(i // per_dir) % 25:02}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        size = rng.randint(1 << 10, 20 << 10)
        text = i % 4 != 0
        data = b" ".join(rng.choice(words) for _ in range(size // 6 + 1))[:size] if text else rng.randbytes(size)
        path = d / f"f{i:06}.{'bin' if i % 4 == 0 else 'c'}"
        path.write_bytes(data)
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
        total += size
    (root / "big").mkdir(exist_ok=True)
    for j in range(large):
        with open(root / "big" / f"large{j}.bin", "wb") as f:
            for k in range(large_mib):
                block = rng.randbytes(1 << 20) if k % 2 else (b"log line %d\n" % k) * ((1 << 20) // 12)
                f.write(block)
                total += len(block)
    for j in range(20):
        os.symlink(f"../big/large{j % max(1, large)}.bin", root / "d000" / f"link{j}")
    return files + large, total


def tree_digest(root: Path) -> str:
    """A digest over every path, type, mode, mtime and content below ``root``."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = os.lstat(path)
            h.update(f"{path.relative_to(root)}|{st.st_mode:o}|{st.st_mtime_ns}|".encode())
            if os.path.islink(path):
                h.update(os.readlink(path).encode())
            elif path.is_file():
                h.update(path.read_bytes())
    return h.hexdigest()


async def _command(gw: Any, agent: Any, kind: str, job_id: str) -> gateway_pb2.AgentCommand:
    call = gw.stub.Connect(metadata=agent.md)
    try:
        while True:
            command = await asyncio.wait_for(call.read(), 30)
            assert isinstance(command, gateway_pb2.AgentCommand)
            if command.WhichOneof("command") != kind:
                continue
            inner = getattr(command, kind)
            if (inner.job_id if kind == "run_backup" else inner.restore_job_id) == job_id:
                return command
    finally:
        call.cancel()


def _restore_in_child(address: str, agent: Any, command: gateway_pb2.RunRestore) -> dict[str, Any]:
    payload = json.dumps(
        {
            "address": address,
            "instance_id": agent.instance_id,
            "credential": agent.credential,
            "command": base64.b64encode(command.SerializeToString()).decode(),
        }
    )
    out = subprocess.run(
        [sys.executable, __file__, "--child"], input=payload, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def _child() -> None:
    from strongroom_agent.gateway_client import GrpcGatewayClient, open_channel
    from strongroom_agent.restore import run_restore

    args = json.loads(sys.stdin.read())
    command = gateway_pb2.RunRestore.FromString(base64.b64decode(args["command"]))
    async with open_channel(args["address"]) as channel:
        client = GrpcGatewayClient(channel, args["instance_id"], args["credential"])
        start = time.perf_counter()
        finished = await run_restore(command, client=client, cancel=asyncio.Event())
        elapsed = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "elapsed": elapsed,
                "cpu": usage.ru_utime + usage.ru_stime,
                "status": common_pb2.JobStatus.Name(finished.status),
                "error": finished.error,
                "files": finished.stats.files_restored,
                "bytes": finished.stats.bytes_restored,
                "file_errors": list(finished.file_errors)[:5],
            }
        )
    )


async def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(GATEWAY_TESTS))
    from gateway_helpers import GatewayHarness
    from strongroom_agent.backup import run_backup
    from strongroom_agent.exclusions import LinuxExclusions
    from strongroom_agent.gateway_client import GrpcGatewayClient
    from strongroom_platform.testing import FakeClock

    work = Path(tempfile.mkdtemp(prefix="strongroom-bench-", dir=args.source))
    source = work / "src"
    source.mkdir()
    t0 = time.perf_counter()
    count, total = generate(source, args.files, args.large, args.large_mib)
    print(f"generated {count} files, {total / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s", flush=True)
    digest = tree_digest(source)

    gw = GatewayHarness(FakeClock())
    await gw.start()
    latency = {"s": 0.0}
    plain_get = gw.objects.get

    async def slow_get(key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        if latency["s"]:
            await asyncio.sleep(latency["s"])
        return await plain_get(key, offset=offset, length=length)

    gw.objects.get = slow_get
    gets = {"n": 0}
    counted_get = gw.objects.get

    async def counting_get(key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        gets["n"] += 1
        return await counted_get(key, offset=offset, length=length)

    gw.objects.get = counting_get
    try:
        agent = await gw.enrolled_agent("i-bench")
        await gw.request_backup(agent, "job-1")
        backup = (await _command(gw, agent, "run_backup", "job-1")).run_backup
        backup.max_cores = 2
        client = GrpcGatewayClient(gw.channel, agent.instance_id, agent.credential)
        fs = common_pb2.Filesystem(mount_point=str(source), device="/dev/bench", fs_type="ext4")
        t0 = time.perf_counter()
        finished = await run_backup(
            backup, client=client, points=[fs], exclusions=LinuxExclusions(), cancel=asyncio.Event()
        )
        assert finished.status == common_pb2.JOB_STATUS_COMPLETE, finished
        print(f"backup: {time.perf_counter() - t0:.1f} s", flush=True)
        async with gw.store.transaction() as tx:
            point = await tx.find_point("job-1", str(source))
        assert point is not None
        address = gw.channel._channel.target.decode()
        rates: dict[str, list[float]] = {}
        job = 0
        for delay_ms in args.get_latency_ms or [0.0]:
            latency["s"] = delay_ms / 1000
            for _ in range(args.rounds):
                for target_parent in args.target:
                    job += 1
                    job_id = f"r-{job}"
                    target = Path(tempfile.mkdtemp(prefix="strongroom-restore-", dir=target_parent))
                    await gw.request_restore(agent, job_id, point.point_id, target_path=str(target))
                    command = (await _command(gw, agent, "run_restore", job_id)).run_restore
                    os.sync()
                    gets["n"] = 0
                    cpu = time.process_time()
                    result = await asyncio.to_thread(_restore_in_child, address, agent, command)
                    gateway_cpu = time.process_time() - cpu
                    ok = result["status"] == "JOB_STATUS_COMPLETE" and tree_digest(target) == digest
                    elapsed = result["elapsed"]
                    label = f"{target_parent}, GET latency {delay_ms:g} ms"
                    rates.setdefault(label, []).append(elapsed)
                    print(
                        f"restore into {label}: {elapsed:.2f} s, {count / elapsed:.0f} files/s,"
                        f" {total / elapsed / 1e6:.1f} MB/s, {gets['n']} object GETs, CPU agent"
                        f" {result['cpu']:.1f} s, gateway {gateway_cpu:.1f} s, identical={ok}"
                        + ("" if ok else f" {result}"),
                        flush=True,
                    )
                    shutil.rmtree(target)
        for label, times in rates.items():
            median = statistics.median(times)
            print(
                f"median into {label}: {median:.2f} s, {count / median:.0f} files/s,"
                f" {total / median / 1e6:.1f} MB/s over {len(times)} rounds"
            )
    finally:
        await gw.stop()
        shutil.rmtree(work)


if __name__ == "__main__":
    if "--child" in sys.argv:
        asyncio.run(_child())
        sys.exit(0)
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--large", type=int, default=3)
    parser.add_argument("--large-mib", type=int, default=32)
    parser.add_argument("--source", default="/dev/shm")
    parser.add_argument("--target", action="append", default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--get-latency-ms", type=float, action="append", default=None)
    parsed = parser.parse_args()
    parsed.target = parsed.target or ["/dev/shm", tempfile.gettempdir()]
    asyncio.run(main(parsed))
