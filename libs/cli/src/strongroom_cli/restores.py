"""``strongroom restore ...``: create, watch, list and cancel restore jobs."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable

import grpc
from strongroom.agent.v1 import gateway_pb2
from strongroom.catalog.v1 import catalog_pb2
from strongroom.restore.v1 import restore_pb2

from strongroom_cli import output, progress
from strongroom_cli.context import Context
from strongroom_cli.jobs import FINISHED_JOB_STATUSES, exit_code, job_status
from strongroom_cli.pages import every_page

FINISHED = FINISHED_JOB_STATUSES


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = groups.add_parser("restore", help="restore jobs")
    commands = group.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = commands.add_parser("create", parents=[common], help="restore files from a backup point")
    p.add_argument("point_id", metavar="POINT_ID")
    p.add_argument("--include", action="append", default=[], metavar="PATH", help="restore only this path (repeat)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATH", help="do not restore this path (repeat)")
    p.add_argument("--target-instance", default="", metavar="ID", help="destination instance (default: the source)")
    p.add_argument("--target-path", default="", metavar="DIR", help="existing directory (default: original path)")
    p.add_argument("--overwrite", action="store_true", help="overwrite existing files (default: skip them)")
    p.add_argument(
        "--confirm-original-path",
        action="store_true",
        help="restore onto another instance at the point's original paths (no --target-path); audited",
    )
    p.add_argument("--wait", action="store_true", help="follow the job to its end (exit 1 failed, 3 partial)")
    p.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(command=create)

    p = commands.add_parser("list", parents=[common], help="restore jobs of an instance")
    p.add_argument("instance_id", metavar="INSTANCE")
    p.set_defaults(command=list_jobs)
    for name, handler, text in (("show", show, "show a restore job"), ("cancel", cancel, "cancel a restore job")):
        p = commands.add_parser(name, parents=[common], help=text)
        p.add_argument("restore_job_id", metavar="ID")
        p.set_defaults(command=handler)


def print_job(context: Context, job: restore_pb2.RestoreJob) -> None:
    if context.json:
        output.as_json(job)
        return
    stats = job.stats
    output.fields(
        [
            ("Restore job", job.restore_job_id),
            ("Status", job_status(job.status)),
            ("Point", job.point_id),
            ("From instance", job.source_instance_id),
            ("To instance", job.target_instance_id),
            ("Target path", job.target_path or "original path"),
            ("Include", ", ".join(job.include_paths) or "all files"),
            ("Exclude", ", ".join(job.exclude_paths) or "-"),
            ("On conflict", "overwrite" if job.conflict_policy == gateway_pb2.CONFLICT_POLICY_OVERWRITE else "skip"),
            ("Restored", f"{stats.files_restored} files, {output.size(stats.bytes_restored)}"),
            ("Skipped", f"{stats.files_skipped} files"),
            ("Failed", f"{stats.files_failed} files"),
            ("Created", output.timestamp(job.created_at)),
            ("Finished", output.timestamp(job.finished_at, present=job.HasField("finished_at"))),
            ("Error", job.error or "-"),
        ]
    )
    print_failed_files(job)


def printable(text: str) -> str:
    """``text`` with control characters escaped (a file name may hold a newline or an escape sequence)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)


def print_failed_files(job: restore_pb2.RestoreJob) -> None:
    """The files the restore could not write, one ``path: reason`` line each (ADR 0030)."""
    if not job.failed_files:
        return
    print("Failed files:")
    for failed in job.failed_files:
        print(f"  {printable(failed.path)}: {printable(failed.reason)}")
    more = job.stats.files_failed - len(job.failed_files)
    if more > 0:
        print(f"  ... and {more} more (only the first {len(job.failed_files)} are kept)")


async def create(context: Context) -> int:
    args = context.args
    policy = gateway_pb2.CONFLICT_POLICY_OVERWRITE if args.overwrite else gateway_pb2.CONFLICT_POLICY_SKIP
    request = restore_pb2.CreateRestoreJobRequest(
        point_id=args.point_id,
        target_instance_id=args.target_instance,
        include_paths=args.include,
        exclude_paths=args.exclude,
        target_path=args.target_path,
        conflict_policy=policy,
        confirm_original_path_on_other_instance=args.confirm_original_path,
    )
    stub = context.restore()
    job = await stub.CreateRestoreJob(request, **context.call)
    if args.wait:
        poll = restore_pb2.GetRestoreJobRequest(restore_job_id=job.restore_job_id)
        total = await _point_bytes(context) if not (args.include or args.exclude) else 0
        job = await progress.follow(
            job,
            lambda: stub.GetRestoreJob(poll, **context.call),
            lambda j: j.status in FINISHED,
            lambda j: _restore_snapshot(j, total),
            show=not context.json,
            interval=args.poll_interval,
        )
    print_job(context, job)
    return exit_code(job.status)


async def _point_bytes(context: Context) -> int:
    """The size of the whole point (the total of a restore of everything), 0 when it cannot be read."""
    if not context.addresses.get("catalog"):
        return 0
    try:
        point = await context.catalog().GetPoint(
            catalog_pb2.GetPointRequest(point_id=context.args.point_id), **context.call
        )
    except grpc.aio.AioRpcError:
        return 0  # only the bar's total is missing; the job itself is what matters
    return int(point.total_bytes)


def _restore_snapshot(job: restore_pb2.RestoreJob, total: int) -> progress.Snapshot:
    stats = job.stats
    return progress.Snapshot(
        bytes_done=stats.bytes_restored,
        bytes_total=total,
        files_done=stats.files_restored + stats.files_skipped,
        state=job_status(job.status),
    )


async def show(context: Context) -> int:
    request = restore_pb2.GetRestoreJobRequest(restore_job_id=context.args.restore_job_id)
    print_job(context, await context.restore().GetRestoreJob(request, **context.call))
    return 0


async def cancel(context: Context) -> int:
    request = restore_pb2.GetRestoreJobRequest(restore_job_id=context.args.restore_job_id)
    print_job(context, await context.restore().CancelRestoreJob(request, **context.call))
    return 0


async def list_jobs(context: Context) -> int:
    def fetch(token: str, size: int) -> Awaitable[restore_pb2.ListRestoreJobsResponse]:
        request = restore_pb2.ListRestoreJobsRequest(
            instance_id=context.args.instance_id, page_size=size, page_token=token
        )
        return context.restore().ListRestoreJobs(request, **context.call)

    jobs = await every_page(fetch, lambda page: page.jobs)
    if not jobs:
        await context.require_instance(context.args.instance_id)
    if context.json:
        output.as_json(jobs)
        return 0
    rows = [
        [
            j.restore_job_id,
            job_status(j.status),
            j.point_id,
            j.target_instance_id,
            j.target_path or "original",
            str(j.stats.files_restored),
            output.timestamp(j.created_at),
            j.error or "",
        ]
        for j in jobs
    ]
    output.table(
        ["RESTORE JOB", "STATUS", "POINT", "TARGET", "PATH", "FILES", f"CREATED ({output.zone_label()})", "ERROR"], rows
    )
    return 0
