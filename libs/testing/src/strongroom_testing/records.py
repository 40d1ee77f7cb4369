"""Finding a record in a real Kafka topic, whatever partition its key went to (topics have 12, ADR 0050)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

__all__ = ["find_record"]


async def find_record(
    bootstrap: str,
    topic: str,
    match: Callable[[bytes | None, bytes], bool],
    *,
    within: float = 30.0,
) -> tuple[bytes | None, bytes, dict[str, bytes]]:
    """(key, value, headers) of the first record of ``topic``, in any partition, whose (key, value)
    satisfies ``match``; raises TimeoutError after ``within`` seconds. Reads without a group."""
    # Without a group, a subscription is assigned every partition of the topic, read from the start.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(within):
            while True:
                message = await consumer.getone()
                value = message.value or b""
                if match(message.key, value):
                    return message.key, value, {name: bytes(v) for name, v in message.headers}
    finally:
        await consumer.stop()
