"""Outbox relay throughput (ADR 0050): the relay before this change and the batched one, in one invocation.

    uv run python bench/outbox.py [--events 100000] [--before-events 10000] [--keys 10000]
                                  [--before-ref f59919c] [--out bench/results/FILE.md]

Real PostgreSQL (durable, as in production) and real Apache Kafka (KRaft, one broker) from
``strongroom_servers``; the topic has the registry's production partition count (12). Each case
fills an outbox with ``JobRequested`` events keyed by ``--keys`` instance ids (as the scheduler
enqueues them), then times the relay draining it to Kafka with the idempotent producer
(``acks=all``), and checks that the topic received every event:

- ``before``: ``OutboxRelay`` as it was at ``--before-ref`` (read from git: one ``send_and_wait``
  per event, 200 rows per transaction, one relay per schema);
- ``after``: the batched relay of this tree (``publish_batch``, 2,000 rows per pass);
- ``after, 2 relays``: two relays (two producers) on the same outbox at once, as two replicas.

Events per second = events / seconds from the first pass to an empty outbox.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import SystemClock
from strongroom_platform.db import Migration, create_pool, migrate, outbox_shard_migration, outbox_traceparent_migration
from strongroom_platform.eventbus_kafka import KafkaPublisher
from strongroom_platform.events import new_meta, topic_spec
from strongroom_platform.outbox import OUTBOX_DDL, OutboxRelay
from strongroom_servers.kafka import LocalKafka
from strongroom_servers.postgres import LocalPostgres

REPO = Path(__file__).resolve().parents[1]
OUTBOX_SOURCE = "libs/platform/src/strongroom_platform/outbox.py"
BEFORE_REF = "f59919c"  # main before ADR 0050


def relay_module_at(ref: str) -> types.ModuleType:
    """The outbox module as it was at ``ref`` (read with git), loaded beside the current one."""
    source = subprocess.run(
        ["git", "show", f"{ref}:{OUTBOX_SOURCE}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    spec = importlib.util.spec_from_loader(f"outbox_at_{ref}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{ref}:{OUTBOX_SOURCE}", "exec"), module.__dict__)  # noqa: S102
    return module


async def fill(pool: asyncpg.Pool, schema: str, events: int, keys: int) -> None:
    """``events`` rows as ``outbox.enqueue`` writes them (COPY: filling is not what is measured)."""
    now = SystemClock().now()
    rows = []
    for i in range(events):
        instance = f"instance-{i % keys:06d}"
        event = events_pb2.JobRequested(
            meta=new_meta("scheduler", now), account_id="acct", instance_id=instance, job_id=f"job-{i}"
        )
        rows.append(("job-requested", instance.encode(), event.SerializeToString(), None))
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "outbox", records=rows, columns=["topic", "key", "payload", "traceparent"], schema_name=schema
        )


async def topic_total(bootstrap: str, topic: str, partitions: int) -> int:
    """How many records the topic holds (the sum of its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def run_case(
    name: str, dsn: str, bootstrap: str, relay_class: type, *, events: int, keys: int, relays: int, **options: object
) -> dict[str, object]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    topic = f"job-requested-{schema}"
    partitions = topic_spec("job-requested").partitions
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    pool = await create_pool(dsn, schema, max_size=4 + 2 * relays)
    await migrate(
        pool,
        schema,
        [Migration(1, OUTBOX_DDL), outbox_traceparent_migration(2), outbox_shard_migration(3)],
    )
    await fill(pool, schema, events, keys)
    await pool.execute("UPDATE outbox SET topic = $1", topic)
    await pool.execute("VACUUM ANALYZE outbox")
    publishers = [KafkaPublisher(bootstrap, idempotent=True) for _ in range(relays)]
    for publisher in publishers:
        await publisher.start()
        await publisher.publish(topic, b"warm-up", b"")  # metadata fetched before timing
    instances = [relay_class(pool, schema, publisher, SystemClock(), **options) for publisher in publishers]
    passes = [0] * relays

    async def drain(index: int) -> None:
        relay = instances[index]
        while await pool.fetchval("SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)"):
            published = await relay.publish_pending()
            passes[index] += 1
            if not published:
                await asyncio.sleep(0.001)  # the other relay holds every pending shard right now

    started = time.perf_counter()
    await asyncio.gather(*(drain(i) for i in range(relays)))
    seconds = time.perf_counter() - started
    for publisher in publishers:
        await publisher.stop()
    await pool.close()
    received = await topic_total(bootstrap, topic, partitions) - relays  # minus the warm-up records
    if received < events:
        raise SystemExit(f"{name}: the topic received {received} of {events} events")
    rate = events / seconds
    print(f"{name:<18} {events:>8} events in {seconds:7.2f} s = {rate:>8.0f} events/s (passes {passes})", flush=True)
    return {"case": name, "events": events, "seconds": seconds, "rate": rate, "received": received}


async def main(args: argparse.Namespace) -> list[dict[str, object]]:
    before = relay_module_at(args.before_ref).OutboxRelay
    work = Path(tempfile.mkdtemp(prefix="strongroom-bench-outbox-"))
    pg = LocalPostgres(None, work / "pg", durable=True)
    kafka = LocalKafka(work / "kafka")
    results = []
    try:
        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(kafka.start)
        for _ in range(args.runs):
            results.append(
                await run_case(
                    "before", pg.dsn, kafka.bootstrap, before, events=args.before_events, keys=args.keys, relays=1
                )
            )
            results.append(
                await run_case(
                    "after", pg.dsn, kafka.bootstrap, OutboxRelay, events=args.events, keys=args.keys, relays=1
                )
            )
            results.append(
                await run_case(
                    "after, 2 relays",
                    pg.dsn,
                    kafka.bootstrap,
                    OutboxRelay,
                    events=args.events,
                    keys=args.keys,
                    relays=2,
                )
            )
    finally:
        kafka.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def report(results: list[dict[str, object]], args: argparse.Namespace) -> str:
    lines = [
        f"# Outbox relay throughput, {dt.date.today().isoformat()}",
        "",
        f"`uv run python bench/outbox.py {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()},"
        f" {_cpus()} CPUs (shared with other work; load average"
        f" {'/'.join(f'{x:.1f}' for x in os.getloadavg())} at the end)."
        " PostgreSQL durable, Apache Kafka 1 broker, topic of"
        f" 12 partitions, idempotent producer (acks=all), {args.keys} keys. `before` = `OutboxRelay` at"
        f" `{args.before_ref}`.",
        "",
        "| case | events | seconds | events/s |",
        "|---|---:|---:|---:|",
    ]
    for row in results:
        lines.append(f"| {row['case']} | {row['events']} | {row['seconds']:.2f} | {row['rate']:.0f} |")
    return "\n".join(lines) + "\n"


def _cpus() -> int:
    return os.cpu_count() or 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--before-events", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--before-ref", default=BEFORE_REF)
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    table = report(asyncio.run(main(arguments)), arguments)
    print(table)
    if arguments.out:
        arguments.out.write_text(table)
