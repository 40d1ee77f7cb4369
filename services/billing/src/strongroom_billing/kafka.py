"""The Kafka consumer adapter of the event bus port (``strongroom_platform.eventbus_kafka``)."""

from __future__ import annotations

from collections.abc import Mapping

from strongroom_platform.eventbus import ConsumerFactory, EventConsumer, Handler
from strongroom_platform.eventbus_kafka import FaustConsumer


def kafka_consumer_factory(bootstrap: str) -> ConsumerFactory:
    """A factory of Faust consumers of the cluster at ``bootstrap``."""

    def factory(group_id: str, handlers: Mapping[str, Handler]) -> EventConsumer:
        return FaustConsumer(bootstrap, group_id, handlers)

    return factory
