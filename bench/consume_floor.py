"""The consume side's floor (ADR 0050): how long ``FaustConsumer`` takes to hand a burst to its handler.

    uv run python bench/consume_floor.py [--records 1000] [--handler noop|wait:MS|gateway] [--rounds 3]

Real Apache Kafka (one broker, a topic of 12 partitions). One ``FaustConsumer`` in this process
(one consumer group member: every partition) consumes ``--records`` records published at once in
one batch (``KafkaPublisher.publish_batch``, one key per record), ``--rounds`` times. The handler is
a ``BatchHandler``:

- ``noop``: returns at once: what is left is Faust's path (fetch, conductor, stream) and ours
  (``Record`` copies, the lag gauge, ``poison.run_batch``);
- ``wait:MS``: waits MS milliseconds per call (a transaction whose cost does not grow with its batch);
- ``gateway``: the gateway's own job-requested handler (``consumers.record_handlers``) on real
  PostgreSQL (durable): the batch's claims, locked instance read, job inserts, ``NOTIFY`` and commit.
  The instances are activated through the same consumer first.

Reported per round: time from the start of the publish to the first and the last record handled,
handler calls and their batch sizes, and the CPU seconds of this process (every thread: aiokafka's
consumer thread included) from the publish to the last record handled, the publish included.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from strongroom_platform.eventbus import BatchHandler, Handler, OutgoingRecord, Record
from strongroom_platform.eventbus_kafka import FaustConsumer, KafkaPublisher, create_topics
from strongroom_servers.kafka import LocalKafka

PARTITIONS = 12


class Probe:
    """Times every record handled and the size of every handler call."""

    def __init__(self) -> None:
        self.handled: dict[bytes, float] = {}
        self.calls: list[int] = []
        self.failures: list[str] = []
        self.expected = 0
        self.done = asyncio.Event()

    def mark(self, records: Sequence[Record]) -> None:
        now = time.perf_counter()
        self.calls.append(len(records))
        for record in records:
            self.handled.setdefault(record.value, now)
        if self.expected and len(self.handled) >= self.expected:
            self.done.set()


class Timed:
    """A ``BatchHandler`` that runs ``inner`` (a batch handler, or None for ``wait``) and marks the records."""

    def __init__(self, probe: Probe, inner: BatchHandler | None, wait: float, key_of: Any = None) -> None:
        self._probe = probe
        self._inner = inner
        self._wait = wait
        self._key_of = key_of

    async def __call__(self, record: Record, /) -> None:
        await self.handle_batch([record])

    async def handle_batch(self, records: Sequence[Record], /) -> None:
        if self._inner is not None:
            try:
                await self._inner.handle_batch(records)
            except Exception as exc:
                self._probe.failures.append(repr(exc)[:200])
                raise
        elif self._wait:
            await asyncio.sleep(self._wait)
        self._probe.mark([Record(r.topic, r.partition, r.offset, r.key, self._key_of(r)) for r in records])


async def gateway_handlers(work: Path, probe: Probe) -> tuple[dict[str, Handler], Any, Any]:
    """The gateway's handlers on a fresh durable PostgreSQL: (handlers, the server, the pool)."""
    from strongroom_cli.standalone import provision_database
    from strongroom_gateway import consumers
    from strongroom_gateway.repository import PgGatewayStore
    from strongroom_gateway.sessions import SessionRegistry
    from strongroom_platform.clock import SystemClock
    from strongroom_platform.db import create_pool
    from strongroom_servers.postgres import LocalPostgres

    pg = LocalPostgres(None, work / "pg", durable=True)
    await asyncio.to_thread(pg.start)
    _, databases = await provision_database(pg.dsn, clock_offset=dt.timedelta(0))
    pool = await create_pool(databases["gateway"], "gateway")
    handlers = consumers.record_handlers(PgGatewayStore(pool), SystemClock(), SessionRegistry())
    from strongroom.events.v1 import events_pb2
    from strongroom_platform import events

    def job_id_of(record: Record) -> bytes:
        event = events_pb2.JobRequested()
        event.ParseFromString(record.value)
        return event.job_id.encode()

    def instance_of(record: Record) -> bytes:
        return record.key or b""

    jobs = handlers[events.JOB_REQUESTED]
    activations = handlers[events.INSTANCE_ACTIVATED]
    assert isinstance(jobs, BatchHandler) and isinstance(activations, BatchHandler)
    return (
        {
            events.JOB_REQUESTED: Timed(probe, jobs, 0.0, job_id_of),
            events.INSTANCE_ACTIVATED: Timed(probe, activations, 0.0, instance_of),
        },
        pg,
        pool,
    )


def gateway_records(count: int, round_: int) -> tuple[list[OutgoingRecord], list[OutgoingRecord], list[bytes]]:
    """(activations, job requests, job ids) for ``count`` instances of round ``round_``."""
    import hashlib

    from strongroom.events.v1 import events_pb2
    from strongroom_platform import events
    from strongroom_platform.clock import SystemClock

    now = SystemClock().now()
    activations, jobs, job_ids = [], [], []
    for i in range(count):
        instance_id = f"probe-{round_}-{i:06d}"
        activated = events_pb2.InstanceActivated(
            meta=events.new_meta("scheduler", now),
            account_id="probe-account",
            instance_id=instance_id,
            region="r1",
            enrollment_token_sha256=hashlib.sha256(instance_id.encode()).hexdigest(),
            token_expires_at=events.to_timestamp(now + dt.timedelta(hours=1)),
        )
        activations.append(
            OutgoingRecord(events.INSTANCE_ACTIVATED, instance_id.encode(), activated.SerializeToString())
        )
        job_id = f"job-{instance_id}"
        job = events_pb2.JobRequested(
            meta=events.new_meta("scheduler", now), account_id="probe-account", instance_id=instance_id, job_id=job_id
        )
        jobs.append(OutgoingRecord(events.JOB_REQUESTED, instance_id.encode(), job.SerializeToString()))
        job_ids.append(job_id.encode())
    return activations, jobs, job_ids


async def burst(
    publisher: KafkaPublisher, probe: Probe, records: list[OutgoingRecord], ids: list[bytes]
) -> dict[str, Any]:
    probe.handled.clear()
    probe.calls.clear()
    probe.failures.clear()
    probe.expected = len(ids)
    probe.done.clear()
    cpu0 = time.process_time()
    started = time.perf_counter()
    outcomes = await publisher.publish_batch(records)
    published = time.perf_counter()
    assert not any(outcomes), outcomes
    await asyncio.wait_for(probe.done.wait(), timeout=120)
    cpu = time.process_time() - cpu0
    times = [(probe.handled[i] - started) * 1000 for i in ids]
    calls = list(probe.calls)
    return {
        "publish_ms": (published - started) * 1000,
        "first_ms": min(times),
        "median_ms": statistics.median(times),
        "last_ms": max(times),
        "calls": len(calls),
        "batch_median": statistics.median(calls),
        "batch_max": max(calls),
        "cpu_s": cpu,
        "load": os.getloadavg()[0],
        "failed_batches": len(probe.failures),
    }


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="strongroom-bench-consume-"))
    kafka = LocalKafka(work / "kafka")
    probe = Probe()
    pg = pool = None
    consumer: FaustConsumer | None = None
    results = []
    try:
        await asyncio.to_thread(kafka.start)
        topic = f"probe-{uuid.uuid4().hex[:8]}"
        if args.handler == "gateway":
            handlers, pg, pool = await gateway_handlers(work, probe)
            os.environ.setdefault("STRONGROOM_KAFKA_PARTITIONS", str(PARTITIONS))
            await create_topics(kafka.bootstrap, list(handlers), partitions=PARTITIONS)
        else:
            wait = float(args.handler.split(":", 1)[1]) / 1000 if args.handler.startswith("wait:") else 0.0
            handlers = {topic: Timed(probe, None, wait, lambda r: r.value)}
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)  # unregistered: create_topics makes 1
            await admin.start()
            try:
                await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
            finally:
                await admin.close()
        consumer = FaustConsumer(kafka.bootstrap, f"probe-{uuid.uuid4().hex[:8]}", handlers, partitions=PARTITIONS)
        async with KafkaPublisher(kafka.bootstrap, idempotent=True) as publisher:
            await consumer.start()
            # Warm-up: one record per partition until every partition is assigned and handled.
            for round_ in range(args.rounds + 1):
                if args.handler == "gateway":
                    activations, jobs, ids = gateway_records(args.records if round_ else 24, round_)
                    await burst(publisher, probe, activations, [r.key for r in activations])
                    await asyncio.sleep(1)
                    result = await burst(publisher, probe, jobs, ids)
                else:
                    count = args.records if round_ else 24
                    records = [
                        OutgoingRecord(topic, f"key-{round_}-{i}".encode(), f"value-{round_}-{i}".encode())
                        for i in range(count)
                    ]
                    result = await burst(publisher, probe, records, [r.value for r in records])
                if round_:
                    results.append(result)
                    print(
                        f"round {round_}: publish {result['publish_ms']:.0f} ms, handled {result['first_ms']:.0f}"
                        f"–{result['last_ms']:.0f} ms (median {result['median_ms']:.0f}), {result['calls']} calls"
                        f" (median {result['batch_median']:.0f}, max {result['batch_max']}),"
                        f" CPU {result['cpu_s']:.3f} s,"
                        f" load {result['load']:.1f}, failed batches {result['failed_batches']}"
                        f" {probe.failures[:1]}",
                        flush=True,
                    )
                await asyncio.sleep(args.pause)
    finally:
        if consumer is not None:
            await consumer.stop()
        if pool is not None:
            await pool.close()
        kafka.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--handler", default="noop", help="noop, wait:MS or gateway")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between rounds")
    arguments = parser.parse_args()
    rounds = asyncio.run(main(arguments))
    print(f"`bench/consume_floor.py {' '.join(sys.argv[1:])}`: median last-handled", end=" ")
    last = statistics.median(r["last_ms"] for r in rounds)
    print(f"{last:.0f} ms, CPU {statistics.median(r['cpu_s'] for r in rounds):.3f} s")
