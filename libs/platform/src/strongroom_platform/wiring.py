"""The production adapters of the platform ports, built from settings.

Every service's composition root (``bootstrap.run``) uses these for the
dependencies a test did not inject: a Kafka publisher, a factory of Faust
consumers and the object store named by ``STRONGROOM_OBJECT_STORE``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Protocol

from strongroom_platform.clock import Clock
from strongroom_platform.eventbus import ConsumerFactory, EventConsumer, EventPublisher, Handler
from strongroom_platform.eventbus_kafka import FaustConsumer, KafkaPublisher
from strongroom_platform.objectstore import ObjectStore
from strongroom_platform.objectstore_factory import open_object_store
from strongroom_platform.settings import BackendTls, KafkaSasl, PlatformSettings
from strongroom_platform.tls import backend_ssl_context

__all__ = ["KafkaSettings", "consumer_factory", "object_store", "publisher"]


class KafkaSettings(Protocol):
    """The Kafka part of a service's settings (``PlatformSettings`` or a service's own)."""

    @property
    def kafka_bootstrap(self) -> str: ...

    @property
    def kafka_idempotent(self) -> bool: ...

    @property
    def kafka_tls(self) -> BackendTls: ...

    @property
    def kafka_sasl(self) -> KafkaSasl | None: ...

    @property
    def kafka_partitions(self) -> int | None: ...


@asynccontextmanager
async def publisher(settings: KafkaSettings) -> AsyncIterator[EventPublisher]:
    """A started Kafka producer, stopped (flushed) when the context exits; over TLS per
    ``settings.kafka_tls`` and authenticated per ``settings.kafka_sasl`` (SASL_SSL)."""
    async with KafkaPublisher(
        settings.kafka_bootstrap,
        idempotent=settings.kafka_idempotent,
        ssl_context=backend_ssl_context(settings.kafka_tls),
        sasl=settings.kafka_sasl,
    ) as kafka:
        yield kafka


def consumer_factory(settings: KafkaSettings) -> ConsumerFactory:
    """A factory of Faust consumers of the cluster at ``settings.kafka_bootstrap``, connected like
    :func:`publisher`; topics they create get ``settings.kafka_partitions`` partitions (None: the
    registry's)."""
    ssl_context = backend_ssl_context(settings.kafka_tls)

    def build(group_id: str, handlers: Mapping[str, Handler]) -> EventConsumer:
        return FaustConsumer(
            settings.kafka_bootstrap,
            group_id,
            handlers,
            ssl_context=ssl_context,
            sasl=settings.kafka_sasl,
            partitions=settings.kafka_partitions,
        )

    return build


@asynccontextmanager
async def object_store(settings: PlatformSettings, clock: Clock) -> AsyncIterator[ObjectStore]:
    """The store named by ``settings.object_store``, ready to use (see ``open_object_store``).

    The adapters hold no connection that needs closing; the context marks the
    store's lifetime in the composition root all the same.
    """
    yield await open_object_store(settings, clock)
