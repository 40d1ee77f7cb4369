"""gRPC ``BillingService``: calls ``handlers``; errors become status codes in ``grpc_errors``."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from strongroom.billing.v1 import billing_pb2, billing_pb2_grpc
from strongroom_platform.auth import current_call

from strongroom_billing import handlers
from strongroom_billing.ports import BillingStore


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    """Passes the call's ``CallAuth`` (set by the auth interceptor) to the handler."""

    def __init__(self, store: BillingStore) -> None:
        self._store = store

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


def register(servicer: BillingServicer) -> Callable[[grpc.aio.Server], None]:
    """The registration callback for ``strongroom_platform.runtime.start_grpc_server``."""

    def add(server: grpc.aio.Server) -> None:
        billing_pb2_grpc.add_BillingServiceServicer_to_server(servicer, server)

    return add
