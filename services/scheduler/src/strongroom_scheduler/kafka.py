"""The Kafka adapters of the event bus port (``strongroom_platform.eventbus_kafka``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from strongroom_platform.eventbus import ConsumerFactory, EventConsumer, EventPublisher, Handler
from strongroom_platform.eventbus_kafka import FaustConsumer, KafkaPublisher

from strongroom_scheduler.settings import Settings


@asynccontextmanager
async def publisher(settings: Settings) -> AsyncIterator[EventPublisher]:
    """A started Kafka producer, stopped (flushed) on exit."""
    async with KafkaPublisher(settings.kafka_bootstrap, idempotent=settings.kafka_idempotent) as producer:
        yield producer


def consumer_factory(settings: Settings) -> ConsumerFactory:
    def factory(group_id: str, handlers: Mapping[str, Handler]) -> EventConsumer:
        return FaustConsumer(settings.kafka_bootstrap, group_id, handlers)

    return factory
