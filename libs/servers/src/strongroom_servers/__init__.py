"""Launchers for real servers without Docker: PostgreSQL, Apache Kafka (KRaft), versitygw (S3), Tansu.

Each launcher is a small class with ``start()`` / ``stop()`` that also works as a context manager,
listens on a free 127.0.0.1 port, logs to a file in its work dir and raises
:class:`ServerStartError` (with the log tail) when the server does not come up. A server never
outlives the process that started it, even one killed with SIGKILL (a watchdog per server, ADR 0022). Downloads and
builds are cached under :func:`cache_root`. Importing this package starts nothing.
"""

from strongroom_servers._process import LocalServer, PrerequisiteMissing, ServerStartError, cache_root, free_port
from strongroom_servers.kafka import KAFKA_VERSION, KafkaSaslSsl, LocalKafka, ensure_kafka_libs
from strongroom_servers.kafka_cluster import LocalKafkaCluster
from strongroom_servers.kafka_probe import KafkaServerInfo, probe_kafka
from strongroom_servers.postgres import LocalPostgres, find_pg_bin_dir
from strongroom_servers.s3 import VERSITYGW_VERSION, LocalVersityGW, S3ServerTls, ensure_versitygw, s3_server_header
from strongroom_servers.tansu import LocalTansu, find_tansu

__all__ = [
    "KAFKA_VERSION",
    "VERSITYGW_VERSION",
    "KafkaSaslSsl",
    "KafkaServerInfo",
    "LocalKafka",
    "LocalKafkaCluster",
    "LocalPostgres",
    "LocalServer",
    "LocalTansu",
    "LocalVersityGW",
    "PrerequisiteMissing",
    "S3ServerTls",
    "ServerStartError",
    "cache_root",
    "ensure_kafka_libs",
    "ensure_versitygw",
    "find_pg_bin_dir",
    "find_tansu",
    "free_port",
    "probe_kafka",
    "s3_server_header",
]
