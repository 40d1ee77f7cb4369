"""What a request to S3 costs the store's process, with the server closing or keeping connections (ADR 0070).

    uv run python bench/s3_store_requests.py [--rounds 5] [--requests 600] [--size 1048576] [--plain]

Two versitygw servers on one data directory each (S3 over TLS unless ``--plain``): one with
versitygw's own default, which answers every request with ``Connection: close`` (``closes``), one with
``--keep-alive`` (the launcher's default). One ``S3ObjectStore`` (``max_concurrency`` 8, as the
gateway's) per server; 16 objects of 4 MiB are put once. Then ``--rounds`` rounds, the two sides in
turn: ``--requests`` range GETs of ``--size`` bytes, 8 in flight, as a restore reads packs. Each run
prints its wall time, this process's CPU seconds (the store: its event loop and worker threads),
the server's CPU seconds, the connections the store opened (counted by wrapping urllib3's
``_new_conn``) and the 1-minute load average; the table gives the medians and keep-alive / closes,
and the CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import urllib3.connection
from strongroom_platform import certs
from strongroom_platform.objectstore_s3 import S3ObjectStore
from strongroom_platform.settings import S3Settings
from strongroom_servers import LocalVersityGW, S3ServerTls

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from strongroom_runner import cpu_seconds  # noqa: E402

OBJECTS = 16
OBJECT_SIZE = 4 << 20
CONCURRENCY = 8


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class ConnectionCount:
    """Counts urllib3's new TCP connections (each a TLS handshake over HTTPS) in this process."""

    def __init__(self) -> None:
        self.count = 0
        original = urllib3.connection.HTTPConnection._new_conn
        counter = self

        def counted(conn: urllib3.connection.HTTPConnection) -> object:
            counter.count += 1
            return original(conn)

        urllib3.connection.HTTPConnection._new_conn = counted  # type: ignore[method-assign,assignment]


async def reads(store: S3ObjectStore, requests: int, size: int) -> None:
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(n: int) -> None:
        async with slots:
            offset = (n * 7919 * size) % (OBJECT_SIZE - size)
            data = await store.get(f"o{n % OBJECTS}", offset=offset, length=size)
            if len(data) != size:
                raise RuntimeError(f"read {len(data)} bytes of {size}")

    await asyncio.gather(*(one(n) for n in range(requests)))


async def amain(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="s3-store-requests-"))
    tls = None
    if not args.plain:
        pki = work / "pki"
        cert, key = certs.ensure_local_pki(pki, ["s3"])["s3"]
        tls = S3ServerTls(cert, key, pki / certs.CA_CERT_FILE)
    counter = ConnectionCount()
    servers: dict[str, LocalVersityGW] = {}
    stores: dict[str, S3ObjectStore] = {}
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for side, keep_alive in {"closes": False, "keep-alive": True}.items():
            server = servers[side] = LocalVersityGW(work / side, tls=tls, keep_alive=keep_alive).start()
            settings = S3Settings(
                server.endpoint,
                server.access_key,
                server.secret_key,
                server.secure,
                f"requests-{uuid.uuid4().hex[:8]}",
                "us-east-1",
                tls.ca_file if tls is not None else None,
            )
            store = stores[side] = S3ObjectStore.from_settings(settings, max_concurrency=CONCURRENCY)
            await store.ensure_bucket()
            for n in range(OBJECTS):
                await store.put(f"o{n}", os.urandom(OBJECT_SIZE), new_key=True)
            results[side] = {}
        for round_no in range(args.rounds):
            for side, store in stores.items():
                server_pid = servers[side].pid
                assert server_pid is not None
                load = os.getloadavg()[0]
                conns, cpu, s3_cpu, wall = counter.count, time.process_time(), cpu_seconds(server_pid), time.monotonic()
                await reads(store, args.requests, args.size)
                wall = time.monotonic() - wall
                cpu = time.process_time() - cpu
                s3_cpu = cpu_seconds(server_pid) - s3_cpu
                conns = counter.count - conns
                for metric, value in (
                    ("wall (s)", wall),
                    ("store CPU (s)", cpu),
                    ("versitygw CPU (s)", s3_cpu),
                    ("new connections", conns),
                ):
                    results[side].setdefault(metric, []).append(value)
                log(
                    f"round {round_no + 1} {side}: {args.requests} range GETs of {args.size} B in {wall:.2f}s,"
                    f" store CPU {cpu:.2f}s, versitygw CPU {s3_cpu:.2f}s, {conns} new connections (load {load:.1f})"
                )
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    transport = "HTTP" if args.plain else "HTTPS"
    print(
        f"\n{args.requests} range GETs of {args.size} B, {CONCURRENCY} in flight, S3 over {transport}, "
        f"{args.rounds} rounds, sides alternating\n"
    )
    print("| metric | closes (median) | keep-alive (median) | keep-alive / closes |")
    print("|---|---:|---:|---:|")
    for metric in results["closes"]:
        a, b = statistics.median(results["closes"][metric]), statistics.median(results["keep-alive"][metric])
        print(f"| {metric} | {a:.2f} | {b:.2f} | {b / a:.3f} |" if a else f"| {metric} | {a:.2f} | {b:.2f} | — |")
    for metric in ("store CPU (s)", "versitygw CPU (s)"):
        a, b = (statistics.median(results[side][metric]) / args.requests * 1e3 for side in ("closes", "keep-alive"))
        print(f"| {metric.removesuffix(' (s)')} per request (ms) | {a:.3f} | {b:.3f} | {b / a:.3f} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--plain", action="store_true", help="S3 over plain HTTP (default: HTTPS)")
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
