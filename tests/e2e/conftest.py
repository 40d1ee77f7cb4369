"""Fixtures shared by the end-to-end modules.

Each end-to-end test runs its stack against a Kafka broker of its own (``stack_kafka``). The five
services join the same consumer groups in every test, and on a broker shared by the session a
later test's gateway was seen (2 of 8 runs on 2026-12-06) never to receive its first event: a
consumer-group hand-over between consecutive stacks that did not complete. A broker per test
(about 10 s to start) takes that hand-over out of the tests; the production behaviour is one group
per service, which the other suites cover. With an external broker (``TEST_KAFKA_BOOTSTRAP``) the
shared one is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from strongroom_servers.kafka import LocalKafka
from strongroom_testing.fixtures import start_or_skip
from test_backup_restore import platform

__all__ = ["platform", "stack_kafka"]


@pytest.fixture
def stack_kafka(kafka_bootstrap: str, tmp_path: Path) -> Iterator[str]:
    """``host:port`` of a Kafka broker for this test's stack alone (see the module docstring)."""
    if os.environ.get("TEST_KAFKA_BOOTSTRAP"):
        yield kafka_bootstrap
        return
    with start_or_skip(LocalKafka(tmp_path / "kafka")) as kafka:
        yield kafka.bootstrap
