"""Partition counts (ADR 0050): the registry's production default and the setting that replaces it."""

from __future__ import annotations

import pytest
from strongroom_platform.eventbus_kafka import _partition_of, _spec_for
from strongroom_platform.events import JOB_REQUESTED, topic_spec
from strongroom_platform.settings import PlatformSettings, SettingsError

BASE = {
    "STRONGROOM_PG_DSN": "postgresql://x",
    "STRONGROOM_KAFKA_BOOTSTRAP": "k:9092",
    "STRONGROOM_OBJECT_STORE": "file:/x",
    "STRONGROOM_INSECURE_PLAINTEXT": "1",
}


def test_the_setting_is_optional_and_bounded() -> None:
    assert PlatformSettings.from_env(BASE).kafka_partitions is None
    assert PlatformSettings.from_env({**BASE, "STRONGROOM_KAFKA_PARTITIONS": "3"}).kafka_partitions == 3
    for bad in ("0", "1001", "many"):
        with pytest.raises(SettingsError, match="STRONGROOM_KAFKA_PARTITIONS"):
            PlatformSettings.from_env({**BASE, "STRONGROOM_KAFKA_PARTITIONS": bad})


def test_registered_topics_and_their_dead_letter_topics_take_the_setting() -> None:
    assert topic_spec(JOB_REQUESTED).partitions == 12
    assert _spec_for(JOB_REQUESTED).partitions == 12
    assert _spec_for(JOB_REQUESTED, 2).partitions == 2
    assert _spec_for(f"{JOB_REQUESTED}.dlq", 2).partitions == 2
    assert _spec_for(f"{JOB_REQUESTED}.dlq", 2).dead_letter_topic is None
    # A topic outside the registry (tests) keeps its single partition.
    assert _spec_for("scratch-topic", 2).partitions == 1


def test_a_key_keeps_its_partition_as_the_java_client_picks_it() -> None:
    # The partition aiokafka's DefaultPartitioner (the Java client's murmur2) picks for the same key.
    from aiokafka.partitioner import DefaultPartitioner

    partitions = list(range(12))
    for key in (b"instance-1", b"i-0042", b"\xff" * 40):
        assert _partition_of(key, 12) == DefaultPartitioner()(key, partitions, partitions)
