"""Apache Kafka as a small KRaft cluster on 127.0.0.1: one controller and N brokers (ADR 0061).

The single node of :mod:`strongroom_servers.kafka` serves the test suite; this cluster exists to
show what one node cannot: topics with replication factor 3 and ``min.insync.replicas`` 2, leaders
moving when a broker dies, writes refused when too few replicas are in sync. Every node is its own
JVM from the same cached jars, on free ports, and dies with the process that started it (ADR 0022).

Why one dedicated controller rather than three combined nodes: with combined nodes, two brokers
down is also two controllers of three down, the quorum is gone and nothing fences the dead
brokers, so a write fails for lack of a leader, not for lack of in-sync replicas. A dedicated
controller keeps the metadata quorum while brokers die, as a production cluster's separate
controllers (three of them there) do.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
from pathlib import Path
from typing import Self

from strongroom_servers._process import ServerStartError, StartedOnEnter, free_port
from strongroom_servers.kafka import KAFKA_VERSION, LocalKafka, _cluster_id, ensure_kafka_libs, topic_defaults

__all__ = ["LocalKafkaCluster"]

_CONTROLLER_ID = 0

# How fast the controller fences a broker that stopped heartbeating (defaults 9000 / 2000 ms): a
# killed broker's partitions get a new leader within seconds.
_SESSION_MS = 4000
_HEARTBEAT_MS = 500


class _Node(LocalKafka):
    """One node of a :class:`LocalKafkaCluster`: the controller (``broker_port`` None) or a broker.

    Its port is fixed, so a restart on the same work dir comes back where clients know it."""

    def __init__(
        self,
        work_dir: Path,
        *,
        node_id: int,
        controller_port: int,
        broker_port: int | None,
        cluster_id: str,
        libs_dir: Path,
        version: str,
        heap_max: str,
        start_timeout: float,
        stop_timeout: float,
    ) -> None:
        port = controller_port if broker_port is None else broker_port
        super().__init__(
            work_dir,
            port=port,
            libs_dir=libs_dir,
            version=version,
            heap_max=heap_max,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )
        self.node_id = node_id
        self._controller_port = controller_port
        self._broker_port = broker_port
        self._cluster = cluster_id

    def _prepare(self) -> None:
        super()._prepare()
        (self.work_dir / "cluster-id").write_text(self._cluster)  # every node formats with the same id

    def _write_config(self, broker_port: int) -> None:
        data = self.work_dir / "kraft-data"
        voters = f"controller.quorum.voters={_CONTROLLER_ID}@127.0.0.1:{self._controller_port}"
        if self._broker_port is None:
            props = f"""\
process.roles=controller
node.id={self.node_id}
{voters}
listeners=CONTROLLER://127.0.0.1:{self._controller_port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT
log.dirs={data}
num.io.threads=2
broker.session.timeout.ms={_SESSION_MS}
"""
        else:
            props = f"""\
process.roles=broker
node.id={self.node_id}
{voters}
listeners=PLAINTEXT://127.0.0.1:{broker_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
broker.heartbeat.interval.ms={_HEARTBEAT_MS}
{topic_defaults(replicas=3, min_insync=2)}"""
        self._write_properties(props)


class LocalKafkaCluster(StartedOnEnter):
    """One KRaft controller and ``brokers`` brokers on 127.0.0.1, each its own process.

    Contract: ``start()`` picks free ports, formats every node's storage with one cluster id,
    starts the controller, then the brokers together, and returns once each broker logged
    "Kafka Server started" and accepts connections (ServerStartError with the log tail otherwise;
    whatever started is stopped again). ``bootstrap`` lists every broker. ``kill(i)`` SIGKILLs
    broker ``i`` (no controlled shutdown: its partitions' leaders move once the controller fences
    it, after ``broker.session.timeout.ms``, 4 s here); ``restart(i)`` starts it again on the same
    port and data. ``stop()`` stops the brokers, then the controller. Logs:
    ``work_dir/<node>/kafka.log``.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        brokers: int = 3,
        libs_dir: Path | None = None,
        version: str = KAFKA_VERSION,
        heap_max: str = "512m",
        start_timeout: float = 180.0,
        stop_timeout: float = 30.0,
    ) -> None:
        if brokers < 1:
            raise ValueError("a cluster needs at least one broker")
        self.work_dir = Path(work_dir)
        self.version = version
        self._count = brokers
        self._libs_dir = libs_dir
        self._heap_max = heap_max
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._controller: _Node | None = None
        self._brokers: list[_Node] = []

    @property
    def brokers(self) -> list[LocalKafka]:
        """The broker nodes, in node id order (broker ``i`` has node id ``i + 1``)."""
        return list(self._brokers)

    @property
    def bootstrap(self) -> str:
        """Every broker's ``127.0.0.1:PORT``, comma-separated (PLAINTEXT)."""
        if not self._brokers:
            raise RuntimeError("LocalKafkaCluster is not running")
        return ",".join(f"127.0.0.1:{node._fixed_port}" for node in self._brokers)

    def start(self) -> Self:
        """Start the controller and the brokers; returns self."""
        if self._controller is not None:
            raise RuntimeError("LocalKafkaCluster already started")
        libs = self._libs_dir or ensure_kafka_libs(self.version)
        ports: set[int] = set()
        while len(ports) < self._count + 1:
            ports.add(free_port())
        controller_port, *broker_ports = sorted(ports)
        cluster_id = _cluster_id()

        def node(name: str, node_id: int, broker_port: int | None) -> _Node:
            return _Node(
                self.work_dir / name,
                node_id=node_id,
                controller_port=controller_port,
                broker_port=broker_port,
                cluster_id=cluster_id,
                libs_dir=libs,
                version=self.version,
                heap_max=self._heap_max,
                start_timeout=self._start_timeout,
                stop_timeout=self._stop_timeout,
            )

        self._controller = node("controller", _CONTROLLER_ID, None)
        self._brokers = [node(f"broker-{i + 1}", i + 1, port) for i, port in enumerate(broker_ports)]
        try:
            self._controller.start()
            with concurrent.futures.ThreadPoolExecutor(max_workers=self._count) as pool:
                for future in [pool.submit(broker.start) for broker in self._brokers]:
                    future.result()
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, index: int) -> None:
        """SIGKILL broker ``index`` (0-based) and wait until it is gone."""
        broker = self._brokers[index]
        pid = broker.pid
        if pid is None:
            raise RuntimeError(f"broker {index} is not running")
        os.kill(pid, signal.SIGKILL)
        proc = broker._proc
        assert proc is not None
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired as exc:
            raise ServerStartError(f"broker {index} (pid {pid}) still runs 30 s after SIGKILL") from exc
        broker.stop()  # reaps the watchdog; the node can start again

    def restart(self, index: int) -> None:
        """Start broker ``index`` again (same port, same data) and wait until it is ready."""
        broker = self._brokers[index]
        if broker.alive:
            raise RuntimeError(f"broker {index} is running")
        broker.stop()
        broker.start()

    def stop(self) -> None:
        """Stop every broker, then the controller. Idempotent."""
        for broker in self._brokers:
            broker.stop()
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def started(self) -> bool:
        return self._controller is not None
