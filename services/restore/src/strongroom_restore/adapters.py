"""Production adapters of the platform ports, built from settings (Kafka).

Kept apart from ``bootstrap`` so that tests, which inject fakes, never import
the Kafka client libraries.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from strongroom_platform.eventbus import ConsumerFactory, EventPublisher
from strongroom_platform.settings import PlatformSettings


def _platform(module: str) -> Any:
    # Imported only when used, and by name: the Kafka adapters are an optional part of the platform.
    return importlib.import_module(f"strongroom_platform.{module}")


@asynccontextmanager
async def publisher(settings: PlatformSettings) -> AsyncIterator[EventPublisher]:
    kafka = _platform("eventbus_kafka").KafkaPublisher(settings.kafka_bootstrap, idempotent=settings.kafka_idempotent)
    await kafka.start()
    try:
        yield cast(EventPublisher, kafka)
    finally:
        await kafka.stop()


def consumer_factory(settings: PlatformSettings) -> ConsumerFactory:
    module = _platform("eventbus_kafka")

    def build(group_id: str, handlers: Any) -> Any:
        return module.FaustConsumer(settings.kafka_bootstrap, group_id, handlers)

    return cast(ConsumerFactory, build)
