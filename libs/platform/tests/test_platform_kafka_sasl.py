"""Kafka SASL/SCRAM over TLS (ADR 0029): the settings, the client arguments, and a real broker whose
only client listener is SASL_SSL requiring SCRAM-SHA-512.

The broker is ``strongroom_servers.LocalKafka(sasl_ssl=...)`` with a certificate from the built-in
CA; the clients are built from ``PlatformSettings.from_env`` through ``wiring``, as the services
build theirs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from strongroom_platform import certs, wiring
from strongroom_platform.certs import CertificateAuthority
from strongroom_platform.eventbus import Record
from strongroom_platform.eventbus_kafka import FaustConsumer, KafkaPublisher, create_topics
from strongroom_platform.settings import (
    BackendTls,
    KafkaSasl,
    PlaintextRefused,
    PlatformSettings,
    SettingsError,
)
from strongroom_platform.tls import backend_ssl_context, client_ssl_context
from strongroom_servers import KafkaSaslSsl, LocalKafka
from strongroom_testing.fixtures import start_or_skip

HOST = "127.0.0.1"
USER, PASSWORD = "strongroom-svc", "correct-horse-battery-staple"
# A refused client gives up within this many seconds (connection and request timeouts below).
REFUSAL_BOUND = 20.0

BASE_ENV = {
    "STRONGROOM_PG_DSN": "postgresql://unused",
    "STRONGROOM_KAFKA_BOOTSTRAP": f"{HOST}:9093",
    "STRONGROOM_OBJECT_STORE": "file:/unused",
    "STRONGROOM_INSECURE_PLAINTEXT": "1",
}


def _settings(env: Mapping[str, str]) -> PlatformSettings:
    return PlatformSettings.from_env({**BASE_ENV, **env})


# -- settings ------------------------------------------------------------------------------------


def test_sasl_settings_from_the_environment(tmp_path: Path) -> None:
    assert _settings({}).kafka_sasl is None
    tls = {"STRONGROOM_KAFKA_TLS": "1"}
    sasl = _settings({**tls, "STRONGROOM_KAFKA_SASL_USERNAME": USER, "STRONGROOM_KAFKA_SASL_PASSWORD": PASSWORD})
    assert sasl.kafka_sasl == KafkaSasl(USER, PASSWORD, "SCRAM-SHA-512")
    assert PASSWORD not in repr(sasl.kafka_sasl) and PASSWORD not in repr(sasl)

    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")  # as `echo ... > file` leaves it
    env = {**tls, "STRONGROOM_KAFKA_SASL_USERNAME": USER, "STRONGROOM_KAFKA_SASL_PASSWORD_FILE": str(secret)}
    from_file = _settings({**env, "STRONGROOM_KAFKA_SASL_MECHANISM": "scram-sha-256"}).kafka_sasl
    assert from_file == KafkaSasl(USER, PASSWORD, "SCRAM-SHA-256")

    with pytest.raises(SettingsError, match="must be one of SCRAM-SHA-512, SCRAM-SHA-256, got 'PLAIN'"):
        _settings({**env, "STRONGROOM_KAFKA_SASL_MECHANISM": "PLAIN"})
    with pytest.raises(SettingsError, match="_PASSWORD or STRONGROOM_KAFKA_SASL_PASSWORD_FILE, not both"):
        _settings({**env, "STRONGROOM_KAFKA_SASL_PASSWORD": PASSWORD})
    with pytest.raises(SettingsError, match="STRONGROOM_KAFKA_SASL_PASSWORD_FILE=.*missing"):
        _settings({**env, "STRONGROOM_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "missing")})
    with pytest.raises(SettingsError, match="needs STRONGROOM_KAFKA_SASL_PASSWORD or"):
        _settings({**tls, "STRONGROOM_KAFKA_SASL_USERNAME": USER})
    with pytest.raises(SettingsError, match="STRONGROOM_KAFKA_SASL_USERNAME is required"):
        _settings({**tls, "STRONGROOM_KAFKA_SASL_PASSWORD": PASSWORD})
    secret.write_text("\n")  # an empty Secret
    with pytest.raises(SettingsError, match="needs STRONGROOM_KAFKA_SASL_PASSWORD or"):
        _settings(env)
    with pytest.raises(SettingsError, match="needs a username and a password"):
        KafkaSasl("", PASSWORD)


async def test_sasl_without_kafka_tls_is_refused_even_with_the_plaintext_escape_hatch() -> None:
    env = {"STRONGROOM_KAFKA_SASL_USERNAME": USER, "STRONGROOM_KAFKA_SASL_PASSWORD": PASSWORD}
    assert _settings({}).insecure_plaintext  # BASE_ENV sets the escape hatch: it does not cover SASL
    with pytest.raises(PlaintextRefused, match="SASL without TLS"):
        _settings(env)
    with pytest.raises(PlaintextRefused, match="SASL without TLS"):
        _settings({"STRONGROOM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"})
    # A settings object built by hand cannot get past the clients either.
    with pytest.raises(ValueError, match="SASL_PLAINTEXT is refused"):
        await KafkaPublisher(f"{HOST}:1", idempotent=False, sasl=KafkaSasl(USER, PASSWORD)).start()
    with pytest.raises(ValueError, match="SASL_PLAINTEXT is refused"):
        await create_topics(f"{HOST}:1", ["t"], sasl=KafkaSasl(USER, PASSWORD))
    with pytest.raises(ValueError, match="SASL_PLAINTEXT is refused"):
        FaustConsumer(f"{HOST}:1", "g", {"t": _never}, sasl=KafkaSasl(USER, PASSWORD))


def test_faust_consumer_gets_sasl_ssl_arguments_from_the_settings() -> None:
    settings = _settings(
        {
            "STRONGROOM_KAFKA_TLS": "1",
            "STRONGROOM_KAFKA_SASL_USERNAME": USER,
            "STRONGROOM_KAFKA_SASL_PASSWORD": PASSWORD,
        }
    )
    consumer = wiring.consumer_factory(settings)("sasl-probe", {"t": _never})
    assert isinstance(consumer, FaustConsumer)
    arguments = dict(credentials_to_aiokafka_auth(consumer._app.conf.broker_credentials))
    context = arguments.pop("ssl_context")
    assert context is not None and context.check_hostname
    assert arguments == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": USER,
        "sasl_plain_password": PASSWORD,
    }


async def _never(record: Record) -> None:
    raise AssertionError("no record is consumed here")


# -- a real broker whose only client listener is SASL_SSL with SCRAM-SHA-512 ----------------------


@dataclass(frozen=True)
class SaslBroker:
    kafka: LocalKafka
    ca_file: Path

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    def env(self, *, password: str = PASSWORD, user: str = USER) -> dict[str, str]:
        """The environment of a service process that reaches this broker."""
        return {
            "STRONGROOM_KAFKA_BOOTSTRAP": self.bootstrap,
            "STRONGROOM_KAFKA_TLS_CA": str(self.ca_file),
            "STRONGROOM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "STRONGROOM_KAFKA_SASL_USERNAME": user,
            "STRONGROOM_KAFKA_SASL_PASSWORD": password,
        }


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    directory = tmp_path_factory.mktemp("kafka-sasl")
    ca = CertificateAuthority.create()
    ca_file = certs.write_ca(directory, ca)
    cert_file, key_file = certs.write_pair(directory, "kafka", ca.issue_service("kafka", ips=[HOST]))
    listener = KafkaSaslSsl(cert_file, key_file, ca_file, users={USER: PASSWORD})
    with start_or_skip(LocalKafka(directory / "kafka", sasl_ssl=listener)) as kafka:
        yield SaslBroker(kafka, ca_file)


@pytest.mark.integration
async def test_publisher_and_faust_consumer_round_trip_over_sasl_ssl(sasl_broker: SaslBroker) -> None:
    settings = _settings(sasl_broker.env())
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    await create_topics(
        settings.kafka_bootstrap, [topic], ssl_context=backend_ssl_context(settings.kafka_tls), sasl=settings.kafka_sasl
    )
    received: asyncio.Queue[Record] = asyncio.Queue()

    async def handle(record: Record) -> None:
        await received.put(record)

    consumer = wiring.consumer_factory(settings)(f"g-{topic}", {topic: handle})
    await consumer.start()
    try:
        async with wiring.publisher(settings) as publisher:
            await publisher.publish(topic, b"key", b"over SASL_SSL")
        record = await asyncio.wait_for(received.get(), timeout=60)
    finally:
        await consumer.stop()
    assert (record.topic, record.key, record.value) == (topic, b"key", b"over SASL_SSL")


@pytest.mark.integration
@pytest.mark.parametrize(("user", "password"), [(USER, "wrong-password"), ("nobody", PASSWORD)])
async def test_wrong_credentials_are_refused_with_authentication_failed(
    sasl_broker: SaslBroker, caplog: pytest.LogCaptureFixture, user: str, password: str
) -> None:
    settings = _settings(sasl_broker.env(user=user, password=password))
    ssl_context = backend_ssl_context(settings.kafka_tls)
    caplog.set_level(logging.ERROR, logger="aiokafka")
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        publisher = KafkaPublisher(
            settings.kafka_bootstrap,
            idempotent=False,
            request_timeout_ms=5_000,
            ssl_context=ssl_context,
            sasl=settings.kafka_sasl,
        )
        await asyncio.wait_for(publisher.start(), timeout=REFUSAL_BOUND)
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        await asyncio.wait_for(
            create_topics(
                settings.kafka_bootstrap, ["never"], timeout_ms=5_000, ssl_context=ssl_context, sasl=settings.kafka_sasl
            ),
            timeout=REFUSAL_BOUND,
        )
    assert time.monotonic() - started < 2 * REFUSAL_BOUND
    # aiokafka raises "Unable to bootstrap" and logs the broker's reason:
    refusals = [r.getMessage() for r in caplog.records if "SaslAuthenticationFailed" in r.getMessage()]
    assert len(refusals) == 2, caplog.text
    assert all("Authentication failed" in m and "SCRAM-SHA-512" in m for m in refusals), refusals


@pytest.mark.integration
async def test_plaintext_and_tls_only_clients_are_refused(sasl_broker: SaslBroker) -> None:
    trusted = client_ssl_context(ca_file=sasl_broker.ca_file)
    log_start = sasl_broker.kafka.log_path.stat().st_size
    for ssl_context in (None, trusted):  # plaintext; TLS that the broker accepts, but no SASL
        started = time.monotonic()
        with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
            publisher = KafkaPublisher(
                sasl_broker.bootstrap, idempotent=False, request_timeout_ms=5_000, ssl_context=ssl_context
            )
            await asyncio.wait_for(publisher.start(), timeout=REFUSAL_BOUND)
        assert time.monotonic() - started < REFUSAL_BOUND
    # The broker's reasons: no TLS at all; then TLS but a request before any SASL handshake.
    with sasl_broker.kafka.log_path.open("rb") as log:
        log.seek(log_start)
        broker_log = log.read().decode("utf-8", "replace")
    assert "(SSL handshake failed)" in broker_log
    assert "Unexpected Kafka request of type METADATA during SASL handshake" in broker_log
    # With the right credentials but trusting only the system roots, the handshake already fails.
    untrusting = _settings({**sasl_broker.env(), "STRONGROOM_KAFKA_TLS_CA": "", "STRONGROOM_KAFKA_TLS": "1"})
    assert untrusting.kafka_tls == BackendTls(enabled=True) and untrusting.kafka_sasl is not None
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        async with asyncio.timeout(REFUSAL_BOUND), wiring.publisher(untrusting):
            pass
