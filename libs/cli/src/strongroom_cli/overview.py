"""``strongroom overview [--region R]``: the backup overview, admission and billing figures."""

from __future__ import annotations

import argparse
import asyncio

from strongroom.billing.v1 import billing_pb2
from strongroom.scheduler.v1 import scheduler_pb2

from strongroom_cli import output
from strongroom_cli.context import Context


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = groups.add_parser(
        "overview", parents=[common], help="backed-up instances, capacity, backups running and waiting, billing"
    )
    p.add_argument("--region", default="", help="one region (default: all regions, with the free quota)")
    p.set_defaults(command=overview)


def _capacity(n: int) -> str:
    return f"{output.size(n)} ({n} bytes)"


def admission_pairs(admission: scheduler_pb2.Admission) -> list[tuple[str, str]]:
    """The admission figures (ADR 0058) as ``fields`` lines."""
    cap = admission.max_concurrent_backups
    waiting = str(admission.waiting_backups)
    if admission.HasField("oldest_waiting_since"):
        waiting += f" (oldest since {output.timestamp(admission.oldest_waiting_since)})"
    return [
        ("Backups running", str(admission.running_backups)),
        ("Waiting for a backup slot", waiting if cap else "0 (no cap)"),
        ("Concurrent backups cap", f"{cap} (whole fleet)" if cap else "none"),
    ]


async def overview(context: Context) -> int:
    region = context.args.region
    billing, scheduler = context.billing(), context.scheduler()
    result, admission = await asyncio.gather(
        billing.GetOverview(
            billing_pb2.GetOverviewRequest(account_id=context.account_id, region=region), **context.call
        ),
        scheduler.GetAdmission(
            scheduler_pb2.GetAdmissionRequest(account_id=context.account_id, region=region), **context.call
        ),
    )
    if context.json:
        # the overview's fields as before, the admission figures under their own key
        output.print_json({**output.to_dict(result), "admission": output.to_dict(admission)})
        return 0
    pairs = [
        ("Region", region or "all regions"),
        ("Backed-up instances", str(result.backed_up_instances)),
        ("Un-backed-up instances", str(result.unbacked_up_instances)),
        ("Backed-up capacity", _capacity(result.backed_up_capacity_bytes)),
        *admission_pairs(admission),
    ]
    if not region:
        remaining = max(0, result.free_quota_bytes - result.free_quota_used_bytes)
        pairs += [
            ("Free quota", _capacity(result.free_quota_bytes)),
            ("Free quota used", _capacity(result.free_quota_used_bytes)),
            ("Free quota remaining", _capacity(remaining)),
            ("Billable capacity", _capacity(result.billable_capacity_bytes)),
        ]
    output.fields(pairs)
    return 0
