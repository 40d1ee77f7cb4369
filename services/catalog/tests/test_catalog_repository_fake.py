"""The in-memory fake passes the repository contract."""

from __future__ import annotations

import pytest
from contract_repository import CatalogRepositoryContract
from strongroom_catalog.testing import InMemoryCatalogStore


class FakeHarness:
    def __init__(self) -> None:
        self.fake = InMemoryCatalogStore()
        self.repo = self.fake

    async def outbox(self) -> list[tuple[str, str, bytes]]:
        return [(topic, key, event.SerializeToString()) for topic, key, event in self.fake.outbox]


class TestInMemoryCatalogRepository(CatalogRepositoryContract):
    @pytest.fixture
    def harness(self) -> FakeHarness:  # type: ignore[override]
        return FakeHarness()
