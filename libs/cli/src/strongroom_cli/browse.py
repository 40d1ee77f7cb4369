"""``strongroom browse POINT_ID [PATH]``: the entries of one directory of a backup point, like ``ls -l``."""

from __future__ import annotations

import argparse

from strongroom.catalog.v1 import catalog_pb2
from strongroom.common.v1 import common_pb2

from strongroom_cli import output
from strongroom_cli.context import Context

_TYPE_CHAR = {common_pb2.ENTRY_TYPE_DIRECTORY: "d", common_pb2.ENTRY_TYPE_SYMLINK: "l", common_pb2.ENTRY_TYPE_FILE: "-"}
PAGE_SIZE = 1000


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = groups.add_parser("browse", parents=[common], help="list a directory of a backup point")
    p.add_argument("point_id", metavar="POINT_ID")
    p.add_argument("path", nargs="?", default="", metavar="PATH", help="point-relative directory (default: its root)")
    p.set_defaults(command=browse)


async def browse(context: Context) -> int:
    path = context.args.path.strip("/")
    entries: list[common_pb2.FileEntry] = []
    token = ""
    while True:
        request = catalog_pb2.BrowsePointRequest(
            point_id=context.args.point_id, path=path, page_size=PAGE_SIZE, page_token=token
        )
        response = await context.catalog().BrowsePoint(request, **context.call)
        entries.extend(response.entries)
        token = response.next_page_token
        if not token:
            break
    if context.json:
        output.as_json(entries)
        return 0
    if not entries:
        print("(empty directory)")
        return 0
    width = max(len(str(e.size)) for e in entries)
    for entry in entries:
        name = entry.path.rsplit("/", 1)[-1]
        if entry.type == common_pb2.ENTRY_TYPE_DIRECTORY:
            name += "/"
        elif entry.type == common_pb2.ENTRY_TYPE_SYMLINK:
            name += f" -> {entry.link_target}"
        mode = output.permissions(_TYPE_CHAR.get(entry.type, "?"), entry.mode)
        print(f"{mode}  {entry.size:>{width}}  {output.mtime(entry.mtime_ns)}  {name}")
    return 0
