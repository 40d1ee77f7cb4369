"""The topic registry (proto/topics/*.yaml) and the code's topic table agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from strongroom_platform.events import TOPIC_MESSAGES, TOPIC_SPECS

TOPICS_DIR = Path(__file__).resolve().parents[2] / "proto" / "topics"
SERVICES = {"scheduler", "catalog", "billing", "agent-gateway", "restore"}


def registry() -> dict[str, dict[str, object]]:
    entries = {}
    for path in sorted(TOPICS_DIR.glob("*.yaml")):
        entry = yaml.safe_load(path.read_text())
        assert entry["topic"] == path.stem, f"{path.name} names topic {entry['topic']}"
        entries[path.stem] = entry
    return entries


def test_every_topic_in_code_is_registered_and_vice_versa() -> None:
    assert set(registry()) == set(TOPIC_MESSAGES)


@pytest.mark.parametrize("topic", sorted(TOPIC_MESSAGES))
def test_registered_message_type_matches_code(topic: str) -> None:
    entry = registry()[topic]
    assert entry["message"] == TOPIC_MESSAGES[topic].DESCRIPTOR.full_name
    producers = entry["producers"]
    consumers = entry["consumers"]
    assert isinstance(producers, list) and isinstance(consumers, list)
    assert producers and set(producers) <= SERVICES
    assert set(consumers) <= SERVICES
    # A topic nobody inside consumes (alert-raised) names who outside does.
    assert consumers or entry.get("external_consumers")


@pytest.mark.parametrize("topic", sorted(TOPIC_MESSAGES))
def test_partitions_replication_and_dead_letter_topic_match_code(topic: str) -> None:
    entry = registry()[topic]
    spec = TOPIC_SPECS[topic]
    assert (entry["partitions"], entry["replication_factor"]) == (spec.partitions, spec.replication_factor)
    assert entry["min_insync_replicas"] == spec.min_insync_replicas
    # Production: a write survives the loss of one broker (acks=all with 2 of 3 replicas in sync).
    assert spec.replication_factor > spec.min_insync_replicas >= 2
    assert entry["dead_letter_topic"] == spec.dead_letter_topic
    # What a service consumes can be dead-lettered; what none consumes has nowhere to go.
    assert (spec.dead_letter_topic is not None) == bool(entry["consumers"])


@pytest.mark.parametrize("topic", sorted(TOPIC_MESSAGES))
def test_message_carries_event_meta(topic: str) -> None:
    fields = TOPIC_MESSAGES[topic].DESCRIPTOR.fields_by_name
    assert fields["meta"].message_type.full_name == "strongroom.common.v1.EventMeta"
