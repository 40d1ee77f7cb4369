"""The event bus contract run against the in-memory fake, Apache Kafka and Tansu.

Real brokers: KafkaPublisher + FaustConsumer. Tansu (standalone mode) refuses
idempotent producers, and holds a JoinGroup for half the session timeout, so its
consumers use a short session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from strongroom_platform.eventbus import EventConsumer, EventPublisher, Handler
from strongroom_platform.eventbus_kafka import FaustConsumer, KafkaPublisher, create_topics
from strongroom_platform.testing import InMemoryEventBus
from strongroom_servers import LocalTansu
from strongroom_testing.contracts import BusHarness, EventBusContract


class InMemoryHarness:
    def __init__(self) -> None:
        self.bus = InMemoryEventBus()

    @property
    def publisher(self) -> EventPublisher:
        return self.bus

    def consumer(self, group_id: str, handlers: Mapping[str, Handler]) -> EventConsumer:
        return self.bus.consumer(group_id, handlers)

    async def create_topics(self, topics: Sequence[str]) -> None:
        return None

    async def read_topic(self, topic: str, count: int, within: float) -> list[tuple[bytes | None, bytes]]:
        return [(key, value) for key, value in self.bus.topics.get(topic, [])[:count]]


class KafkaHarness:
    """KafkaPublisher + FaustConsumer on a real broker; reads topics back with a plain aiokafka consumer."""

    def __init__(self, bootstrap: str, publisher: KafkaPublisher, *, session_timeout: float) -> None:
        self.bootstrap = bootstrap
        self._publisher = publisher
        self._session_timeout = session_timeout

    @property
    def publisher(self) -> EventPublisher:
        return self._publisher

    def consumer(self, group_id: str, handlers: Mapping[str, Handler]) -> EventConsumer:
        return FaustConsumer(
            self.bootstrap,
            group_id,
            handlers,
            session_timeout=self._session_timeout,
            retry_initial=0.05,
            retry_max=0.5,
            stop_timeout=10.0,
        )

    async def create_topics(self, topics: Sequence[str]) -> None:
        await create_topics(self.bootstrap, topics)

    async def read_topic(self, topic: str, count: int, within: float) -> list[tuple[bytes | None, bytes]]:
        return [(key, value) for key, value, _ in await read_records(self.bootstrap, topic, count, within)]


async def read_records(
    bootstrap: str, topic: str, count: int, within: float
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """The first ``count`` records of partition 0 of ``topic``: (key, value, headers)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        found: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
        async with asyncio.timeout(within):
            while len(found) < count:
                message = await consumer.getone()
                found.append((message.key, message.value or b"", list(message.headers)))
        return found
    finally:
        await consumer.stop()


class TestInMemoryEventBus(EventBusContract):
    @pytest.fixture
    def bus(self) -> BusHarness:
        return InMemoryHarness()


@pytest.mark.integration
class TestKafkaEventBus(EventBusContract):
    @pytest.fixture
    async def bus(self, kafka_bootstrap: str) -> AsyncIterator[BusHarness]:
        async with KafkaPublisher(kafka_bootstrap, idempotent=True) as publisher:
            yield KafkaHarness(kafka_bootstrap, publisher, session_timeout=10.0)


@pytest.fixture(scope="module")
def tansu_bootstrap() -> Iterator[str]:
    with LocalTansu() as tansu:
        yield tansu.bootstrap


@pytest.mark.integration
class TestTansuEventBus(EventBusContract):
    @pytest.fixture
    async def bus(self, tansu_bootstrap: str) -> AsyncIterator[BusHarness]:
        async with KafkaPublisher(tansu_bootstrap, idempotent=False) as publisher:
            yield KafkaHarness(tansu_bootstrap, publisher, session_timeout=2.0)
