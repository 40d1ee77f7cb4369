"""The Kafka adapters of the event bus port, loaded only when the process really talks to Kafka."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from strongroom_platform.eventbus import EventConsumer, EventPublisher, Handler

from strongroom_scheduler.settings import Settings


class KafkaAdapters:
    """Publisher and consumer factory over ``strongroom_platform.eventbus_kafka``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._module: Any = None
        self._publisher: Any = None

    async def start(self) -> None:
        try:
            self._module = importlib.import_module("strongroom_platform.eventbus_kafka")
        except ModuleNotFoundError as exc:
            raise RuntimeError("the Kafka adapters (strongroom_platform.eventbus_kafka) are not installed") from exc
        self._publisher = self._module.KafkaPublisher(
            self._settings.kafka_bootstrap, idempotent=self._settings.kafka_idempotent
        )
        await self._publisher.start()

    async def stop(self) -> None:
        if self._publisher is not None:
            await self._publisher.stop()
            self._publisher = None

    @property
    def publisher(self) -> EventPublisher:
        if self._publisher is None:
            raise RuntimeError("KafkaAdapters.start() was not called")
        publisher: EventPublisher = self._publisher
        return publisher

    def consumer_factory(self, group_id: str, handlers: Mapping[str, Handler]) -> EventConsumer:
        consumer: EventConsumer = self._module.FaustConsumer(self._settings.kafka_bootstrap, group_id, handlers)
        return consumer
