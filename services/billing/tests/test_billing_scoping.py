"""The overview is of one of the caller's accounts only (ADR 0024)."""

from __future__ import annotations

import pytest
from billing_helpers import GIB, activated, overview_call, point
from strongroom_billing import handlers
from strongroom_billing.errors import InvalidArgument, NotFound, PermissionDenied
from strongroom_billing.models import Usage
from strongroom_billing.ports import BillingStore
from strongroom_platform.auth import Role, operator

VIEWER = operator("token:viewer", {"acme": Role.VIEWER})
BOTH = operator("token:both", {"acme": Role.VIEWER, "globex": Role.ADMIN})
NOBODY = operator("token:nobody", {})


@pytest.fixture
async def two_accounts(store: BillingStore) -> BillingStore:
    await activated(store, "a", account="acme")
    await point(store, "a", "va", 5 * GIB)
    await activated(store, "g1", account="globex")
    await activated(store, "g2", account="globex")
    return store


async def test_the_overview_is_of_the_credentials_account(two_accounts: BillingStore) -> None:
    view = await handlers.get_overview(two_accounts, "", "", call=overview_call(VIEWER))
    assert view.usage == Usage(backed_up=1, unbacked_up=0, capacity_bytes=5 * GIB)
    globex = await handlers.get_overview(two_accounts, "", "", call=overview_call("globex"))
    assert globex.usage == Usage(backed_up=0, unbacked_up=2, capacity_bytes=0)


@pytest.mark.parametrize("account", ["globex", "no-such-account"])
async def test_another_account_is_not_found_like_an_unknown_one(two_accounts: BillingStore, account: str) -> None:
    with pytest.raises(NotFound) as info:
        await handlers.get_overview(two_accounts, account, "", call=overview_call(VIEWER))
    assert str(info.value) == f"account {account} not found"


async def test_a_credential_with_several_accounts_must_choose(two_accounts: BillingStore) -> None:
    with pytest.raises(InvalidArgument, match=r"several accounts \(acme, globex\); choose one with account_id"):
        await handlers.get_overview(two_accounts, "", "", call=overview_call(BOTH))
    chosen = await handlers.get_overview(two_accounts, "globex", "", call=overview_call(BOTH))
    assert chosen.usage.unbacked_up == 2


async def test_a_credential_without_accounts_sees_nothing(two_accounts: BillingStore) -> None:
    with pytest.raises(PermissionDenied, match="holds no account"):
        await handlers.get_overview(two_accounts, "", "", call=overview_call(NOBODY))
