"""The catalog's reads act only within the caller's accounts (ADR 0024).

A point of another account is refused with exactly the NotFound of an unknown id (also when it
expired: that would tell it exists); an instance of another account lists no versions, like an
unknown one. The restore service reads the points of every account.
"""

from __future__ import annotations

import pytest
from catalog_fixtures import T0, call, point, point_created, sample_manifest
from strongroom_catalog import handlers
from strongroom_catalog.errors import NotFound
from strongroom_catalog.testing import InMemoryCatalogStore
from strongroom_platform.auth import Principal, Role, operator, service
from strongroom_platform.testing import InMemoryObjectStore

GLOBEX_ADMIN = operator("token:globex", {"globex": Role.ADMIN})
ACCT_VIEWER = operator("token:viewer", {"acct": Role.VIEWER})
BOTH = operator("token:both", {"acct": Role.VIEWER, "globex": Role.VIEWER})


@pytest.fixture
async def repo() -> InMemoryCatalogStore:
    repo = InMemoryCatalogStore()
    store = InMemoryObjectStore()
    await store.put("manifests/p1", sample_manifest())
    await handlers.handle_point_created(point_created("p1", "v1"), repo=repo, store=store)
    async with repo.transaction() as tx:  # a point of globex, on another instance
        await tx.upsert_point(point("g1", "vg", instance_id="i-g", account_id="globex"))
    return repo


async def refusal(principal: Principal, method: str, repo: InMemoryCatalogStore, point_id: str) -> str:
    with pytest.raises(NotFound) as info:
        if method == "GetPoint":
            await handlers.get_point(repo, point_id, call=call(method, principal))
        else:
            await handlers.browse_point(repo, point_id, "", call=call(method, principal))
    return str(info.value)


@pytest.mark.parametrize("method", ["GetPoint", "BrowsePoint"])
async def test_a_point_of_another_account_is_not_found_like_a_random_id(
    repo: InMemoryCatalogStore, method: str
) -> None:
    foreign = await refusal(GLOBEX_ADMIN, method, repo, "p1")
    missing = await refusal(GLOBEX_ADMIN, method, repo, "p-random")
    assert foreign == missing.replace("p-random", "p1") == "point 'p1' not found"


async def test_an_expired_point_of_another_account_does_not_say_expired(repo: InMemoryCatalogStore) -> None:
    repo.mark_expired("v1", T0)
    assert await refusal(GLOBEX_ADMIN, "GetPoint", repo, "p1") == "point 'p1' not found"
    assert "has expired" in await refusal(ACCT_VIEWER, "GetPoint", repo, "p1")


async def test_a_viewer_reads_and_browses_its_points(repo: InMemoryCatalogStore) -> None:
    assert (await handlers.get_point(repo, "p1", call=call("GetPoint", ACCT_VIEWER))).point_id == "p1"
    rows, _ = await handlers.browse_point(repo, "p1", "", call=call("BrowsePoint", ACCT_VIEWER))
    assert rows


async def test_versions_of_another_accounts_instance_list_like_an_unknown_instance(
    repo: InMemoryCatalogStore,
) -> None:
    own = (await handlers.list_versions(repo, "i-1", call=call("ListVersions", ACCT_VIEWER))).versions
    assert [v.version_id for v in own] == ["v1"]
    assert (await handlers.list_versions(repo, "i-1", call=call("ListVersions", GLOBEX_ADMIN))).versions == []
    assert (await handlers.list_versions(repo, "i-unknown", call=call("ListVersions", GLOBEX_ADMIN))).versions == []
    theirs = (await handlers.list_versions(repo, "i-g", call=call("ListVersions", GLOBEX_ADMIN))).versions
    assert [v.version_id for v in theirs] == ["vg"]
    assert (await handlers.list_versions(repo, "i-g", call=call("ListVersions", ACCT_VIEWER))).versions == []


async def test_a_credential_with_several_accounts_reads_each(repo: InMemoryCatalogStore) -> None:
    # by instance or point id, no choice is needed: the resource says its account
    for instance_id, version_id in (("i-1", "v1"), ("i-g", "vg")):
        versions = (await handlers.list_versions(repo, instance_id, call=call("ListVersions", BOTH))).versions
        assert [v.version_id for v in versions] == [version_id]
    assert (await handlers.get_point(repo, "g1", call=call("GetPoint", BOTH))).account_id == "globex"


async def test_the_restore_service_reads_points_of_every_account(repo: InMemoryCatalogStore) -> None:
    restore = call("GetPoint", service("restore"))
    assert (await handlers.get_point(repo, "p1", call=restore)).account_id == "acct"
    assert (await handlers.get_point(repo, "g1", call=restore)).account_id == "globex"
    with pytest.raises(NotFound, match="point 'nope' not found"):
        await handlers.get_point(repo, "nope", call=restore)
