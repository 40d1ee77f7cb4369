"""gRPC ``CatalogService``: a thin servicer over ``handlers``; errors become status codes in ``grpc_errors``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom_platform.auth import current_call
from strongroom_platform.clock import Clock
from strongroom_platform.events import to_timestamp

from strongroom_catalog import handlers, lifecycle, search
from strongroom_catalog.model import EntryRow, FileHit, Hold, PointRecord, VersionRecord
from strongroom_catalog.ports import CatalogStore


def point_message(point: PointRecord) -> catalog_pb2.Point:
    message = catalog_pb2.Point(
        point_id=point.point_id,
        version_id=point.version_id,
        instance_id=point.instance_id,
        account_id=point.account_id,
        filesystem=common_pb2.Filesystem(
            mount_point=point.mount_point,
            device=point.device,
            fs_type=point.fs_type,
            capacity_bytes=point.capacity_bytes,
        ),
        manifest_key=point.manifest_key,
        file_count=point.file_count,
        total_bytes=point.total_bytes,
        created_at=to_timestamp(point.created_at),
        browsable=point.browsable,
    )
    if point.retain_until is not None:
        message.retain_until.CopyFrom(to_timestamp(point.retain_until))
    return message


def version_message(version: VersionRecord) -> catalog_pb2.Version:
    return catalog_pb2.Version(
        version_id=version.version_id,
        instance_id=version.instance_id,
        account_id=version.account_id,
        created_at=to_timestamp(version.created_at),
        points=[point_message(p) for p in version.points],
    )


def entry_message(row: EntryRow) -> common_pb2.FileEntry:
    return common_pb2.FileEntry(
        path=row.path,
        type=common_pb2.EntryType.ValueType(row.type),
        mode=row.mode,
        uid=row.uid,
        gid=row.gid,
        size=row.size,
        mtime_ns=row.mtime_ns,
        link_target=row.link_target,
    )


def hold_message(hold: Hold) -> catalog_pb2.Hold:
    message = catalog_pb2.Hold(
        hold_id=hold.hold_id,
        instance_id=hold.instance_id,
        account_id=hold.account_id,
        kind=catalog_pb2.HoldKind.ValueType(hold.kind),
        reason=hold.reason,
        placed_by=hold.placed_by,
        placed_at=to_timestamp(hold.placed_at),
        released_by=hold.released_by,
    )
    if hold.released_at is not None:
        message.released_at.CopyFrom(to_timestamp(hold.released_at))
    return message


def file_hit_message(hit: FileHit) -> catalog_pb2.FileHit:
    return catalog_pb2.FileHit(
        instance_id=hit.instance_id,
        account_id=hit.account_id,
        mount_point=hit.mount_point,
        path=hit.path,
        full_path=hit.full_path,
        versions=[
            catalog_pb2.FileVersion(
                version_id=v.version_id,
                point_id=v.point_id,
                created_at=to_timestamp(v.created_at),
                type=common_pb2.EntryType.ValueType(v.type),
                size=v.size,
                mtime_ns=v.mtime_ns,
            )
            for v in hit.versions
        ],
    )


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    """Every method passes the call's ``CallAuth`` (set by the auth interceptor) to its handler."""

    def __init__(self, repo: CatalogStore, clock: Clock) -> None:
        self._repo = repo
        self._clock = clock

    async def ListVersions(
        self, request: catalog_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.ListVersionsResponse:
        page = await handlers.list_versions(
            self._repo,
            request.instance_id,
            page_size=request.page_size,
            page_token=request.page_token,
            call=current_call(),
        )
        return catalog_pb2.ListVersionsResponse(
            versions=[version_message(v) for v in page.versions], next_page_token=page.next_page_token
        )

    async def GetPoint(
        self, request: catalog_pb2.GetPointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.Point:
        point = await handlers.get_point(self._repo, request.point_id, call=current_call())
        return point_message(point)

    async def BrowsePoint(
        self, request: catalog_pb2.BrowsePointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.BrowsePointResponse:
        rows, token = await handlers.browse_point(
            self._repo,
            request.point_id,
            request.path,
            call=current_call(),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return catalog_pb2.BrowsePointResponse(entries=[entry_message(r) for r in rows], next_page_token=token)

    async def ReinstateBackup(
        self, request: catalog_pb2.ReinstateBackupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.ReinstateBackupResponse:
        versions = await lifecycle.reinstate_backup(self._repo, self._clock, request.instance_id, call=current_call())
        return catalog_pb2.ReinstateBackupResponse(instance_id=request.instance_id.strip(), version_ids=versions)

    async def PlaceHold(
        self, request: catalog_pb2.PlaceHoldRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.Hold:
        hold = await lifecycle.place_hold(
            self._repo, self._clock, request.instance_id, int(request.kind), request.reason, call=current_call()
        )
        return hold_message(hold)

    async def ReleaseHold(
        self, request: catalog_pb2.ReleaseHoldRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.Hold:
        return hold_message(await lifecycle.release_hold(self._repo, self._clock, request.hold_id, call=current_call()))

    async def ListHolds(
        self, request: catalog_pb2.ListHoldsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.ListHoldsResponse:
        holds, next_page = await lifecycle.list_holds(
            self._repo,
            request.instance_id,
            request.include_released,
            page_size=request.page_size,
            page_token=request.page_token,
            call=current_call(),
        )
        return catalog_pb2.ListHoldsResponse(holds=[hold_message(h) for h in holds], next_page_token=next_page)

    async def ListFiles(
        self, request: catalog_pb2.ListFilesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.ListFilesResponse:
        page = await search.search_files(
            self._repo,
            request.pattern,
            call=current_call(),
            instance_id=request.instance_id,
            ignore_case=request.ignore_case,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return catalog_pb2.ListFilesResponse(
            hits=[file_hit_message(h) for h in page.hits], next_page_token=page.next_page_token
        )

    async def GetFileHistory(
        self, request: catalog_pb2.GetFileHistoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.FileHit:
        hit = await search.file_history(self._repo, request.instance_id, request.path, call=current_call())
        return file_hit_message(hit)


def register(servicer: CatalogServicer) -> Callable[[grpc.aio.Server], None]:
    """The registration callback for ``strongroom_platform.runtime.start_grpc_server``."""

    def add(server: grpc.aio.Server) -> None:
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(servicer, server)

    return add
