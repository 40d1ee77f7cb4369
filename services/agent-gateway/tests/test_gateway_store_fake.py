"""The in-memory store passes the store contract."""

from __future__ import annotations

import pytest
from gateway_store_contract import GatewayStoreContract
from strongroom_gateway.testing import InMemoryGatewayStore


class FakeHarness:
    def __init__(self) -> None:
        self.store = InMemoryGatewayStore()

    async def outbox(self) -> list[tuple[str, str]]:
        return [(topic, key) for topic, key, _ in self.store.outbox]


class TestInMemoryGatewayStore(GatewayStoreContract):
    @pytest.fixture
    async def harness(self) -> FakeHarness:  # type: ignore[override]
        return FakeHarness()
