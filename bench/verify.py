"""Verification throughput: Strongroom's server-side verify against ``restic check --read-data``, same data.

    uv run python bench/verify.py [--quick] [--runs 3] [--out bench/results/DATE-verify.md]

One invocation: the data set (``dataset.py``) is backed up once by Strongroom (the five services,
versitygw S3, unthrottled) and once by restic into its own bucket of the same versitygw server;
then, per run, alternating, Strongroom verifies the point (``VerifyService.StartVerification``,
polled every 50 ms until it finishes; rate limit off: ``STRONGROOM_GATEWAY_VERIFY_MBPS=0``) and
restic runs ``check --read-data`` (its cache cleared first, so it reads everything). Both read
every stored byte back from S3, decrypt it and hash every chunk.

Reported per engine (median of the runs): wall time, stored bytes read per second and data-set
bytes verified per second, and the ratio Strongroom / restic of the wall times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
import peers  # noqa: E402
from run import s3_bucket  # noqa: E402
from strongroom.gateway.v1 import verify_pb2, verify_pb2_grpc  # noqa: E402
from strongroom_cli.stack import operator_channel  # noqa: E402
from strongroom_platform.admin import create_admin_token  # noqa: E402
from strongroom_runner import StrongroomBench  # noqa: E402

FINISHED = {
    verify_pb2.VERIFICATION_STATE_CLEAN,
    verify_pb2.VERIFICATION_STATE_DAMAGED,
    verify_pb2.VERIFICATION_STATE_FAILED,
}


def tree_bytes(root: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _s, fs in os.walk(root) for f in fs)


def bucket_bytes(bench: StrongroomBench, bucket: str, prefix: str = "") -> int:
    return sum(o.size or 0 for o in bench.minio().list_objects(bucket, prefix=prefix, recursive=True))


async def strongroom_verify(
    stub: verify_pb2_grpc.VerifyServiceAsyncStub, account: str, point_id: str
) -> tuple[float, verify_pb2.Verification]:
    started = time.perf_counter()
    v = await stub.StartVerification(verify_pb2.StartVerificationRequest(account_id=account, point_id=point_id))
    while v.state not in FINISHED:
        await asyncio.sleep(0.05)
        v = await stub.GetVerification(verify_pb2.GetVerificationRequest(verification_id=v.verification_id))
    wall = time.perf_counter() - started
    if v.state != verify_pb2.VERIFICATION_STATE_CLEAN:
        raise RuntimeError(f"verification ended {verify_pb2.VerificationState.Name(v.state)}: {v.error}")
    return wall, v


def _row(engine: str, walls: list[float], stored: int, size: int) -> str:
    wall = statistics.median(walls)
    return (
        f"| {engine} | {wall:.2f} ({min(walls):.2f}-{max(walls):.2f}) | {stored / 1e6:.0f}"
        f" | {stored / 1e6 / wall:.0f} | {size / 1e6 / wall:.0f} |"
    )


async def main(args: argparse.Namespace) -> str:
    work: Path = args.work
    day1 = work / ("day1-quick" if args.quick else "day1")
    if not day1.exists():
        print(f"building data set at {day1}", flush=True)
        dataset.build(day1, quick=args.quick)
    size = tree_bytes(day1)
    # The composition root of this script: the gateway verifies without a rate limit, and runs no sample.
    os.environ["STRONGROOM_GATEWAY_VERIFY_MBPS"] = "0"
    os.environ["STRONGROOM_GATEWAY_VERIFY_DAILY"] = "0"
    bench = StrongroomBench(work / "strongroom-verify")
    await bench.start(unthrottled_gateway=True)
    try:
        assert bench.stack is not None
        inst = await bench.new_instance(day1, priority="high", unthrottled=True)
        backup = await bench.backup(inst)
        point_id = await bench.latest_point(inst, 1)
        stored = bucket_bytes(bench, bench.bucket, f"packs/{inst.account_id}/")
        print(
            f"strongroom: backed up {size / 1e6:.0f} MB in {backup.wall:.1f} s; {stored / 1e6:.0f} MB of packs",
            flush=True,
        )
        await inst.agent.stop()

        restic = peers.Peer("restic", work / "verify-restic", s3_bucket(bench, "restic"))
        restic.init()
        restic.backup(day1, "day1")
        assert restic.s3 is not None
        restic_stored = bucket_bytes(bench, restic.s3.bucket)
        print(f"restic: {restic_stored / 1e6:.0f} MB stored", flush=True)

        token = await create_admin_token(bench.env["STRONGROOM_PG_MIGRATE_DSN"], inst.account_id, name="bench-verify")
        channel = operator_channel(bench.stack.addresses["gateway"], ca_file=bench.ca_file, token=token)
        stub = verify_pb2_grpc.VerifyServiceStub(channel)
        ours: list[float] = []
        theirs: list[float] = []
        read = 0
        try:
            for run in range(args.runs):
                wall, v = await strongroom_verify(stub, inst.account_id, point_id)
                ours.append(wall)
                read = v.bytes_read
                shutil.rmtree(restic.work / "cache", ignore_errors=True)
                theirs.append(restic.check_read_data().wall)
                print(
                    f"run {run + 1}: strongroom {wall:.2f} s ({v.packs_checked} packs), restic {theirs[-1]:.2f} s",
                    flush=True,
                )
        finally:
            await channel.close()
    finally:
        await bench.stop()

    s, r = statistics.median(ours), statistics.median(theirs)
    lines = [
        f"# Verify throughput ({'quick subset' if args.quick else 'full data set'}, {args.runs} runs, median)",
        "",
        f"- data set: {(day1 / 'DATASET').read_text().splitlines()[0]}; {size / 1e9:.2f} GB",
        f"- machine: {os.cpu_count()} cores; S3: one local versitygw for both; Strongroom verify rate limit off",
        "",
        "| engine | wall s (min-max) | stored MB | stored MB/s | data set MB/s |",
        "|---|---|---|---|---|",
        _row("Strongroom verify (point)", ours, read, size),
        _row("restic check --read-data", theirs, restic_stored, size),
        "",
        f"Strongroom / restic wall time: **{s / r:.2f}** (< 1: Strongroom verifies the same data faster).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the ~190 MB subset")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "strongroom-bench")
    parser.add_argument("--out", type=Path, help="also write the report here (markdown)")
    arguments = parser.parse_args()
    report = asyncio.run(main(arguments))
    print(report)
    if arguments.out:
        arguments.out.write_text(report)
