"""gRPC ``BillingService``: calls ``handlers``; errors become status codes in ``grpc_errors``."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from strongroom.billing.v1 import billing_pb2, billing_pb2_grpc
from strongroom_platform.auth import current_call
from strongroom_platform.clock import Clock
from strongroom_platform.events import to_timestamp
from strongroom_platform.zones import zone_name

from strongroom_billing import handlers
from strongroom_billing.ledger import AccountDay, InstanceCharge, Plan
from strongroom_billing.ports import BillingStore
from strongroom_billing.settings import LedgerSettings


def _day_message(day: AccountDay, instances: list[InstanceCharge]) -> billing_pb2.LedgerDay:
    return billing_pb2.LedgerDay(
        day=day.day.isoformat(),
        instances=day.instances,
        capacity_bytes=day.capacity_bytes,
        billable_gib=str(day.billable_gib),
        price_per_gib_day=str(day.price_per_gib_day),
        fee=str(day.fee),
        plan_gib_days=str(day.plan_gib_days),
        charged=str(day.charged),
        instance_rows=[
            billing_pb2.LedgerInstance(
                instance_id=c.instance_id, version_id=c.version_id, capacity_bytes=c.capacity_bytes
            )
            for c in instances
        ],
    )


def _plan_message(plan: Plan) -> billing_pb2.Plan:
    return billing_pb2.Plan(
        plan_id=plan.plan_id,
        account_id=plan.account_id,
        gib_days=str(plan.gib_days),
        used_gib_days=str(plan.used_gib_days),
        starts_on=plan.starts_on.isoformat(),
        ends_on=plan.ends_on.isoformat(),
        created_at=to_timestamp(plan.created_at),
    )


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    """Passes the call's ``CallAuth`` (set by the auth interceptor) to the handler."""

    def __init__(self, store: BillingStore, clock: Clock, ledger: LedgerSettings) -> None:
        self._store = store
        self._clock = clock
        self._ledger = ledger

    async def GetOverview(
        self, request: billing_pb2.GetOverviewRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> billing_pb2.Overview:
        result = await handlers.get_overview(self._store, request.account_id, request.region, call=current_call())
        return billing_pb2.Overview(
            backed_up_instances=result.usage.backed_up,
            unbacked_up_instances=result.usage.unbacked_up,
            backed_up_capacity_bytes=result.usage.capacity_bytes,
            free_quota_bytes=result.free_quota_bytes,
            free_quota_used_bytes=result.free_quota_used_bytes,
            billable_capacity_bytes=result.billable_bytes,
        )

    async def ListLedger(
        self, request: billing_pb2.ListLedgerRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> billing_pb2.ListLedgerResponse:
        view = await handlers.list_ledger(
            self._store,
            request.account_id,
            request.from_day,
            request.to_day,
            request.include_instances,
            page_size=request.page_size,
            page_token=request.page_token,
            call=current_call(),
        )
        return billing_pb2.ListLedgerResponse(
            days=[_day_message(day, view.instances.get(day.day, [])) for day in view.days],
            zone=zone_name(self._ledger.zone),
            currency=self._ledger.currency,
            next_page_token=view.next_page_token,
        )

    async def ListPlans(
        self, request: billing_pb2.ListPlansRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> billing_pb2.ListPlansResponse:
        plans, next_page = await handlers.list_plans(
            self._store,
            request.account_id,
            page_size=request.page_size,
            page_token=request.page_token,
            call=current_call(),
        )
        return billing_pb2.ListPlansResponse(plans=[_plan_message(p) for p in plans], next_page_token=next_page)

    async def CreatePlan(
        self, request: billing_pb2.CreatePlanRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> billing_pb2.Plan:
        plan = await handlers.create_plan(
            self._store,
            self._clock,
            request.account_id,
            request.gib_days,
            request.starts_on,
            request.ends_on,
            call=current_call(),
        )
        return _plan_message(plan)


def register(servicer: BillingServicer) -> Callable[[grpc.aio.Server], None]:
    """The registration callback for ``strongroom_platform.runtime.start_grpc_server``."""

    def add(server: grpc.aio.Server) -> None:
        billing_pb2_grpc.add_BillingServiceServicer_to_server(servicer, server)

    return add
