"""Admission control as the overview shows it (ADR 0058): an account's backups running, its due
slots waiting for a free backup slot, and the fleet's cap (ADR 0053).

Contract: the account is ``choose_account(account_id)``; figures are read without locks, so they
are the state when the call was answered, not a reservation.
"""

from __future__ import annotations

from dataclasses import dataclass

from strongroom_platform.auth import CallAuth, choose_account

from strongroom_scheduler.errors import InvalidArgument
from strongroom_scheduler.handlers.common import Deps
from strongroom_scheduler.ports import AccountAdmission
from strongroom_scheduler.schedule import Admission


@dataclass(frozen=True, slots=True)
class AdmissionView:
    """The account's figures and the admission settings they are judged by."""

    figures: AccountAdmission
    admission: Admission


async def get_admission(deps: Deps, account_id: str, region: str, *, call: CallAuth) -> AdmissionView:
    """The account's running backups and, with a cap, its waiting slots in ``region`` ("" = all).

    Without a cap nothing waits for a free slot (a due slot starts at the next pass), so the
    waiting figures are zero, as the ``strongroom_admission_waiting`` gauge's.
    """
    account = choose_account(account_id.strip(), call=call)
    if region != region.strip():
        raise InvalidArgument(f"region must not have surrounding spaces, got {region!r}")
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        figures = await tx.account_admission(account, region, now, now - deps.admission.window)
    if deps.admission.max_concurrent <= 0:
        figures = AccountAdmission(running=figures.running, waiting=0, oldest_waiting=None)
    return AdmissionView(figures=figures, admission=deps.admission)
