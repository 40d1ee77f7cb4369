"""CatalogService over a real in-process gRPC server, backed by the in-memory repository."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from catalog_fixtures import T0, point_created, sample_manifest
from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom_catalog.grpc_api import CatalogServicer, register
from strongroom_catalog.handlers import handle_point_created
from strongroom_catalog.testing import InMemoryCatalogStore
from strongroom_platform.auth import Role
from strongroom_platform.testing import FakeClock, InMemoryObjectStore, serve_authenticated


@pytest.fixture
async def repo() -> InMemoryCatalogStore:
    repo = InMemoryCatalogStore()
    store = InMemoryObjectStore()
    await store.put("manifests/p1", sample_manifest())
    await store.put("manifests/p2", sample_manifest())
    await handle_point_created(point_created("p1", "v1"), repo=repo, store=store)
    await handle_point_created(
        point_created("p2", "v2", created_at=T0 + dt.timedelta(days=1), manifest_key="manifests/p2"),
        repo=repo,
        store=store,
    )
    await handle_point_created(
        point_created("p3", "v2", created_at=T0 + dt.timedelta(days=1), mount_point="/data"),
        repo=repo,
        store=store,
    )
    return repo


@pytest.fixture
async def stub(repo: InMemoryCatalogStore) -> AsyncIterator[catalog_pb2_grpc.CatalogServiceAsyncStub]:
    async with serve_authenticated(register(CatalogServicer(repo, FakeClock(T0))), {"acct": Role.ADMIN}) as channel:
        yield catalog_pb2_grpc.CatalogServiceStub(channel)  # type: ignore[misc]


async def expect_error(call: object, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code
    assert message in (info.value.details() or "")


async def test_list_versions_newest_first_with_points(stub: catalog_pb2_grpc.CatalogServiceAsyncStub) -> None:
    response = await stub.ListVersions(catalog_pb2.ListVersionsRequest(instance_id="i-1"))
    assert [v.version_id for v in response.versions] == ["v2", "v1"]
    newest = response.versions[0]
    assert newest.created_at.ToDatetime(tzinfo=dt.UTC) == T0 + dt.timedelta(days=1)
    assert [(p.point_id, p.filesystem.mount_point, p.browsable) for p in newest.points] == [
        ("p2", "/", True),
        ("p3", "/data", False),  # no manifest for p3
    ]
    assert newest.instance_id == "i-1" and newest.account_id == "acct" and response.next_page_token == ""


async def test_list_versions_in_pages(stub: catalog_pb2_grpc.CatalogServiceAsyncStub) -> None:
    first = await stub.ListVersions(catalog_pb2.ListVersionsRequest(instance_id="i-1", page_size=1))
    assert [v.version_id for v in first.versions] == ["v2"] and first.next_page_token
    rest = await stub.ListVersions(
        catalog_pb2.ListVersionsRequest(instance_id="i-1", page_size=1, page_token=first.next_page_token)
    )
    assert ([v.version_id for v in rest.versions], rest.next_page_token) == (["v1"], "")
    await expect_error(
        stub.ListVersions(catalog_pb2.ListVersionsRequest(instance_id="i-1", page_token="garbage!")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token is not one this service issued; start again without it",
    )


async def test_list_versions_without_instance(stub: catalog_pb2_grpc.CatalogServiceAsyncStub) -> None:
    await expect_error(
        stub.ListVersions(catalog_pb2.ListVersionsRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "instance_id is required",
    )


async def test_get_point(stub: catalog_pb2_grpc.CatalogServiceAsyncStub) -> None:
    p = await stub.GetPoint(catalog_pb2.GetPointRequest(point_id="p1"))
    assert (p.point_id, p.version_id, p.instance_id, p.manifest_key) == ("p1", "v1", "i-1", "manifests/p1")
    assert p.filesystem == common_pb2.Filesystem(
        mount_point="/", device="/dev/vda1", fs_type="ext4", capacity_bytes=40 << 30
    )
    assert (p.file_count, p.total_bytes, p.browsable) == (5, 2173, True)
    assert p.created_at.ToDatetime(tzinfo=dt.UTC) == T0
    assert p.retain_until.ToDatetime(tzinfo=dt.UTC) == T0 + dt.timedelta(days=31)


async def test_get_unknown_point(stub: catalog_pb2_grpc.CatalogServiceAsyncStub) -> None:
    await expect_error(
        stub.GetPoint(catalog_pb2.GetPointRequest(point_id="nope")), grpc.StatusCode.NOT_FOUND, "'nope' not found"
    )


async def test_browse(stub: catalog_pb2_grpc.CatalogServiceAsyncStub) -> None:
    first = await stub.BrowsePoint(catalog_pb2.BrowsePointRequest(point_id="p1", path="etc", page_size=1))
    assert [(e.path, e.type) for e in first.entries] == [("etc/hosts", common_pb2.ENTRY_TYPE_FILE)]
    assert first.entries[0].size == 120 and not first.entries[0].chunk_ids
    second = await stub.BrowsePoint(
        catalog_pb2.BrowsePointRequest(point_id="p1", path="etc", page_size=1, page_token=first.next_page_token)
    )
    assert [e.path for e in second.entries] == ["etc/nginx"] and second.next_page_token == ""
    home = await stub.BrowsePoint(catalog_pb2.BrowsePointRequest(point_id="p1", path="home"))
    link = home.entries[1]
    assert (link.path, link.type, link.link_target) == ("home/link", common_pb2.ENTRY_TYPE_SYMLINK, "a.txt")


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (catalog_pb2.BrowsePointRequest(point_id="p1", path="../x"), grpc.StatusCode.INVALID_ARGUMENT, "'..'"),
        (catalog_pb2.BrowsePointRequest(point_id="p1", path="/etc"), grpc.StatusCode.INVALID_ARGUMENT, "leading"),
        (
            catalog_pb2.BrowsePointRequest(point_id="p1", page_token="garbage"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        ),
        (catalog_pb2.BrowsePointRequest(point_id="nope"), grpc.StatusCode.NOT_FOUND, "'nope' not found"),
        (catalog_pb2.BrowsePointRequest(point_id="p1", path="var"), grpc.StatusCode.NOT_FOUND, "no directory"),
        (
            catalog_pb2.BrowsePointRequest(point_id="p1", path="etc/hosts"),
            grpc.StatusCode.NOT_FOUND,
            "not a directory",
        ),
        (
            catalog_pb2.BrowsePointRequest(point_id="p3"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "manifest 'manifests/p3' not found",
        ),
    ],
)
async def test_browse_failures(
    stub: catalog_pb2_grpc.CatalogServiceAsyncStub,
    request_: catalog_pb2.BrowsePointRequest,
    code: grpc.StatusCode,
    message: str,
) -> None:
    await expect_error(stub.BrowsePoint(request_), code, message)


async def test_list_files_by_name_with_versions(stub: catalog_pb2_grpc.CatalogServiceAsyncStub) -> None:
    response = await stub.ListFiles(catalog_pb2.ListFilesRequest(pattern="*.conf"))
    (hit,) = response.hits
    assert (hit.instance_id, hit.mount_point, hit.path, hit.full_path) == (
        "i-1",
        "/",
        "etc/nginx/nginx.conf",
        "/etc/nginx/nginx.conf",
    )
    assert [(v.version_id, v.point_id, v.size) for v in hit.versions] == [("v2", "p2", 2048), ("v1", "p1", 2048)]
    assert hit.versions[0].type == common_pb2.ENTRY_TYPE_FILE and not response.next_page_token
    history = await stub.GetFileHistory(catalog_pb2.GetFileHistoryRequest(instance_id="i-1", path="/etc/hosts"))
    assert [v.point_id for v in history.versions] == ["p2", "p1"]


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (catalog_pb2.ListFilesRequest(pattern=""), grpc.StatusCode.INVALID_ARGUMENT, "pattern is required"),
        (catalog_pb2.ListFilesRequest(pattern="*"), grpc.StatusCode.INVALID_ARGUMENT, "matches every name"),
        (catalog_pb2.ListFilesRequest(pattern="etc/hosts"), grpc.StatusCode.INVALID_ARGUMENT, "contains '/'"),
        (catalog_pb2.ListFilesRequest(pattern="x", page_token="garbage"), grpc.StatusCode.INVALID_ARGUMENT, "token"),
        (catalog_pb2.ListFilesRequest(pattern="x", instance_id="i-9"), grpc.StatusCode.NOT_FOUND, "i-9"),
        (catalog_pb2.GetFileHistoryRequest(instance_id="i-1", path="/nope"), grpc.StatusCode.NOT_FOUND, "/nope"),
        (catalog_pb2.GetFileHistoryRequest(instance_id="i-1", path="x"), grpc.StatusCode.INVALID_ARGUMENT, "absolute"),
    ],
)
async def test_search_failures(
    stub: catalog_pb2_grpc.CatalogServiceAsyncStub, call: object, code: grpc.StatusCode, message: str
) -> None:
    method = stub.ListFiles if isinstance(call, catalog_pb2.ListFilesRequest) else stub.GetFileHistory
    await expect_error(method(call), code, message)  # type: ignore[operator]
