"""Apache Kafka, single node in KRaft mode, run from Maven Central jars (no tarball, no Docker).

The broker's classpath is fetched once with ``mvn dependency:copy-dependencies`` from the POM that
ships in this package (``kafka-pom.xml``) into ``<cache>/kafka-<version>/libs`` and reused; a
``.complete`` marker is written last, so an interrupted download is redone, not trusted.
"""

from __future__ import annotations

import base64
import importlib.resources
import os
import re
import secrets
import shutil
import signal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from strongroom_servers._process import (
    LocalServer,
    ManagedProcess,
    PrerequisiteMissing,
    ServerStartError,
    cache_root,
    file_lock,
    free_port,
    port_open,
    run_checked,
    which_or_raise,
)
from strongroom_servers.kafka_probe import probe_kafka

__all__ = ["KAFKA_VERSION", "LOG4J_VERSIONS", "KafkaSaslSsl", "LocalKafka", "ensure_kafka_libs", "find_java"]

KAFKA_VERSION = "4.3.1"
# First entry is the log4j2 release Kafka 4.3 ships with; the others are fallbacks in case the
# repository does not serve it.
LOG4J_VERSIONS = ("2.25.5", "2.25.4", "2.25.3")

_READY_LINE = "Kafka Server started"  # KafkaBroker.STARTED_MESSAGE, same in 3.9 and 4.x
_BIND_ERRORS = ("Address already in use", "BindException")

_LOG4J2_PROPERTIES = """\
# Everything to stdout, which the launcher sends to kafka.log in the work dir.
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def find_java() -> str:
    """``$JAVA_HOME/bin/java`` if set, else ``java`` on PATH. Kafka 4.x needs Java 17+."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
        return str(Path(java_home) / "bin" / "java")
    return which_or_raise("java", "Kafka 4.x needs a Java 17+ runtime, e.g. apt-get install openjdk-17-jre-headless")


def _has_core_jar(libs: Path, version: str) -> bool:
    return (libs / f"kafka_2.13-{version}.jar").is_file()


def ensure_kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """Return a directory holding the broker classpath for ``version``, downloading it if needed.

    ``$STRONGROOM_KAFKA_LIBS`` (a directory with ``kafka_2.13-<version>.jar`` and its dependencies)
    skips the download. Otherwise ``<cache>/kafka-<version>/libs`` is filled once by Maven under a
    file lock. Raises PrerequisiteMissing when ``mvn`` is needed but absent, ServerStartError when
    Maven fails (with the tail of ``mvn.log``).
    """
    override = os.environ.get("STRONGROOM_KAFKA_LIBS")
    if override:
        libs = Path(override)
        if not _has_core_jar(libs, version):
            raise PrerequisiteMissing(f"STRONGROOM_KAFKA_LIBS={override} has no kafka_2.13-{version}.jar")
        return libs
    base = cache_root() / f"kafka-{version}"
    libs, marker = base / "libs", base / ".complete"
    if marker.is_file() and _has_core_jar(libs, version):
        return libs
    mvn = which_or_raise("mvn", "Maven fetches the Kafka jars once, e.g. apt-get install maven")
    with file_lock(base.parent / f"kafka-{version}.lock"):
        if marker.is_file() and _has_core_jar(libs, version):
            return libs  # another process finished it while we waited for the lock
        base.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(libs, ignore_errors=True)
        partial = base / "libs.partial"
        pom = base / "pom.xml"
        pom.write_text(importlib.resources.files("strongroom_servers").joinpath("kafka-pom.xml").read_text("utf-8"))
        last_error: ServerStartError | None = None
        for log4j in LOG4J_VERSIONS:
            shutil.rmtree(partial, ignore_errors=True)
            try:
                run_checked(
                    [
                        mvn,
                        "-q",
                        "-B",
                        "-f",
                        str(pom),
                        "dependency:copy-dependencies",
                        "-DincludeScope=runtime",
                        f"-DoutputDirectory={partial}",
                        f"-Dkafka.version={version}",
                        f"-Dlog4j.version={log4j}",
                    ],
                    what=f"Maven download of Kafka {version} (log4j {log4j})",
                    log_path=base / "mvn.log",
                    cwd=base,
                )
            except ServerStartError as exc:
                last_error = exc
                continue
            if not _has_core_jar(partial, version):
                raise ServerStartError(f"Maven finished but {partial} has no kafka_2.13-{version}.jar")
            partial.rename(libs)
            marker.write_text(f"kafka {version}\nlog4j {log4j}\n")
            return libs
        assert last_error is not None
        raise last_error


def topic_defaults(*, replicas: int, min_insync: int) -> str:
    """The broker's ``server.properties`` lines for topics and the internal topics: ``replicas``
    copies of each, ``min_insync`` of them in sync for an acknowledged write (one broker: 1 and 1,
    which transactions and idempotent producers need there; a cluster: 3 and 2, production's)."""
    return f"""\
num.partitions=1
default.replication.factor={replicas}
min.insync.replicas={min_insync}
auto.create.topics.enable=true
# One partition instead of 50: the first consumer-group join in a test is fast.
offsets.topic.num.partitions=1
offsets.topic.replication.factor={replicas}
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_insync}
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_insync}
# Default 3000 ms delays every test's first rebalance.
group.initial.rebalance.delay.ms=0
"""


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, url-safe base64 without padding (as Uuid.randomUuid)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # StorageTool's argument parser would read it as an option
            return cid


# SCRAM names and passwords go into StorageTool's --add-scram "[name=...,password=...]" and into a
# JAAS line in server.properties: characters those syntaxes give meaning to are kept out.
_SCRAM_TOKEN = re.compile(r"[A-Za-z0-9._~@+:/-]+")
_SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
_BROKER_USER = "strongroom-broker"


@dataclass(frozen=True)
class KafkaSaslSsl:
    """A client listener that requires SASL/SCRAM over TLS (``SASL_SSL``), for :class:`LocalKafka`.

    Attributes:
        cert_file: PEM certificate chain (leaf first) the broker serves; its SANs must name
            127.0.0.1 (the broker also connects to itself through this listener and verifies it).
        key_file: the certificate's private key, unencrypted PKCS#8 PEM ("BEGIN PRIVATE KEY"), the
            form Kafka's PEM key store reads.
        ca_file: PEM bundle the broker trusts when it connects to itself (inter-broker traffic).
        users: SCRAM users created when the storage is formatted, name to password.
        mechanism: ``SCRAM-SHA-512`` (default) or ``SCRAM-SHA-256``; the only mechanism enabled.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path
    users: Mapping[str, str] = field(default_factory=dict)
    mechanism: str = "SCRAM-SHA-512"

    def __post_init__(self) -> None:
        if self.mechanism not in _SCRAM_MECHANISMS:
            raise ValueError(f"mechanism must be one of {', '.join(_SCRAM_MECHANISMS)}, got {self.mechanism!r}")
        for name, password in self.users.items():
            if not (_SCRAM_TOKEN.fullmatch(name) and _SCRAM_TOKEN.fullmatch(password)):
                raise ValueError(f"SCRAM user {name!r}: names and passwords must match {_SCRAM_TOKEN.pattern}")
            if name == _BROKER_USER:
                raise ValueError(f"{_BROKER_USER} is the broker's own user")


class LocalKafka(LocalServer):
    """One combined broker+controller KRaft node on 127.0.0.1.

    Contract: ``start()`` provisions the jars (cached), formats ``work_dir/kraft-data`` on first
    use (a restart on the same work dir keeps its topics), launches ``kafka.Kafka`` and returns once
    the log says "Kafka Server started" and the port accepts connections; raises ServerStartError
    with the log tail otherwise. ``stop()`` sends SIGTERM (controlled shutdown), then SIGKILL after
    ``stop_timeout``. The broker log is ``work_dir/kafka.log``. The JVM does not outlive the process
    that started it (ADR 0022).

    Settings are tuned for tests: every internal topic has one partition and replication factor 1
    (so consumer groups and transactions work on one node) and the first group rebalance is not
    delayed.

    ``sasl_ssl`` (:class:`KafkaSaslSsl`) makes the one client listener ``SASL_SSL`` requiring SCRAM:
    no plaintext or TLS-only client gets in. The broker's inter-broker traffic uses the same
    listener as its own SCRAM user (created with a random password at format time); the KRaft
    controller listener stays PLAINTEXT on 127.0.0.1 (KRaft controllers cannot use SCRAM).
    """

    _bind_errors = _BIND_ERRORS
    _ready_what = f"'{_READY_LINE}' and port {{port}} open"

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int | None = None,
        libs_dir: Path | None = None,
        version: str = KAFKA_VERSION,
        heap_max: str = "1g",
        start_timeout: float = 120.0,
        stop_timeout: float = 30.0,
        sasl_ssl: KafkaSaslSsl | None = None,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.work_dir = Path(work_dir)
        self.version = version
        self.heap_max = heap_max
        self.sasl_ssl = sasl_ssl
        self._libs_dir = libs_dir
        self._java = ""

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the client listener (PLAINTEXT, or SASL_SSL with ``sasl_ssl``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def security_protocol(self) -> str:
        """The client listener's security protocol: ``PLAINTEXT`` or ``SASL_SSL``."""
        return "PLAINTEXT" if self.sasl_ssl is None else "SASL_SSL"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "kafka.log"

    def server_info(self) -> str:
        """``"Kafka 4.3.1 (metadata.version 4.3-IV0 via ApiVersions v3)"``: the jar version this launcher
        ran plus what the broker reports over the protocol (the plaintext probe cannot pass a SASL_SSL
        listener, which is named instead)."""
        if self.sasl_ssl is not None:
            return f"Kafka {self.version} (SASL_SSL listener, {self.sasl_ssl.mechanism})"
        return f"Kafka {self.version} ({probe_kafka(self.bootstrap).describe()})"

    def _prepare(self) -> None:
        self._libs_dir = self._libs_dir or ensure_kafka_libs(self.version)
        self._java = find_java()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.sasl_ssl is not None:
            self._write_keystore(self.sasl_ssl)

    def _launch(self, port: int) -> ManagedProcess:
        assert self._libs_dir is not None
        self._write_config(port)
        self._format(self._java, self._libs_dir)
        return ManagedProcess(
            "kafka",
            [
                self._java,
                "-Xms256m",
                f"-Xmx{self.heap_max}",
                *self._jvm_common(self._libs_dir),
                "kafka.Kafka",
                str(self.work_dir / "server.properties"),
            ],
            self.log_path,
            cwd=self.work_dir,
            stop_signal=signal.SIGTERM,
            stop_timeout=self.stop_timeout,
        )

    def _ready(self, proc: ManagedProcess, port: int) -> bool:
        return proc.log_contains(_READY_LINE) and port_open("127.0.0.1", port)

    def _jvm_common(self, libs: Path) -> list[str]:
        # The G1 flags are those of Kafka's bin/kafka-run-class.sh; JMX is left off.
        return [
            "-server",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.work_dir / 'logs'}",
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
        ]

    def _write_keystore(self, sasl_ssl: KafkaSaslSsl) -> None:
        """``keystore.pem`` (key, then chain: Kafka's PEM key store file) and the broker's own password."""
        key = sasl_ssl.key_file.read_text("ascii")
        if "-----BEGIN PRIVATE KEY-----" not in key:
            raise ServerStartError(f"{sasl_ssl.key_file}: Kafka needs an unencrypted PKCS#8 key (BEGIN PRIVATE KEY)")
        keystore = self.work_dir / "keystore.pem"
        keystore.touch(mode=0o600)
        keystore.write_text(key.rstrip("\n") + "\n" + sasl_ssl.cert_file.read_text("ascii"))
        secret = self.work_dir / "broker-scram-password"
        if not secret.is_file():  # a restart on the same work dir keeps the user formatted with it
            secret.touch(mode=0o600)
            secret.write_text(secrets.token_hex(24))

    def _listener_config(self, broker_port: int, controller_port: int) -> str:
        name = self.security_protocol  # the client listener's name is its protocol
        listeners = f"""\
listeners={name}://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners={name}://127.0.0.1:{broker_port}
inter.broker.listener.name={name}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,{name}:{name}
"""
        if self.sasl_ssl is None:
            return listeners
        mechanism = self.sasl_ssl.mechanism
        password = (self.work_dir / "broker-scram-password").read_text().strip()
        return f"""{listeners}\
sasl.enabled.mechanisms={mechanism}
sasl.mechanism.inter.broker.protocol={mechanism}
listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required username="{_BROKER_USER}" password="{password}";
ssl.keystore.type=PEM
ssl.keystore.location={self.work_dir / "keystore.pem"}
ssl.truststore.type=PEM
ssl.truststore.location={self.sasl_ssl.ca_file}
ssl.client.auth=none
"""

    def _write_config(self, broker_port: int) -> None:
        controller_port = free_port()
        data = self.work_dir / "kraft-data"
        # Static single voter (controller.quorum.voters), so `format` runs without --standalone.
        props = f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
{self._listener_config(broker_port, controller_port)}log.dirs={data}
num.network.threads=2
num.io.threads=2
{topic_defaults(replicas=1, min_insync=1)}"""
        self._write_properties(props)

    def _write_properties(self, props: str) -> None:
        (self.work_dir / "server.properties").write_text(props)
        (self.work_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)

    def _format(self, java: str, libs: Path) -> None:
        id_file = self.work_dir / "cluster-id"
        if not id_file.is_file():
            id_file.write_text(_cluster_id())
        run_checked(
            [
                java,
                "-Xmx256m",
                *self._jvm_common(libs),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                id_file.read_text().strip(),
                "-c",
                str(self.work_dir / "server.properties"),
                "--ignore-formatted",  # a restart on the same work dir keeps its data
                *self._scram_arguments(),
            ],
            what="kafka StorageTool format",
            log_path=self.log_path,
            cwd=self.work_dir,
            timeout=120,
        )

    def _scram_arguments(self) -> list[str]:
        """StorageTool's ``--add-scram`` for every SCRAM user (KRaft keeps them in the metadata log)."""
        if self.sasl_ssl is None:
            return []
        users = dict(self.sasl_ssl.users)
        users[_BROKER_USER] = (self.work_dir / "broker-scram-password").read_text().strip()
        mechanism = self.sasl_ssl.mechanism
        return [
            arg
            for name, password in users.items()
            for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
        ]
