"""Production adapters of the platform ports, built from settings (Kafka, S3 or filesystem store).

The adapter modules are imported inside the functions so that tests, which
inject fakes, never load the Kafka and S3 client libraries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from strongroom_platform.clock import Clock
from strongroom_platform.eventbus import ConsumerFactory, EventConsumer, EventPublisher, Handler
from strongroom_platform.objectstore import ObjectStore
from strongroom_platform.settings import PlatformSettings


async def object_store(settings: PlatformSettings, clock: Clock) -> ObjectStore:
    from strongroom_platform.objectstore_factory import open_object_store

    return await open_object_store(settings, clock)


@asynccontextmanager
async def publisher(settings: PlatformSettings) -> AsyncIterator[EventPublisher]:
    """A started Kafka producer, stopped (flushed) when the context exits."""
    from strongroom_platform.eventbus_kafka import KafkaPublisher

    async with KafkaPublisher(settings.kafka_bootstrap, idempotent=settings.kafka_idempotent) as kafka:
        yield kafka


def consumer_factory(settings: PlatformSettings) -> ConsumerFactory:
    from strongroom_platform.eventbus_kafka import FaustConsumer

    def build(group_id: str, handlers: Mapping[str, Handler]) -> EventConsumer:
        return FaustConsumer(settings.kafka_bootstrap, group_id, handlers)

    return build
