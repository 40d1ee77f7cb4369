"""The in-memory fake passes the repository contract."""

from __future__ import annotations

import pytest
from restore_contract_repository import RestoreRepositoryContract
from strongroom_restore.testing import InMemoryRestoreStore


class FakeHarness:
    def __init__(self) -> None:
        self.fake = InMemoryRestoreStore()
        self.repo = self.fake

    async def outbox(self) -> list[tuple[str, str, bytes]]:
        return [(topic, key, event.SerializeToString()) for topic, key, event in self.fake.outbox]


class TestInMemoryRestoreRepository(RestoreRepositoryContract):
    @pytest.fixture
    def harness(self) -> FakeHarness:  # type: ignore[override]
        return FakeHarness()
