"""A consumer-group member for the rebalance test, run as its own process (so it can be killed).

Usage: ``python partition_worker.py BOOTSTRAP DSN TOPIC GROUP NAME``. Every record's value is
``<key>:<seq>:<event id>``; the handler logs the delivery (autocommit), then claims the event id in
the inbox and writes the effect in one transaction — the shape of every service's handler.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import asyncpg
from strongroom_platform.eventbus import Record
from strongroom_platform.eventbus_kafka import FaustConsumer
from strongroom_platform.inbox import claim_event

SCHEMA = """
CREATE TABLE IF NOT EXISTS processed_events (
    consumer text NOT NULL, event_id text NOT NULL, processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE TABLE IF NOT EXISTS effects (
    id bigserial PRIMARY KEY, event_id text NOT NULL, key text NOT NULL, seq int NOT NULL, worker text NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id bigserial PRIMARY KEY, event_id text NOT NULL, partition int NOT NULL, worker text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


def handler_for(pool: asyncpg.Pool, name: str, pause: float):  # type: ignore[no-untyped-def]
    async def handle(record: Record) -> None:
        key, seq, event_id = record.value.decode().split(":")
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO deliveries (event_id, partition, worker) VALUES ($1, $2, $3)",
                event_id,
                record.partition,
                name,
            )
            async with conn.transaction():
                if await claim_event(conn, "rebalance-test", event_id):
                    await conn.execute(
                        "INSERT INTO effects (event_id, key, seq, worker) VALUES ($1, $2, $3, $4)",
                        event_id,
                        key,
                        int(seq),
                        name,
                    )
        await asyncio.sleep(pause)  # a handler that takes a while, so a kill lands mid-stream

    return handle


async def main(bootstrap: str, dsn: str, topic: str, group: str, name: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
    consumer = FaustConsumer(
        bootstrap, group, {topic: handler_for(pool, name, 0.002)}, session_timeout=6.0, commit_interval=0.5
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await consumer.start()
    print("STARTED", flush=True)
    await stop.wait()
    await consumer.stop()
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
