"""Gateway ingest throughput, in process: UploadChunks over a real grpc.aio server into in-memory fakes.

Run: ``uv run python services/agent-gateway/tests/ingest_throughput.py [MiB] [rounds]``.
Sends ``MiB`` one-MiB random (incompressible, uploaded raw) chunks per round over
four concurrent UploadChunks streams and prints MB/s per round and the median.
What it measures: verification (keyed BLAKE3), packing, encryption and the
object-store put; the agent side (reading, chunking) is not included.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from gateway_helpers import GatewayHarness, aiter_of, upload_request  # noqa: E402
from strongroom_platform.testing import FakeClock  # noqa: E402

STREAMS = 4


async def one_round(gw: GatewayHarness, round_no: int, mib: int) -> float:
    agent = await gw.enrolled_agent(f"i-{round_no}", f"acct-{round_no}")
    job = f"job-{round_no}"
    await gw.request_backup(agent, job)
    key = await gw.key_of(agent.account_id)
    requests = [upload_request(job, key, os.urandom(1 << 20), compress=False) for _ in range(mib)]
    per_stream = [requests[i::STREAMS] for i in range(STREAMS)]
    start = time.perf_counter()
    await asyncio.gather(*(gw.stub.UploadChunks(aiter_of(batch), metadata=agent.md) for batch in per_stream))
    elapsed = time.perf_counter() - start
    gw.objects.clear()  # keep memory flat between rounds
    return mib * (1 << 20) / elapsed / 1e6


async def main(mib: int, rounds: int) -> None:
    gw = GatewayHarness(FakeClock())
    await gw.start()
    try:
        results = []
        for round_no in range(rounds):
            rate = await one_round(gw, round_no, mib)
            results.append(rate)
            print(f"round {round_no}: {mib} MiB at {rate:.0f} MB/s", flush=True)
        print(f"median: {statistics.median(results):.0f} MB/s over {rounds} rounds of {mib} MiB")
    finally:
        await gw.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 256, int(sys.argv[2]) if len(sys.argv) > 2 else 3))
