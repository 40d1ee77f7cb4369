"""The in-memory fake passes the repository contract."""

from __future__ import annotations

import pytest
from restore_contract_repository import RestoreRepositoryContract
from strongroom_restore.testing import InMemoryRestoreRepository


class FakeHarness:
    def __init__(self) -> None:
        self.fake = InMemoryRestoreRepository()
        self.repo = self.fake

    async def outbox(self) -> list[tuple[str, str, bytes]]:
        return [(topic, key, event.SerializeToString()) for topic, key, event in self.fake.outbox]


class TestInMemoryRestoreRepository(RestoreRepositoryContract):
    @pytest.fixture
    def harness(self) -> FakeHarness:  # type: ignore[override]
        return FakeHarness()
