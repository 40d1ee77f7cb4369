"""``strongroom versions list INSTANCE``: backup versions and their points."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable

from strongroom.catalog.v1 import catalog_pb2

from strongroom_cli import output
from strongroom_cli.context import Context
from strongroom_cli.pages import every_page


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = groups.add_parser("versions", help="backup versions")
    commands = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = commands.add_parser("list", parents=[common], help="versions of an instance, newest first, one row per point")
    p.add_argument("instance_id", metavar="INSTANCE")
    p.set_defaults(command=list_versions)


async def list_versions(context: Context) -> int:
    def fetch(token: str, size: int) -> Awaitable[catalog_pb2.ListVersionsResponse]:
        request = catalog_pb2.ListVersionsRequest(
            instance_id=context.args.instance_id, page_size=size, page_token=token
        )
        return context.catalog().ListVersions(request, **context.call)

    versions = await every_page(fetch, lambda page: page.versions)
    if not versions:
        await context.require_instance(context.args.instance_id)
    if context.json:
        output.as_json(versions)
        return 0
    rows = []
    for version in versions:
        for n, point in enumerate(version.points or [catalog_pb2.Point()]):
            rows.append(
                [
                    version.version_id if n == 0 else "",
                    output.timestamp(version.created_at) if n == 0 else "",
                    point.point_id or "-",
                    point.filesystem.mount_point or "-",
                    str(point.file_count),
                    output.size(point.total_bytes),
                    output.timestamp(point.retain_until, present=point.HasField("retain_until")),
                    "yes" if point.browsable else "not yet",
                ]
            )
    headers = [
        "VERSION",
        f"CREATED ({output.zone_label()})",
        "POINT",
        "MOUNT",
        "FILES",
        "SIZE",
        "RETAINED UNTIL",
        "BROWSABLE",
    ]
    output.table(headers, rows)
    return 0
