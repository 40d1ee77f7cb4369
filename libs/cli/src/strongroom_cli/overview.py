"""``strongroom overview [--region R]``: the backup overview and billing figures."""

from __future__ import annotations

import argparse

from strongroom.billing.v1 import billing_pb2

from strongroom_cli import output
from strongroom_cli.context import Context


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = groups.add_parser("overview", parents=[common], help="backed-up instances, capacity and billing")
    p.add_argument("--region", default="", help="one region (default: all regions, with the free quota)")
    p.set_defaults(command=overview)


def _capacity(n: int) -> str:
    return f"{output.size(n)} ({n} bytes)"


async def overview(context: Context) -> int:
    region = context.args.region
    request = billing_pb2.GetOverviewRequest(account_id=context.account_id, region=region)
    result = await context.billing().GetOverview(request, **context.call)
    if context.json:
        output.as_json(result)
        return 0
    pairs = [
        ("Region", region or "all regions"),
        ("Backed-up instances", str(result.backed_up_instances)),
        ("Un-backed-up instances", str(result.unbacked_up_instances)),
        ("Backed-up capacity", _capacity(result.backed_up_capacity_bytes)),
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
