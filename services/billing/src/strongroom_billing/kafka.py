"""The Kafka consumer adapter of the event bus port, loaded only when the process really talks to Kafka."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from strongroom_platform.eventbus import ConsumerFactory, EventConsumer, Handler


def kafka_consumer_factory(bootstrap: str) -> ConsumerFactory:
    """A factory of ``strongroom_platform.eventbus_kafka.FaustConsumer`` for ``bootstrap``."""
    try:
        module = importlib.import_module("strongroom_platform.eventbus_kafka")
    except ModuleNotFoundError as exc:
        raise RuntimeError("the Kafka adapters (strongroom_platform.eventbus_kafka) are not installed") from exc

    def factory(group_id: str, handlers: Mapping[str, Handler]) -> EventConsumer:
        consumer: EventConsumer = module.FaustConsumer(bootstrap, group_id, handlers)
        return consumer

    return factory
