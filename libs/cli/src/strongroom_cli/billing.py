"""``strongroom billing ledger | plans | plans create``: the daily ledger and resource plans (ADR 0036)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable

from strongroom.billing.v1 import billing_pb2

from strongroom_cli import output
from strongroom_cli.context import Context
from strongroom_cli.pages import every_page


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = groups.add_parser("billing", help="the daily billing ledger and resource plans")
    commands = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = commands.add_parser("ledger", parents=[common], help="one row per billed day (default: the last 31)")
    p.add_argument("--from", dest="from_day", default="", metavar="YYYY-MM-DD", help="first day")
    p.add_argument("--to", dest="to_day", default="", metavar="YYYY-MM-DD", help="last day (default: last closed)")
    p.add_argument("--instances", action="store_true", help="also list each day's billed instances")
    p.set_defaults(command=ledger)

    plans = commands.add_parser("plans", help="resource plans: prepaid GiB-days that offset the fee")
    actions = plans.add_subparsers(dest="plan_action", metavar="ACTION", required=True)
    p = actions.add_parser("list", parents=[common], help="the account's plans and what is used of them")
    p.set_defaults(command=list_plans)
    p = actions.add_parser("create", parents=[common], help="add a plan (admins)")
    p.add_argument("--gib-days", required=True, help="prepaid GiB-days, e.g. 3000")
    p.add_argument("--starts-on", required=True, metavar="YYYY-MM-DD")
    p.add_argument("--ends-on", required=True, metavar="YYYY-MM-DD")
    p.set_defaults(command=create_plan)


async def ledger(context: Context) -> int:
    args = context.args
    result = await _ledger_pages(context)
    if context.json:
        output.as_json(result)
        return 0
    currency = result.currency
    rows = [
        [
            d.day,
            str(d.instances),
            output.size(d.capacity_bytes),
            d.billable_gib,
            d.price_per_gib_day,
            d.fee,
            d.plan_gib_days,
            f"{d.charged} {currency}",
        ]
        for d in result.days
    ]
    print(f"Days end at 00:00 {result.zone}; fee = max(0, capacity - 100 GiB free) x price per GiB-day.")
    headers = ["DAY", "INSTANCES", "CAPACITY", "BILLABLE GIB", "PRICE", "FEE", "PLAN GIB-DAYS", "CHARGED"]
    output.table(headers, rows)
    if args.instances:
        detail = [
            [d.day, i.instance_id, i.version_id, output.size(i.capacity_bytes)]
            for d in result.days
            for i in d.instance_rows
        ]
        print()
        output.table(["DAY", "INSTANCE", "BILLED VERSION", "CAPACITY"], detail)
    return 0


async def _ledger_pages(context: Context) -> billing_pb2.ListLedgerResponse:
    """Every page of the ledger as one response (issue 14); a day cut between two pages (its
    instance rows did not fit) is one day, its instance rows from both."""
    args = context.args
    merged = billing_pb2.ListLedgerResponse()
    days: dict[str, billing_pb2.LedgerDay] = {}
    token = ""
    while True:
        request = billing_pb2.ListLedgerRequest(
            account_id=context.account_id,
            from_day=args.from_day,
            to_day=args.to_day,
            include_instances=args.instances,
            page_token=token,
        )
        page = await context.billing().ListLedger(request, **context.call)
        merged.zone, merged.currency = page.zone, page.currency
        for day in page.days:
            if day.day in days:
                days[day.day].instance_rows.extend(day.instance_rows)
            else:
                days[day.day] = merged.days.add()
                days[day.day].CopyFrom(day)
        token = page.next_page_token
        if not token:
            return merged


def _plan_rows(plans: list[billing_pb2.Plan]) -> list[list[str]]:
    return [[p.plan_id, p.gib_days, p.used_gib_days, p.starts_on, p.ends_on] for p in plans]


_PLAN_HEADERS = ["PLAN", "GIB-DAYS", "USED", "STARTS", "ENDS"]


async def list_plans(context: Context) -> int:
    def fetch(token: str, size: int) -> Awaitable[billing_pb2.ListPlansResponse]:
        request = billing_pb2.ListPlansRequest(account_id=context.account_id, page_size=size, page_token=token)
        return context.billing().ListPlans(request, **context.call)

    result = billing_pb2.ListPlansResponse(plans=await every_page(fetch, lambda page: page.plans))
    if context.json:
        output.as_json(result)
        return 0
    output.table(_PLAN_HEADERS, _plan_rows(list(result.plans)))
    return 0


async def create_plan(context: Context) -> int:
    args = context.args
    request = billing_pb2.CreatePlanRequest(
        account_id=context.account_id, gib_days=args.gib_days, starts_on=args.starts_on, ends_on=args.ends_on
    )
    plan = await context.billing().CreatePlan(request, **context.call)
    if context.json:
        output.as_json(plan)
        return 0
    output.table(_PLAN_HEADERS, _plan_rows([plan]))
    return 0
