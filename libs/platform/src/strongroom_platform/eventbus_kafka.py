"""Kafka adapters of the event bus port: an aiokafka producer and a faust-streaming consumer.

Both run inside the caller's event loop and build nothing at import time.
They work with Apache Kafka and with Tansu (standalone mode); Tansu refuses
idempotent producers, hence ``KafkaPublisher(..., idempotent=False)`` there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import ssl
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code
from aiokafka.partitioner import murmur2
from strongroom_telemetry.metrics import Metrics, instruments

from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.eventbus import Handler, Headers, OutgoingRecord, Record
from strongroom_platform.events import ALERT_RAISED, TOPIC_SPECS, TopicSpec, dead_letter_topic, topic_spec
from strongroom_platform.faust_transport import BatchDrainTransport
from strongroom_platform.poison import RetryPolicy, plan_dead_letter, run_batch
from strongroom_platform.settings import KafkaSasl

__all__ = ["DLQ_ERROR_HEADER", "FaustConsumer", "KafkaPublisher", "create_topics", "dlq_topic"]

log = logging.getLogger(__name__)

DLQ_ERROR_HEADER = "strongroom-error"
"""Header of a dead-lettered record holding the handler's error message (UTF-8)."""

_TOPIC_ALREADY_EXISTS = 36

MAX_BATCH_BYTES = 512 * 1024
"""The most a record batch of the publisher holds (per partition and request)."""


dlq_topic = dead_letter_topic
"""The dead-letter topic of a topic (``events.dead_letter_topic``)."""


def _security(ssl_context: ssl.SSLContext | None, sasl: KafkaSasl | None = None) -> dict[str, Any]:
    """aiokafka's connection security arguments: SASL_SSL with ``sasl`` (which needs ``ssl_context``:
    SASL_PLAINTEXT is refused, ADR 0029), TLS with ``ssl_context`` alone, else plaintext."""
    if sasl is not None:
        if ssl_context is None:
            raise ValueError("Kafka SASL needs TLS (an ssl_context): SASL_PLAINTEXT is refused")
        return {
            "security_protocol": "SASL_SSL",
            "ssl_context": ssl_context,
            "sasl_mechanism": sasl.mechanism,
            "sasl_plain_username": sasl.username,
            "sasl_plain_password": sasl.password,
        }
    if ssl_context is None:
        return {}
    return {"security_protocol": "SSL", "ssl_context": ssl_context}


def _faust_credentials(ssl_context: ssl.SSLContext | None, sasl: KafkaSasl | None) -> Any:
    """faust's ``broker_credentials`` for the same security as :func:`_security`."""
    if sasl is None:
        return ssl_context  # faust turns an SSLContext into security_protocol="SSL" + ssl_context
    _security(ssl_context, sasl)  # the same refusal of SASL without TLS
    return faust.SASLCredentials(
        username=sasl.username, password=sasl.password, ssl_context=ssl_context, mechanism=sasl.mechanism
    )


async def create_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    timeout_ms: int = 30_000,
    ssl_context: ssl.SSLContext | None = None,
    sasl: KafkaSasl | None = None,
    partitions: int | None = None,
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are.

    Partitions, replication factor and ``min.insync.replicas`` come from the topic registry
    (``events.topic_spec``; a dead-letter topic gets its source topic's); ``partitions`` (the
    ``STRONGROOM_KAFKA_PARTITIONS`` setting) replaces the registry's count of registered topics
    (tests and standalone mode use a small one). Replication and ``min.insync.replicas`` are capped
    at the number of brokers in the cluster (one in development). Explicit creation matters: a
    broker's auto-created topics get its default partition count (Tansu: 4), and consumers
    subscribing before the first publish would otherwise find nothing to join.
    """
    if partitions is not None and partitions < 1:
        raise ValueError("a topic needs at least one partition")
    wanted = sorted(set(topics))
    if not wanted:
        return
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, **_security(ssl_context, sasl)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = [name for name in wanted if name not in existing]
        if not names:
            return
        brokers = await _broker_count(admin)
        missing = []
        for name in names:
            spec = _spec_for(name, partitions)
            replication = min(spec.replication_factor, brokers)
            if replication < spec.replication_factor:
                log.info(
                    "topic %s: %d replicas wanted, the cluster has %d brokers", name, spec.replication_factor, brokers
                )
            in_sync = min(spec.min_insync_replicas, replication)
            config = {"min.insync.replicas": str(in_sync)}
            missing.append(NewTopic(name, spec.partitions, replication, topic_configs=config))
        response = await admin.create_topics(missing, timeout_ms=timeout_ms)
        for topic_error in response.topic_errors:
            name, code = topic_error[0], topic_error[1]
            if code not in (0, _TOPIC_ALREADY_EXISTS):  # a concurrent creator is fine
                message = topic_error[2] if len(topic_error) > 2 else ""
                raise for_code(code)(f"cannot create topic {name}: {message}")
    finally:
        await admin.close()


def _spec_for(name: str, partitions: int | None = None) -> TopicSpec:
    """The registry spec of a topic, or of the topic whose dead-letter topic ``name`` is; a
    registered one with ``partitions`` partitions when that is given."""
    spec = _registered_spec_for(name)
    if partitions is not None and (
        name in TOPIC_SPECS or any(s.dead_letter_topic == name for s in TOPIC_SPECS.values())
    ):
        return dataclasses.replace(spec, partitions=partitions)
    return spec


def _registered_spec_for(name: str) -> TopicSpec:
    for spec in TOPIC_SPECS.values():
        if spec.dead_letter_topic == name:
            return dataclasses.replace(spec, dead_letter_topic=None)
    if name.endswith(".dlq"):
        return dataclasses.replace(topic_spec(name[: -len(".dlq")]), dead_letter_topic=None)
    return topic_spec(name)


async def _broker_count(admin: AIOKafkaAdminClient) -> int:
    try:
        cluster = await admin.describe_cluster()
        return max(1, len(cluster.get("brokers", [])))
    except Exception:  # a broker without DescribeCluster (Tansu): assume the smallest cluster
        log.warning("cannot describe the Kafka cluster; creating topics with one replica")
        return 1


class KafkaPublisher:
    """The :class:`~strongroom_platform.eventbus.EventPublisher` port on an aiokafka producer.

    ``acks="all"``: ``publish`` returns only once every in-sync replica has the
    record. ``idempotent`` enables producer idempotence (no duplicates from
    internal retries); Tansu does not support it, so it is a setting.
    ``ssl_context`` (``strongroom_platform.tls.backend_ssl_context``) connects over TLS, and
    ``sasl`` authenticates over it (SASL_SSL).
    Call :meth:`start` before publishing and :meth:`stop` at shutdown (or use
    ``async with``).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        idempotent: bool,
        client_id: str = "strongroom",
        request_timeout_ms: int = 30_000,
        ssl_context: ssl.SSLContext | None = None,
        sasl: KafkaSasl | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._ssl_context = ssl_context
        self._sasl = sasl
        self._idempotent = idempotent
        self._client_id = client_id
        self._request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect to the cluster. Raises KafkaConnectionError when it cannot be reached."""
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=self._idempotent,
            request_timeout_ms=self._request_timeout_ms,
            # publish_batch fills whole record batches; below the broker's default 1 MB message.max.bytes.
            max_batch_size=MAX_BATCH_BYTES,
            **_security(self._ssl_context, self._sasl),
        )
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        """Flush pending records and disconnect. Idempotent."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish(self, topic: str, key: bytes, value: bytes, *, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        """Append a record with ``headers`` and wait for the broker's acknowledgement (raises on failure)."""
        if self._producer is None:
            raise RuntimeError("KafkaPublisher.publish called before start()")
        await self._producer.send_and_wait(topic, value=value, key=key, headers=list(headers) or None)

    async def publish_batch(self, records: Sequence[OutgoingRecord]) -> list[BaseException | None]:
        """Append the records as one record batch per partition (in order), then wait for every answer.

        The partition of a key is the Java client's (murmur2), as ``publish`` picks it; building the
        batches here instead of one ``send`` per record costs a fraction of the CPU, and a batch
        costs one round trip per partition. Returns None or the failure per record (a batch fails
        or succeeds as a whole).
        """
        producer = self._producer
        if producer is None:
            raise RuntimeError("KafkaPublisher.publish_batch called before start()")
        outcomes: list[BaseException | None] = [None] * len(records)
        waits: list[tuple[list[int], asyncio.Future[Any]]] = []
        for (topic, partition), indexes in (await self._by_partition(records)).items():
            batch = producer.create_batch()
            members: list[int] = []
            for index in indexes:
                record = records[index]
                headers = list(record.headers)
                if batch.append(timestamp=None, key=record.key, value=record.value, headers=headers) is None:
                    if members:  # full: send it, start the next one
                        waits.append((members, await producer.send_batch(batch, topic, partition=partition)))
                        batch, members = producer.create_batch(), []
                    if batch.append(timestamp=None, key=record.key, value=record.value, headers=headers) is None:
                        # Larger than a batch on its own: the producer sends (or refuses) it alone.
                        try:
                            single = await producer.send(
                                topic, value=record.value, key=record.key, partition=partition, headers=headers
                            )
                        except Exception as exc:  # refused before it was queued (too large)
                            outcomes[index] = exc
                            continue
                        waits.append(([index], single))
                        continue
                members.append(index)
            if members:
                waits.append((members, await producer.send_batch(batch, topic, partition=partition)))
        await asyncio.gather(*(future for _, future in waits), return_exceptions=True)
        for members, future in waits:
            failure = future.exception()
            if failure is not None:
                for index in members:
                    outcomes[index] = failure
        return outcomes

    async def _by_partition(self, records: Sequence[OutgoingRecord]) -> dict[tuple[str, int], list[int]]:
        """Record indexes by (topic, partition), in order."""
        assert self._producer is not None
        counts: dict[str, int] = {}
        groups: dict[tuple[str, int], list[int]] = {}
        for index, record in enumerate(records):
            count = counts.get(record.topic)
            if count is None:
                count = counts[record.topic] = len(await self._producer.partitions_for(record.topic))
            groups.setdefault((record.topic, _partition_of(record.key, count)), []).append(index)
        return groups

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


@functools.lru_cache(maxsize=65536)
def _partition_of(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` (0..n-1), as the Java client and aiokafka pick it."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def _headers(raw: Any) -> Headers:
    """A consumed record's headers as (name, bytes) pairs, whatever shape the client gave them in."""
    if not raw:
        return ()
    items = raw.items() if isinstance(raw, Mapping) else raw
    return tuple((str(name), bytes(value) if value is not None else b"") for name, value in items)


class FaustConsumer:
    """The :class:`~strongroom_platform.eventbus.EventConsumer` port on a faust-streaming app.

    One Faust app per consumer group, one agent per topic with raw bytes serializers, and inside
    it one worker per assigned partition (Faust's ``isolated_partitions``: a worker starts when
    its partition is assigned and stops when it is revoked). Records of one partition — of one
    key, the instance id — are handled one after another; partitions run in parallel. Agent
    concurrency above 1 is not used: it acknowledges out of order and commits wrong offsets
    (faust-streaming issue #606). Replicas of a service share partitions as one consumer group;
    after a rebalance a partition's records after its last committed offset are delivered
    again, and the handlers' inbox claims make that harmless (ADR 0050). For each record the
    handler is called; then:

    - it returned: the record is acknowledged; Faust commits acknowledged
      offsets every ``commit_interval`` seconds and at :meth:`stop`;
    - it raised :class:`PoisonRecord`, or failed deterministically
      ``max_attempts`` times: the record is published to its dead-letter topic
      (error text in the ``strongroom-error`` header), an ``alert-raised``
      event is published (``alert_topic``), and the record is acknowledged;
    - it raised a transient failure (``poison.is_transient``: database, broker
      or peer unreachable): retried after a backoff doubling from
      ``retry_initial`` up to ``retry_max`` seconds, forever (ADR 0026).

    Acks are manual (``stream.noack()``): Faust's automatic ack also fires
    when an agent is cancelled mid-record, which would commit a record whose
    handler never finished.

    :meth:`stop` lets the records in flight finish (up to ``stop_timeout``
    seconds; a record still being retried is abandoned unacknowledged, so it is
    delivered again later), then commits and leaves the group. A consumer is
    started at most once. ``partitions`` (``STRONGROOM_KAFKA_PARTITIONS``) is the partition count
    of the registered topics it creates (``create_topics``).

    ``session_timeout`` is the group session timeout in seconds; Tansu holds a
    new member's JoinGroup for half of it, so a small value starts faster there.
    ``ssl_context`` connects the consumer, its DLQ producer and topic creation over TLS, and
    ``sasl`` authenticates them over it (SASL_SSL).

    Records reach the handler with their headers (``traceparent`` among them). The group's lag per
    partition (records after the one being handled, counting it until it is done) is the
    ``strongroom_consumer_lag`` gauge, updated around every batch.

    A partition's worker takes the records it already holds (up to ``max_batch``) together: a
    :class:`~strongroom_platform.eventbus.BatchHandler` applies them in one transaction, and if that
    fails they run one at a time as above (``poison.run_batch``). A record arriving alone is handled
    at once; under a burst, each batch is what arrived while the previous one was being handled.
    Offsets are acknowledged in order, after the batch (or the prefix of it that was handled).
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        handlers: Mapping[str, Handler],
        *,
        session_timeout: float = 10.0,
        commit_interval: float = 1.0,
        retry_initial: float = 0.1,
        retry_max: float = 30.0,
        max_attempts: int = 5,
        stop_timeout: float = 30.0,
        create_missing_topics: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        sasl: KafkaSasl | None = None,
        alert_topic: str = ALERT_RAISED,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        partitions: int | None = None,
        max_batch: int = 500,
    ) -> None:
        if not handlers:
            raise ValueError("a consumer needs at least one topic handler")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._max_batch = max_batch
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._handlers = dict(handlers)
        self._policy = RetryPolicy(retry_initial, retry_max, max_attempts)
        self._alert_topic = alert_topic
        self._clock: Clock = clock or SystemClock()
        self._metrics = metrics or instruments()
        self._stop_timeout = stop_timeout
        self._create_missing_topics = create_missing_topics
        self._ssl_context = ssl_context
        self._sasl = sasl
        self._partitions = partitions
        self._stopping = asyncio.Event()
        # Records being handled across the partition workers; _idle is set when there are none.
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        # Faust insists on a data directory even with the memory store; by default it
        # is "<group>-data" in the working directory. A private temporary one keeps the
        # working directory clean and is removed when the consumer stops.
        self._datadir = tempfile.TemporaryDirectory(prefix="strongroom-consumer-")
        self._app = self._build_app(session_timeout, commit_interval)

    def _build_app(self, session_timeout: float, commit_interval: float) -> Any:
        app = faust.App(
            self._group_id,
            broker=f"kafka://{self._bootstrap}",
            store="memory://",
            datadir=self._datadir.name,
            web_enabled=False,
            autodiscover=False,
            topic_partitions=1,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=session_timeout,
            broker_heartbeat_interval=max(session_timeout / 3.0, 0.5),
            broker_commit_interval=commit_interval,
            # stop() waits for the record in flight itself: Faust's own wait
            # never ends while a record is left unacknowledged.
            stream_wait_empty=False,
            broker_credentials=_faust_credentials(self._ssl_context, self._sasl),
        )
        # Faust's aiokafka transport, with a fetch loop that hands a fetched batch to the partitions'
        # streams in one go instead of one task race per record (faust_transport, ADR 0050 session 7).
        app.transport = BatchDrainTransport(app.conf.broker_consumer, app)
        for index, (topic_name, handler) in enumerate(sorted(self._handlers.items())):
            topic = app.topic(
                topic_name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
            )
            agent = app.agent(topic, name=f"{self._group_id}.agent{index}", concurrency=1, isolated_partitions=True)
            agent(self._agent_for(handler))
        return app

    def _agent_for(self, handler: Handler) -> Any:
        async def agent(stream: Any) -> None:
            manual = stream.noack()
            batch: list[Any] = []
            async for event in manual.events():
                batch.append(event)
                # The records the partition's worker already holds join the batch (one transaction
                # for all with a BatchHandler, ADR 0050); a lone record is handled at once.
                if len(batch) < self._max_batch and not manual.channel.empty():
                    continue
                done = await self._process(handler, [e.message for e in batch])
                for handled in batch[:done]:
                    await manual.ack(handled)
                batch = []

        return agent

    async def _process(self, handler: Handler, messages: list[Any]) -> int:
        """Run one partition's records to an outcome (``poison.run_batch``); return how many did (a
        prefix: stopping interrupts the retries, and what is left stays unacknowledged)."""
        records = [
            Record(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=message.value if message.value is not None else b"",
                headers=_headers(message.headers),
            )
            for message in messages
        ]
        if self._stopping.is_set():
            return 0  # left unacknowledged: delivered again after the restart
        self._in_flight += len(records)
        self._idle.clear()
        done = 0
        try:
            self._report_lag(messages[0], handled=False)
            done = await run_batch(
                handler, records, policy=self._policy, dead_letter=self._dead_letter, pause=self._pause
            )
            return done
        finally:
            if done:
                self._report_lag(messages[done - 1], handled=True)
            self._in_flight -= len(records)
            if self._in_flight == 0:
                self._idle.set()

    def _report_lag(self, message: Any, *, handled: bool) -> None:
        try:
            highwater = self._app.consumer.highwater(message.tp)
        except Exception:  # no assignment or metadata yet: nothing to report
            return
        if isinstance(highwater, int):
            lag = max(0, highwater - message.offset - (1 if handled else 0))
            labels = {"group": self._group_id, "topic": message.topic, "partition": str(message.partition)}
            self._metrics.consumer_lag.set(lag, labels)

    async def _pause(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return not self._stopping.is_set()

    async def _dead_letter(self, record: Record, reason: str, attempts: int) -> None:
        plan = plan_dead_letter(
            source=self._group_id, record=record, reason=reason, attempts=attempts, clock=self._clock
        )
        log.warning(
            "poison record %s[%d]@%d to %s: %s", record.topic, record.partition, record.offset, plan.topic, reason
        )
        send = self._app.producer.send_and_wait
        await send(plan.topic, record.key, record.value, None, None, [(DLQ_ERROR_HEADER, reason.encode())])
        await send(self._alert_topic, plan.alert_key, plan.alert, None, None, [])

    async def start(self) -> None:
        """Create missing topics (and their DLQs), start the app and join the group.

        Returns once the app runs; partitions are assigned shortly after.
        """
        if self._started:
            raise RuntimeError("a FaustConsumer can be started only once")
        self._started = True
        if self._create_missing_topics:
            topics = list(self._handlers)
            await create_topics(
                self._bootstrap,
                [*topics, *(dlq_topic(t) for t in topics), self._alert_topic],
                ssl_context=self._ssl_context,
                sasl=self._sasl,
                partitions=self._partitions,
            )
        await self._app.start()

    async def stop(self) -> None:
        """Finish the record in flight, commit what was handled, leave the group."""
        if not self._started:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=self._stop_timeout)
        except TimeoutError:
            log.warning(
                "consumer %s: a handler is still running after %.0fs; abandoning it", self._group_id, self._stop_timeout
            )
        await self._app.stop()
        self._datadir.cleanup()
