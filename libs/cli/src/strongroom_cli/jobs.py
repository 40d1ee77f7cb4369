"""``strongroom jobs ...``: backup jobs of an instance."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable

from strongroom.common.v1 import common_pb2
from strongroom.scheduler.v1 import scheduler_pb2

from strongroom_cli import output
from strongroom_cli.context import Context
from strongroom_cli.pages import every_page


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = groups.add_parser("jobs", help="backup jobs")
    commands = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = commands.add_parser("list", parents=[common], help="jobs of an instance, newest first")
    p.add_argument("instance_id", metavar="INSTANCE")
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20; 0 = every job)")
    p.set_defaults(command=list_jobs)
    for name, handler, text in (("show", show, "show a job"), ("cancel", cancel, "cancel a queued or running job")):
        p = commands.add_parser(name, parents=[common], help=text)
        p.add_argument("job_id", metavar="JOB")
        p.set_defaults(command=handler)


FINISHED_JOB_STATUSES = frozenset(
    {
        common_pb2.JOB_STATUS_COMPLETE,
        common_pb2.JOB_STATUS_PARTIAL_COMPLETE,
        common_pb2.JOB_STATUS_FAILED,
        common_pb2.JOB_STATUS_CANCELED,
        common_pb2.JOB_STATUS_EXPIRED,
    }
)
# The exit code of a command that waited for a job: 0 complete, 3 partially complete (some files
# failed), 1 failed, canceled or expired. A job still running (no --wait) exits 0.
PARTIAL_EXIT = 3


def exit_code(status: int) -> int:
    if status not in FINISHED_JOB_STATUSES or status == common_pb2.JOB_STATUS_COMPLETE:
        return 0
    return PARTIAL_EXIT if status == common_pb2.JOB_STATUS_PARTIAL_COMPLETE else 1


def job_status(status: int) -> str:
    return output.enum_name(common_pb2.JobStatus.Name(status), "JOB_STATUS_")  # type: ignore[arg-type]


def print_job(context: Context, job: scheduler_pb2.BackupJob) -> None:
    if context.json:
        output.as_json(job)
        return
    stats = job.stats
    pairs = [
        ("Job", job.job_id),
        ("Instance", job.instance_id),
        ("Status", job_status(job.status)),
        ("Priority", output.enum_name(common_pb2.BackupPriority.Name(job.priority), "BACKUP_PRIORITY_")),
        ("Created", output.timestamp(job.created_at)),
        ("Finished", output.timestamp(job.finished_at, present=job.HasField("finished_at"))),
        ("Scanned", f"{stats.files_scanned} files, {output.size(stats.bytes_scanned)}"),
        ("Uploaded", output.size(stats.bytes_uploaded)),
        ("Failed files", str(stats.files_failed)),
        ("Version", job.version_id or "-"),
        ("Error", job.error or "-"),
    ]
    output.fields(pairs)
    for error in job.file_errors:
        print(f"  {error}")


async def list_jobs(context: Context) -> int:
    # Pages in order until --limit jobs (0: every job) or the last page (issue 14).
    def fetch(token: str, size: int) -> Awaitable[scheduler_pb2.ListJobsResponse]:
        request = scheduler_pb2.ListJobsRequest(instance_id=context.args.instance_id, page_size=size, page_token=token)
        return context.scheduler().ListJobs(request, **context.call)

    jobs = await every_page(fetch, lambda page: page.jobs, limit=max(context.args.limit, 0))
    if context.json:
        output.as_json(jobs)
        return 0
    rows = [
        [
            j.job_id,
            job_status(j.status),
            output.timestamp(j.created_at),
            output.timestamp(j.finished_at, present=j.HasField("finished_at")),
            str(j.stats.files_scanned),
            output.size(j.stats.bytes_uploaded),
            j.version_id or "-",
            j.error or "",
        ]
        for j in jobs
    ]
    output.table(
        ["JOB", "STATUS", f"CREATED ({output.zone_label()})", "FINISHED", "FILES", "UPLOADED", "VERSION", "ERROR"], rows
    )
    return 0


async def show(context: Context) -> int:
    request = scheduler_pb2.GetJobRequest(job_id=context.args.job_id)
    print_job(context, await context.scheduler().GetJob(request, **context.call))
    return 0


async def cancel(context: Context) -> int:
    request = scheduler_pb2.GetJobRequest(job_id=context.args.job_id)
    print_job(context, await context.scheduler().CancelJob(request, **context.call))
    return 0
