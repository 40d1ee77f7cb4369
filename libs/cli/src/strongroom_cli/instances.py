"""``strongroom instances ...``: activate, list, show, pause, resume, cancel, change settings, back up now,
issue a new enrollment token."""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path

from strongroom.catalog.v1 import catalog_pb2
from strongroom.common.v1 import common_pb2
from strongroom.scheduler.v1 import scheduler_pb2

from strongroom_cli import agent_install, output, progress
from strongroom_cli.args import PRIORITIES, on_off, time_of_day
from strongroom_cli.context import Context, UsageError
from strongroom_cli.jobs import FINISHED_JOB_STATUSES, exit_code, job_status, print_job
from strongroom_cli.pages import every_page
from strongroom_cli.pins import spki_sha256_pem

DEFAULT_REGION = "local"


_IN_ZONE = "in the schedule zone (the deployment's STRONGROOM_ZONE, default UTC+8)"


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = groups.add_parser("instances", help="instances with backup activated")
    commands = group.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = commands.add_parser("list", parents=[common], help="list instances (canceled ones are not listed)")
    p.add_argument("--region", default="", help="only this region (default: all)")
    p.set_defaults(command=list_instances)

    p = commands.add_parser("activate", parents=[common], help="activate backup and print the enrollment token")
    p.add_argument("name", nargs="?", default="", help="name of a new instance (not with --instance)")
    p.add_argument("--instance", default="", metavar="ID", help="activate this instance of the inventory")
    p.add_argument("--host-id", default="", help="the host's identity: its inventory instance, or a new one")
    p.add_argument("--region", default=DEFAULT_REGION, help=f"region label (default {DEFAULT_REGION})")
    p.add_argument("--priority", choices=sorted(PRIORITIES), help="backup priority (default low)")
    p.add_argument(
        "--time",
        type=time_of_day,
        metavar="HH:MM",
        help=f"daily start {_IN_ZONE} (default: random 00:00-06:00)",
    )
    p.add_argument(
        "--agent-gateway",
        metavar="HOST:PORT",
        help="the gateway address agents enroll with (default $STRONGROOM_AGENT_GATEWAY); with --agent-repo, "
        "prints a one-line install-and-enroll command",
    )
    p.add_argument(
        "--agent-repo",
        metavar="URL",
        help="where `make packages`' dist/ is published (default $STRONGROOM_AGENT_REPO)",
    )
    p.add_argument(
        "--agent-ca",
        metavar="FILE",
        help="CA bundle agents trust for the gateway, embedded and pinned (default $STRONGROOM_AGENT_CA; "
        "none: the host's trusted CAs)",
    )
    p.set_defaults(command=activate)

    for name, handler, text in (
        ("show", show, "show an instance"),
        ("pause", pause, "pause scheduled backups"),
        ("resume", resume, "resume scheduled backups"),
        ("cancel", cancel, "cancel backup: versions hidden at once, deleted when their locks pass; agent uninstalled"),
        ("reinstate", reinstate, "undo a cancel while the versions' locks hold: listed and restorable again"),
        ("release", release, "the inventory says the host is gone: Stopped, its jobs stop"),
        ("issue-token", issue_token, "a new enrollment token: the agent enrolls again to this instance id"),
    ):
        p = commands.add_parser(name, parents=[common], help=text)
        p.add_argument("instance_id", metavar="ID")
        p.set_defaults(command=handler)
    p = commands.add_parser("backup-now", parents=[common], help="start a backup job now")
    p.add_argument("instance_id", metavar="ID")
    p.add_argument("--wait", action="store_true", help="follow the job to its end (exit 1 failed, 3 partial)")
    p.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(command=backup_now)

    p = commands.add_parser("set", parents=[common], help="change backup settings")
    p.add_argument("instance_id", metavar="ID")
    p.add_argument("--priority", choices=sorted(PRIORITIES), help="applies from the next backup job")
    p.add_argument(
        "--time",
        type=time_of_day,
        metavar="HH:MM",
        help=f"daily start time {_IN_ZONE}",
    )
    p.add_argument("--keep-latest", type=on_off, metavar="on|off", help="always keep the latest version")
    p.set_defaults(command=set_settings)


def _summary_row(i: scheduler_pb2.Instance) -> list[str]:
    return [
        i.instance_id,
        i.name,
        i.region,
        output.enum_name(scheduler_pb2.RunningStatus.Name(i.status), "RUNNING_STATUS_"),
        output.enum_name(common_pb2.BackupPriority.Name(i.settings.priority), "BACKUP_PRIORITY_"),
        output.minute_of_day(i.settings.daily_start_minute),
        output.timestamp(i.next_backup_at, present=i.HasField("next_backup_at")),
        i.agent_version or "-",
    ]


def print_instance(context: Context, i: scheduler_pb2.Instance) -> None:
    if context.json:
        output.as_json(i)
        return
    output.fields(
        [
            ("Instance", i.instance_id),
            ("Name", i.name),
            ("Account", i.account_id),
            ("Region", i.region),
            ("Status", output.enum_name(scheduler_pb2.RunningStatus.Name(i.status), "RUNNING_STATUS_")),
            ("Hostname", i.hostname or "-"),
            ("Agent version", i.agent_version or "-"),
            ("Host identity", i.inventory.host_id or "-"),
            ("OS", i.inventory.os or "-"),
            (
                "Block devices",
                ", ".join(f"{d.device} {output.size(d.size_bytes)}" for d in i.inventory.block_devices) or "-",
            ),
            ("Priority", output.enum_name(common_pb2.BackupPriority.Name(i.settings.priority), "BACKUP_PRIORITY_")),
            (
                "Daily start",
                f"{output.minute_of_day(i.settings.daily_start_minute)} ({i.schedule_zone or 'UTC+08:00'})",
            ),
            ("Keep latest", "on" if i.settings.keep_latest_version else "off"),
            ("Roots", ", ".join(i.settings.roots) or "all block-storage filesystems"),
            ("Next backup", output.timestamp(i.next_backup_at, present=i.HasField("next_backup_at"))),
            ("Activated", output.timestamp(i.activated_at, present=i.HasField("activated_at"))),
            ("Last error", i.last_error or "-"),
        ]
    )


def print_instances(context: Context, found: Sequence[scheduler_pb2.Instance]) -> None:
    if context.json:
        output.as_json(list(found))
        return
    headers = ["ID", "NAME", "REGION", "STATUS", "PRIORITY", "DAILY", f"NEXT BACKUP ({output.zone_label()})", "AGENT"]
    output.table(headers, [_summary_row(i) for i in found])


async def list_instances(context: Context) -> int:
    # Every page, in order: the list is not held by the server in one message (issue 14).
    def fetch(token: str, size: int) -> Awaitable[scheduler_pb2.ListInstancesResponse]:
        request = scheduler_pb2.ListInstancesRequest(
            account_id=context.account_id, region=context.args.region, page_size=size, page_token=token
        )
        return context.scheduler().ListInstances(request, **context.call)

    instances = await every_page(fetch, lambda page: page.instances)
    print_instances(context, instances)
    return 0


async def activate(context: Context) -> int:
    args = context.args
    if not args.name and not args.instance and not args.host_id:
        raise UsageError("give a NAME for a new instance, or --instance ID / --host-id of the inventory")
    request = scheduler_pb2.ActivateBackupRequest(
        account_id=context.account_id,
        name=args.name,
        region=args.region,
        instance_id=args.instance,
        host_id=args.host_id,
    )
    if args.priority is not None or args.time is not None:
        # proto3 cannot say "unset" for the start time: pick the default window's random time here
        minute = args.time if args.time is not None else random.randrange(6 * 60)
        request.settings.CopyFrom(
            scheduler_pb2.BackupSettings(
                priority=PRIORITIES[args.priority or "low"], daily_start_minute=minute, keep_latest_version=True
            )
        )
        request.has_settings = True
    response = await context.scheduler().ActivateBackup(request, **context.call)
    if context.json:
        output.as_json(response)
        return 0
    print_instance(context, response.instance)
    print()
    print(f"Enrollment token (shown only once, valid 24 h): {response.enrollment_token}")
    install = _agent_install(args, os.environ)
    if install is None:
        print("Enroll the agent on the instance with: strongroom-agent enroll --gateway HOST:PORT --token TOKEN")
        print("(--agent-gateway and --agent-repo print a one-line install-and-enroll command instead)")
        return 0
    print("Install and enroll the agent, as root on the instance:")
    print(f"  Debian/Ubuntu:    {agent_install.apt_command(install, response.enrollment_token)}")
    print(f"  RHEL/Rocky/Alma:  {agent_install.yum_command(install, response.enrollment_token)}")
    return 0


def _agent_install(args: argparse.Namespace, environ: Mapping[str, str]) -> agent_install.AgentInstall | None:
    gateway = args.agent_gateway or environ.get("STRONGROOM_AGENT_GATEWAY", "")
    repo = args.agent_repo or environ.get("STRONGROOM_AGENT_REPO", "")
    ca_file = args.agent_ca or environ.get("STRONGROOM_AGENT_CA", "")
    if not gateway or not repo:
        return None
    if not repo.startswith(("https://", "http://")):
        raise UsageError(f"--agent-repo must be an http(s) URL, got {repo!r}")
    if not ca_file:
        return agent_install.AgentInstall(gateway, repo)
    try:
        ca_pem = Path(ca_file).read_bytes()
        pin = spki_sha256_pem(ca_pem)
    except OSError as exc:
        raise UsageError(f"cannot read the agents' CA bundle {ca_file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{ca_file} is not a PEM certificate: {exc}") from None
    return agent_install.AgentInstall(gateway, repo, ca_pem, (pin,))


def _ref(context: Context) -> scheduler_pb2.InstanceRef:
    return scheduler_pb2.InstanceRef(instance_id=context.args.instance_id)


async def show(context: Context) -> int:
    request = scheduler_pb2.GetInstanceRequest(instance_id=context.args.instance_id)
    print_instance(context, await context.scheduler().GetInstance(request, **context.call))
    return 0


async def pause(context: Context) -> int:
    print_instance(context, await context.scheduler().PauseBackup(_ref(context), **context.call))
    return 0


async def resume(context: Context) -> int:
    print_instance(context, await context.scheduler().ResumeBackup(_ref(context), **context.call))
    return 0


async def cancel(context: Context) -> int:
    print_instance(context, await context.scheduler().CancelBackup(_ref(context), **context.call))
    return 0


async def reinstate(context: Context) -> int:
    request = catalog_pb2.ReinstateBackupRequest(instance_id=context.args.instance_id)
    response = await context.catalog().ReinstateBackup(request, **context.call)
    if context.json:
        output.as_json(response)
        return 0
    print(f"Reinstated {len(response.version_ids)} version(s) of instance {response.instance_id}.")
    print("The instance is paused: issue a new enrollment token, install the agent, then resume.")
    return 0


async def release(context: Context) -> int:
    print_instance(context, await context.scheduler().ReleaseInstance(_ref(context), **context.call))
    return 0


def _backup_snapshot(job: scheduler_pb2.BackupJob) -> progress.Snapshot:
    # The scan runs ahead of the reads: what it has found so far is the best total there is.
    stats = job.stats
    return progress.Snapshot(
        bytes_done=stats.bytes_read + stats.bytes_unchanged,
        bytes_total=stats.bytes_scanned,
        files_done=stats.files_read + stats.files_unchanged,
        state=job_status(job.status),
    )


async def issue_token(context: Context) -> int:
    response = await context.scheduler().IssueEnrollmentToken(_ref(context), **context.call)
    if context.json:
        output.as_json(response)
        return 0
    print_instance(context, response.instance)
    print()
    print(f"Enrollment token (shown only once, valid 24 h): {response.enrollment_token}")
    print("Enroll the agent again with: strongroom-agent enroll --gateway HOST:PORT --token TOKEN")
    return 0


async def backup_now(context: Context) -> int:
    args = context.args
    stub = context.scheduler()
    job = await stub.RunBackupNow(scheduler_pb2.RunBackupNowRequest(instance_id=args.instance_id), **context.call)
    if getattr(args, "wait", False):
        request = scheduler_pb2.GetJobRequest(job_id=job.job_id)
        job = await progress.follow(
            job,
            lambda: stub.GetJob(request, **context.call),
            lambda j: j.status in FINISHED_JOB_STATUSES,
            _backup_snapshot,
            show=not context.json,
            interval=args.poll_interval,
        )
    print_job(context, job)
    return exit_code(job.status)


async def set_settings(context: Context) -> int:
    args = context.args
    settings = scheduler_pb2.BackupSettings()
    mask = []
    if args.priority is not None:
        settings.priority = PRIORITIES[args.priority]
        mask.append("priority")
    if args.time is not None:
        settings.daily_start_minute = args.time
        mask.append("daily_start_minute")
    if args.keep_latest is not None:
        settings.keep_latest_version = args.keep_latest
        mask.append("keep_latest_version")
    if not mask:
        raise UsageError("nothing to change: pass --priority, --time or --keep-latest")
    request = scheduler_pb2.UpdateSettingsRequest(instance_id=args.instance_id, settings=settings, update_mask=mask)
    print_instance(context, await context.scheduler().UpdateSettings(request, **context.call))
    return 0
