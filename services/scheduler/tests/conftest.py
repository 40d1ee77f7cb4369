from __future__ import annotations

import random

import pytest
from strongroom_platform.clock import utc
from strongroom_platform.testing import FakeClock
from strongroom_scheduler.handlers import Deps
from strongroom_scheduler.testing import InMemorySchedulerStore


@pytest.fixture
def clock() -> FakeClock:
    # 2026-01-01 10:00 UTC+8
    return FakeClock(utc(2026, 1, 1, 2, 0))


@pytest.fixture
def store() -> InMemorySchedulerStore:
    return InMemorySchedulerStore()


@pytest.fixture
def deps(store: InMemorySchedulerStore, clock: FakeClock) -> Deps:
    return Deps(store=store, clock=clock, rng=random.Random(7))
