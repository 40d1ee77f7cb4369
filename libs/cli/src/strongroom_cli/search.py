"""``strongroom search NAME|GLOB [--instance ID]`` and ``strongroom history INSTANCE PATH``: file search (ADR 0043)."""

from __future__ import annotations

import argparse

from strongroom.catalog.v1 import catalog_pb2

from strongroom_cli import output
from strongroom_cli.context import Context

PAGE_SIZE = 200
DEFAULT_LIMIT = 1000
_TYPES = {1: "file", 2: "dir", 3: "symlink"}


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = groups.add_parser(
        "search", parents=[common], help="find files by name or glob in the live versions, with their versions"
    )
    p.add_argument(
        "pattern", metavar="NAME|GLOB", help="a file name or a glob of one: 'nginx.conf', '*.conf' (quote it)"
    )
    p.add_argument("--instance", default="", metavar="ID", help="only this instance (default: every instance)")
    p.add_argument("-i", "--ignore-case", action="store_true", help="match names case-insensitively")
    p.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many files (default {DEFAULT_LIMIT})"
    )
    p.set_defaults(command=search)
    p = groups.add_parser("history", parents=[common], help="the versions holding one path of an instance")
    p.add_argument("instance_id", metavar="INSTANCE")
    p.add_argument("path", metavar="PATH", help="absolute, as on the instance (e.g. /etc/nginx/nginx.conf)")
    p.set_defaults(command=history)


async def search(context: Context) -> int:
    limit = max(1, context.args.limit)
    hits: list[catalog_pb2.FileHit] = []
    token = ""
    while len(hits) < limit:
        request = catalog_pb2.ListFilesRequest(
            pattern=context.args.pattern,
            instance_id=context.args.instance,
            ignore_case=context.args.ignore_case,
            page_size=min(PAGE_SIZE, limit - len(hits)),
            page_token=token,
        )
        response = await context.catalog().ListFiles(request, **context.call)
        hits.extend(response.hits)
        token = response.next_page_token
        if not token:
            break
    hits = hits[:limit]
    if context.json:
        output.as_json(hits)
        return 0
    if not hits:
        print("(no file matches in the live versions)")
        return 0
    rows = []
    for hit in hits:
        newest = hit.versions[0]
        rows.append(
            [
                hit.instance_id,
                hit.full_path + ("/" if newest.type == 2 else ""),
                str(len(hit.versions)),
                newest.version_id,
                output.timestamp(newest.created_at),
                output.size(newest.size),
            ]
        )
    output.table(["INSTANCE", "PATH", "VERSIONS", "NEWEST", "CREATED", "SIZE"], rows)
    if token:
        print(f"(showing the first {limit}: narrow the pattern, add --instance, or raise --limit)")
    return 0


async def history(context: Context) -> int:
    request = catalog_pb2.GetFileHistoryRequest(instance_id=context.args.instance_id, path=context.args.path)
    hit = await context.catalog().GetFileHistory(request, **context.call)
    if context.json:
        output.as_json(hit)
        return 0
    print(f"{hit.full_path} on {hit.instance_id} (mount point {hit.mount_point}; path in the point: {hit.path})")
    rows = [
        [
            v.version_id,
            output.timestamp(v.created_at),
            v.point_id,
            _TYPES.get(v.type, "?"),
            output.size(v.size),
            output.mtime(v.mtime_ns),
        ]
        for v in hit.versions
    ]
    output.table(["VERSION", "CREATED", "POINT", "TYPE", "SIZE", "MODIFIED"], rows)
    return 0
