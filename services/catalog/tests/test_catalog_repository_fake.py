"""The in-memory fake passes the repository contract."""

from __future__ import annotations

import datetime as dt

import pytest
from catalog_fixtures import T0
from contract_lifecycle import LifecycleContract
from contract_repository import CatalogRepositoryContract
from contract_search import SearchContract
from contract_tree import TreeContract
from strongroom_catalog.testing import InMemoryCatalogStore
from strongroom_platform.testing import FakeClock


class FakeHarness:
    def __init__(self) -> None:
        # The trusted time stands still: a year after the fixtures' T0.
        self.clock = FakeClock(T0 + dt.timedelta(days=365))
        self.fake = InMemoryCatalogStore(trusted_clock=self.clock)
        self.repo = self.fake

    async def outbox(self) -> list[tuple[str, str, bytes]]:
        return [(topic, key, event.SerializeToString()) for topic, key, event in self.fake.outbox]

    async def trusted_now(self) -> dt.datetime:
        return self.clock.now()

    async def keep_latest(self, instance_id: str) -> bool:
        return self.fake.keep_latest(instance_id)

    async def index_rows(self) -> tuple[int, int]:
        """How many browse and search rows the store holds."""
        return len(self.fake._state.tree), len(self.fake._state.changes)

    async def tree_rows(self) -> list[tuple[int, str, int]]:
        """(seq, path, type) of every browse row (ADR 0049)."""
        return [(c.seq, f"{c.parent}/{c.name}".lstrip("/"), c.type) for c in self.fake._state.tree.values()]


class TestInMemoryCatalogRepository(CatalogRepositoryContract, LifecycleContract, SearchContract, TreeContract):
    @pytest.fixture
    def harness(self) -> FakeHarness:  # type: ignore[override]
        return FakeHarness()
