"""Partitioned consumers under a rebalance (ADR 0050): two members of one group on real Kafka,
one killed mid-stream; every event's effect happens exactly once and in order per key, and the
survivor owns and works the killed member's partitions within ``TAKEOVER_BOUND`` seconds."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from partition_worker import SCHEMA, handler_for
from strongroom_platform.eventbus_kafka import FaustConsumer, KafkaPublisher

WORKER = Path(__file__).with_name("partition_worker.py")
KEYS = 40
PARTITIONS = 6
TAIL = 400  # events published after the kill
SESSION_TIMEOUT = 6.0
# From the kill until the survivor handled a record of every partition the killed member had:
# the session timeout (the coordinator notices the death) plus a rebalance, on a loaded machine.
TAKEOVER_BOUND = 30.0


async def _count(pool: asyncpg.Pool, query: str, *args: object) -> int:
    return int(await pool.fetchval(query, *args))


async def _wait(pool: asyncpg.Pool, query: str, at_least: int, within: float, *args: object) -> None:
    deadline = time.monotonic() + within
    while (count := await _count(pool, query, *args)) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"{query!r}: {count} after {within}s, wanted {at_least}")
        await asyncio.sleep(0.1)


async def _publish(publisher: KafkaPublisher, topic: str, ids: list[str], enough: asyncio.Event) -> None:
    """Publish about 400 events a second until ``enough`` is set, then ``TAIL`` more (events after the
    kill), so the stream outlasts the rebalances however slow the machine is."""
    i = 0
    tail = None
    while tail is None or i < tail:
        if tail is None and enough.is_set():
            tail = i + TAIL
        event_id = uuid.uuid4().hex
        key = f"instance-{i % KEYS}"
        await publisher.publish(topic, key.encode(), f"{key}:{i // KEYS}:{event_id}".encode())
        ids.append(event_id)
        i += 1
        if i % 20 == 0:
            await asyncio.sleep(0.05)


@pytest.mark.integration
@pytest.mark.timeout(600)
async def test_a_killed_member_loses_nothing_and_duplicates_no_effect(kafka_bootstrap: str, pg_dsn: str) -> None:
    topic = f"rebalance-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=8)
    await pool.execute(SCHEMA)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent), *sys.path])}
    first = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), kafka_bootstrap, pg_dsn, topic, group, "A", env=env, stdout=subprocess.PIPE
    )
    second: FaustConsumer | None = None
    try:
        assert first.stdout is not None
        assert (await first.stdout.readline()).strip() == b"STARTED"
        ids: list[str] = []
        async with KafkaPublisher(kafka_bootstrap, idempotent=True) as publisher:
            enough = asyncio.Event()
            producing = asyncio.create_task(_publish(publisher, topic, ids, enough))
            await _wait(pool, "SELECT count(*) FROM deliveries WHERE worker = 'A'", 300, 60)
            # A second member joins: the group rebalances and both work.
            second = FaustConsumer(
                kafka_bootstrap,
                group,
                {topic: handler_for(pool, "B", 0.002)},
                session_timeout=SESSION_TIMEOUT,
                commit_interval=0.5,
            )
            await second.start()
            await _wait(pool, "SELECT count(*) FROM deliveries WHERE worker = 'B'", 100, 60)
            a_before_kill = await _count(pool, "SELECT count(*) FROM deliveries WHERE worker = 'A'")
            killed_at = await pool.fetchval("SELECT clock_timestamp()")
            first.send_signal(signal.SIGKILL)  # no commit, no leaving the group: mid-stream
            await first.wait()
            enough.set()
            await producing
            await _wait(pool, "SELECT count(DISTINCT event_id) FROM effects", len(ids), 180)
            drained = (await pool.fetchval("SELECT max(at) FROM deliveries") - killed_at).total_seconds()
        await asyncio.sleep(1.0)  # anything still redelivered now would show as a second effect
        effects = await pool.fetch("SELECT event_id, key, seq, worker FROM effects ORDER BY id")
        deliveries = await _count(pool, "SELECT count(*) FROM deliveries")
        partitions_a = await _count(pool, "SELECT count(DISTINCT partition) FROM deliveries WHERE worker = 'A'")
        partitions_b = await _count(pool, "SELECT count(DISTINCT partition) FROM deliveries WHERE worker = 'B'")
        # A's partitions when it died (those of its last deliveries: 400 events/s over 40 keys reach
        # each of them many times a second) and, per partition, when B first handled one after the kill.
        held = await pool.fetch(
            "SELECT DISTINCT partition FROM (SELECT partition FROM deliveries WHERE worker = 'A'"
            " ORDER BY id DESC LIMIT 60) AS last"
        )
        takeovers = await pool.fetch(
            "SELECT partition, min(at) AS at FROM deliveries WHERE worker = 'B' AND at > $1"
            " AND partition = ANY($2::int[]) GROUP BY partition",
            killed_at,
            [row["partition"] for row in held],
        )
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
        if second is not None:
            await second.stop()
        await pool.close()
    # Exactly once: one effect per event, none missing, none twice.
    assert len(effects) == len(ids)
    assert sorted(r["event_id"] for r in effects) == sorted(ids)
    # Some records were delivered again after the kill (the offsets A had not committed) ...
    assert deliveries > len(ids), "the kill caused no redelivery: the test did not exercise a rebalance"
    # ... and both members did work, each on partitions of its own.
    assert a_before_kill >= 300 and partitions_a >= 1 and partitions_b == PARTITIONS
    # The survivor took over every partition of the killed member, within the bound.
    assert held and len(takeovers) == len(held)
    takeover = max((row["at"] - killed_at).total_seconds() for row in takeovers)
    assert takeover < TAKEOVER_BOUND, f"B took {takeover:.1f}s to work all of A's partitions after the kill"
    # Per key, effects happened in publishing order.
    seqs: dict[str, list[int]] = defaultdict(list)
    for row in effects:
        seqs[row["key"]].append(row["seq"])
    assert all(values == sorted(values) == list(range(len(values))) for values in seqs.values())
    print(
        f"events {len(ids)}, deliveries {deliveries} ({deliveries - len(ids)} again after the kill);"
        f" kill → B works all of A's {len(held)} partitions {takeover:.1f}s, every event handled {drained:.1f}s"
    )
