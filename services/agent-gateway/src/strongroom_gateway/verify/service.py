"""VerifyService handlers: start a verification, read it, read the instances' recoverability."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from strongroom.gateway.v1 import verify_pb2
from strongroom_platform import audit, paging
from strongroom_platform.auth.principal import CallAuth, authorize, choose_account
from strongroom_platform.clock import Clock

from strongroom_gateway.errors import InvalidArgument, NotFound
from strongroom_gateway.verify.model import (
    MAX_LISTED_FILES,
    MAX_LISTED_PACKS,
    DamagedFile,
    DamagedPack,
    Recoverability,
    Scope,
    Verification,
)
from strongroom_gateway.verify.ports import VerifyStore
from strongroom_gateway.verify.worker import new_id

MAX_ID_CHARS = 255
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _id(value: str, field: str) -> str:
    if len(value) > MAX_ID_CHARS or "\x00" in value:
        raise InvalidArgument(f"{field} must be at most {MAX_ID_CHARS} characters without NUL")
    return value


async def start_verification(
    request: verify_pb2.StartVerificationRequest,
    *,
    store: VerifyStore,
    clock: Clock,
    call: CallAuth,
    wake: asyncio.Event | None = None,
    make_id: Callable[[], str] = new_id,
) -> Verification:
    """Queue a verification of one point, an instance's points or the account's points (checked: the caller's)."""
    point_id = _id(request.point_id, "point_id")
    instance_id = _id(request.instance_id, "instance_id")
    _id(request.account_id, "account_id")
    if sum((bool(point_id), bool(instance_id), request.whole_account)) != 1:
        raise InvalidArgument("give exactly one of point_id, instance_id and whole_account")
    scope: Scope
    if point_id:

        def no_point() -> NotFound:
            return NotFound(f"backup point {point_id!r} not found")

        async with store.transaction() as tx:
            point = await tx.get_point(point_id)
        if point is None:
            raise no_point()
        authorize(point.account_id, no_point, call=call)
        scope, account_id, target, instance = "point", point.account_id, point_id, point.instance_id
    elif instance_id:

        def no_instance() -> NotFound:
            return NotFound(f"instance {instance_id!r} not found")

        async with store.transaction() as tx:
            found = await tx.get_instance(instance_id)
        if found is None:
            raise no_instance()
        authorize(found.account_id, no_instance, call=call)
        scope, account_id, target, instance = "instance", found.account_id, instance_id, instance_id
    else:
        account_id = choose_account(request.account_id, call=call)
        scope, target, instance = "account", "", ""
    verification = Verification(
        verification_id=make_id(),
        account_id=account_id,
        scope=scope,
        target_id=target,
        instance_id=instance,
        state="queued",
        created_at=clock.now(),
    )
    async with store.transaction() as tx:
        await tx.insert_verification(verification)
    audit.note(verification_id=verification.verification_id)
    if wake is not None:
        wake.set()
    return verification


async def get_verification(
    request: verify_pb2.GetVerificationRequest, *, store: VerifyStore, call: CallAuth
) -> tuple[Verification, list[DamagedFile], list[DamagedPack]]:
    verification_id = _id(request.verification_id, "verification_id")

    def not_found() -> NotFound:
        return NotFound(f"verification {verification_id!r} not found")

    if not verification_id:
        raise InvalidArgument("verification_id is required")
    async with store.transaction() as tx:
        verification = await tx.get_verification(verification_id)
        if verification is None:
            raise not_found()
        # The daily sample (no account) spans accounts: no operator reads it (its damage shows in recoverability).
        authorize(verification.account_id, not_found, call=call)
        files = await tx.damaged_files(verification_id, MAX_LISTED_FILES)
        packs = await tx.damaged_packs(verification_id, MAX_LISTED_PACKS)
    return verification, files, packs


async def list_verifications(
    request: verify_pb2.ListVerificationsRequest, *, store: VerifyStore, call: CallAuth
) -> tuple[list[Verification], str]:
    """One page of the account's verifications, newest first (``limit`` is the page size when
    ``page_size`` is 0, its name before pages), and the next page's token ("" on the last)."""
    account_id = choose_account(_id(request.account_id, "account_id"), call=call)
    instance_id = _id(request.instance_id, "instance_id") or None
    size = paging.page_size(request.page_size or request.limit, DEFAULT_LIMIT, MAX_LIMIT)
    after = paging.token_position(request.page_token)
    async with store.transaction() as tx:
        found = await tx.list_verifications(account_id, instance_id, size + 1, after)
    return paging.keyset_page(found, size, lambda v: (v.created_at, v.verification_id))


async def recoverability(
    request: verify_pb2.GetRecoverabilityRequest, *, store: VerifyStore, call: CallAuth
) -> list[Recoverability]:
    account_id = choose_account(_id(request.account_id, "account_id"), call=call)
    instance_id = _id(request.instance_id, "instance_id") or None
    async with store.transaction() as tx:
        return await tx.recoverability(account_id, instance_id)
