"""One verification, start to finish (ADR 0033).

Bounded: at most ``packs_in_flight`` packs are held (each read whole, at most a pack's size), the
CPU work runs in a small thread pool, a manifest is decoded in batches, and the reads go through a
``ReadRate``. A pack referenced by several points of the verification is read once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from strongroom_platform.clock import Clock
from strongroom_platform.manifest import ManifestFormatError, decode_manifest
from strongroom_platform.objectstore import ObjectNotFound, ObjectStore, ObjectStoreError

from strongroom_gateway import manifests
from strongroom_gateway.keys import AccountKeys, MasterKeyError
from strongroom_gateway.packfile import ENCRYPTED_VERSIONS
from strongroom_gateway.ports import Point
from strongroom_gateway.verify.checks import (
    MISSING,
    NOT_STORED,
    PackVerdict,
    check_pack,
    chunk_id_batches,
    damaged_files,
    missing_pack,
)
from strongroom_gateway.verify.model import (
    MAX_LISTED_FILES,
    MAX_LISTED_PACKS,
    DamagedFile,
    DamagedPack,
    PointCheck,
    Progress,
    State,
    Verification,
)
from strongroom_gateway.verify.ports import VerifyStore
from strongroom_gateway.verify.rate import ReadRate

log = logging.getLogger(__name__)

# Chunk ids looked up per query while a manifest is decoded.
ID_BATCH = 10_000
PACKS_IN_FLIGHT = 2
CHECK_THREADS = 2
LEASE = dt.timedelta(minutes=5)


class LeaseLost(Exception):
    """Another gateway took the verification over (this one's lease expired): stop without a word."""


@dataclass
class Deps:
    store: VerifyStore
    objects: ObjectStore
    keys: AccountKeys
    clock: Clock
    rate: ReadRate
    owner: str
    executor: concurrent.futures.Executor | None = None
    packs_in_flight: int = PACKS_IN_FLIGHT
    lease: dt.timedelta = LEASE
    # The daily sample covers every pack within this many days (ADR 0033).
    cover_days: int = 28


@dataclass
class _Counters:
    points_total: int = 0
    points_done: int = 0
    packs_checked: int = 0
    bytes_read: int = 0
    damaged_files: int = 0
    damaged_packs: int = 0

    def frozen(self) -> Progress:
        return Progress(**dataclasses.asdict(self))


@dataclass
class _Run:
    verification: Verification
    deps: Deps
    counters: _Counters = field(default_factory=_Counters)
    checked: set[str] = field(default_factory=set)
    # Only the damaged packs' verdicts are kept (clean ones are just ``checked``).
    damaged: dict[str, PackVerdict] = field(default_factory=dict)
    chunk_keys: dict[str, bytes] = field(default_factory=dict)
    listed_files: int = 0


async def run_verification(verification: Verification, deps: Deps) -> State | None:
    """Run a claimed verification to its final state; None when the lease was lost on the way."""
    run = _Run(verification, deps)
    try:
        if verification.scope == "sample":
            await _sample(run)
        else:
            await _points(run)
    except LeaseLost:
        log.warning("verification %s was taken over by another gateway", verification.verification_id)
        return None
    except (ObjectStoreError, MasterKeyError) as exc:
        return await _finish(run, "failed", f"the stored data could not be read: {exc}")
    except Exception:
        log.exception("verification %s failed", verification.verification_id)
        return await _finish(run, "failed", "internal error while verifying (see the gateway's log)")
    state: State = "damaged" if run.counters.damaged_files or run.counters.damaged_packs else "clean"
    return await _finish(run, state, "")


async def _finish(run: _Run, state: State, error: str) -> State | None:
    deps = run.deps
    async with deps.store.transaction() as tx:
        done = await tx.finish_verification(
            run.verification.verification_id, deps.owner, state, deps.clock.now(), run.counters.frozen(), error[:4096]
        )
    if not done:
        return None
    counters = run.counters
    log.info(
        "verification %s (%s %s) %s: %d points, %d packs, %d bytes read, %d damaged files, %d damaged packs",
        run.verification.verification_id,
        run.verification.scope,
        run.verification.target_id or run.verification.account_id or "all accounts",
        state,
        counters.points_done,
        counters.packs_checked,
        counters.bytes_read,
        counters.damaged_files,
        counters.damaged_packs,
    )
    return state


async def _save_progress(run: _Run) -> None:
    deps = run.deps
    async with deps.store.transaction() as tx:
        held = await tx.update_progress(
            run.verification.verification_id, deps.owner, run.counters.frozen(), deps.clock.now() + deps.lease
        )
    if not held:
        raise LeaseLost()


async def _points_in_scope(run: _Run) -> list[Point]:
    v = run.verification
    async with run.deps.store.transaction() as tx:
        if v.scope == "point":
            point = await tx.get_point(v.target_id)
            return [point] if point is not None else []
        return await tx.list_points(v.account_id, v.target_id if v.scope == "instance" else None)


async def _points(run: _Run) -> None:
    points = await _points_in_scope(run)
    run.counters.points_total = len(points)
    await _save_progress(run)
    for point in points:
        await _verify_point(run, point)
        run.counters.points_done += 1
        await _save_progress(run)


async def _chunk_key(run: _Run, account_id: str) -> bytes:
    key = run.chunk_keys.get(account_id)
    if key is None:
        async with run.deps.store.transaction() as tx:
            account = await tx.get_account(account_id)
        if account is None:
            raise ObjectStoreError(f"account {account_id!r} has no chunk key")
        key = run.chunk_keys[account_id] = account.chunk_id_key
    return key


async def _manifest(run: _Run, point: Point) -> bytes | str:
    """The point's manifest bytes, or why they cannot be read (the whole point is damaged then)."""
    try:
        data = await manifests.read_point_manifest(run.deps.objects, run.deps.keys, point, store=run.deps.store)
    except ObjectNotFound:
        return "the point's manifest is missing from storage"
    except ManifestFormatError as exc:
        return f"the point's manifest cannot be read ({exc})"
    return data


async def _next_batch(run: _Run, batches: Iterator[list[bytes]]) -> list[bytes] | None:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(run.deps.executor, next, batches, None)


async def _verify_point(run: _Run, point: Point) -> None:
    """Read every pack the point references (those not read yet in this run) and map damage to its files."""
    manifest = await _manifest(run, point)
    if isinstance(manifest, str):
        await _whole_point_damaged(run, point, manifest, full=True)
        return
    referenced: set[str] = set()
    missing: set[bytes] = set()
    batches = chunk_id_batches(decode_manifest(manifest), ID_BATCH)
    try:
        while (batch := await _next_batch(run, batches)) is not None:
            async with run.deps.store.transaction() as tx:
                packs, absent = await tx.chunk_packs(point.account_id, batch)
            referenced.update(packs)
            missing.update(absent)
    except ManifestFormatError as exc:
        await _whole_point_damaged(run, point, f"the point's manifest cannot be read ({exc})", full=True)
        return
    await _check_packs(run, sorted(referenced - run.checked))
    damaged = {p: run.damaged[p] for p in referenced if p in run.damaged}
    await _map_damage(run, point, manifest, damaged, missing, full=True)


def _lookup(damaged: dict[str, PackVerdict], missing: set[bytes]) -> Callable[[bytes], str | None]:
    reasons: dict[bytes, str] = {cid: NOT_STORED for cid in missing}
    for verdict in damaged.values():
        reasons.update(verdict.damaged)
    return reasons.get


async def _map_damage(
    run: _Run, point: Point, manifest: bytes, damaged: dict[str, PackVerdict], missing: set[bytes], *, full: bool
) -> None:
    """Find the point's files that need a damaged or missing chunk; record them and the point's check."""
    count = 0
    listed: list[DamagedFile] = []
    if any(v.damaged for v in damaged.values()) or missing:
        lookup = _lookup(damaged, missing)
        limit = max(0, MAX_LISTED_FILES - run.listed_files)
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(
                run.deps.executor,
                lambda: damaged_files(point.point_id, decode_manifest(manifest), lookup, limit=limit),
            )
        except ManifestFormatError as exc:
            await _whole_point_damaged(run, point, f"the point's manifest cannot be read ({exc})", full=full)
            return
        count, listed = found.count, found.listed
    await _record_point(run, point, count, listed, full=full)


async def _whole_point_damaged(run: _Run, point: Point, reason: str, *, full: bool) -> None:
    """A point whose manifest is gone or unreadable: none of its files can be restored."""
    listed = [DamagedFile(point.point_id, "", reason)] if run.listed_files < MAX_LISTED_FILES else []
    await _record_point(run, point, max(point.file_count, 1), listed, full=full)


async def _record_point(run: _Run, point: Point, count: int, listed: list[DamagedFile], *, full: bool) -> None:
    deps = run.deps
    if count:
        log.warning("point %s: %d damaged files", point.point_id, count)
    if not full and not count:
        return
    check = PointCheck(
        point_id=point.point_id,
        account_id=point.account_id,
        instance_id=point.instance_id,
        point_created_at=point.created_at,
        checked_at=deps.clock.now(),
        full=full,
        damaged_files=count,
        verification_id=run.verification.verification_id,
    )
    async with deps.store.transaction() as tx:
        if listed:
            await tx.add_damaged_files(run.verification.verification_id, run.listed_files, listed)
        await tx.record_point_check(check)
    run.listed_files += len(listed)
    run.counters.damaged_files += count


async def _check_packs(run: _Run, pack_ids: list[str]) -> None:
    """Check the packs, ``packs_in_flight`` at a time; the first failure cancels the rest and is raised."""
    pending: set[asyncio.Task[None]] = set()

    async def settle() -> None:
        nonlocal pending
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        errors = [e for e in (task.exception() for task in done) if e is not None]  # every one retrieved
        if errors:
            raise errors[0]

    try:
        for pack_id in pack_ids:
            while len(pending) >= run.deps.packs_in_flight:
                await settle()
            pending.add(asyncio.create_task(_check_pack(run, pack_id)))
        while pending:
            await settle()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _check_pack(run: _Run, pack_id: str) -> None:
    deps = run.deps
    async with deps.store.transaction() as tx:
        pack, chunks = await tx.pack_chunks(pack_id)
    if pack is None:
        return  # not recorded (cannot happen for a referenced pack: chunk rows name recorded packs)
    await deps.rate.acquire(pack.size)
    try:
        data = await deps.objects.get(pack.object_key, version_id=pack.version_id)
    except ObjectNotFound:
        verdict = missing_pack(pack_id, chunks)
    else:
        data_key = await deps.keys.data_key(pack.account_id) if pack.format_version in ENCRYPTED_VERSIONS else None
        chunk_key = await _chunk_key(run, pack.account_id)
        loop = asyncio.get_running_loop()
        verdict = await loop.run_in_executor(deps.executor, check_pack, pack_id, chunk_key, data_key, chunks, data)
        del data
    run.checked.add(pack_id)
    run.counters.packs_checked += 1
    run.counters.bytes_read += verdict.bytes_read
    reason = _pack_reason(verdict)
    if verdict.is_damaged:
        run.damaged[pack_id] = verdict
        run.counters.damaged_packs += 1
        log.warning("pack %s of account %s is damaged: %s", pack_id, pack.account_id, reason)
    async with deps.store.transaction() as tx:
        await tx.record_pack_check(pack_id, deps.clock.now(), len(verdict.damaged), reason)
        if verdict.is_damaged and run.counters.damaged_packs <= MAX_LISTED_PACKS:
            await tx.add_damaged_packs(run.verification.verification_id, [DamagedPack(pack_id, reason)])
        held = await tx.update_progress(
            run.verification.verification_id, deps.owner, run.counters.frozen(), deps.clock.now() + deps.lease
        )
    if not held:
        raise LeaseLost()


def _pack_reason(verdict: PackVerdict) -> str:
    parts = [verdict.problem] if verdict.problem else []
    if verdict.damaged and verdict.problem != MISSING:
        reasons = sorted(set(verdict.damaged.values()))
        parts.append(f"{len(verdict.damaged)} damaged chunks ({'; '.join(reasons[:3])})")
    return "; ".join(parts)[:8192]


def sample_size(total_packs: int, cover_days: int) -> int:
    """Packs the daily sample reads so that every pack is read within ``cover_days`` days (ADR 0033)."""
    return math.ceil(total_packs / max(cover_days, 1))


async def _sample(run: _Run) -> None:
    """The daily sample: the least recently checked packs; damage is then mapped to the files of every point of
    the accounts it hit (recorded as partial point checks)."""
    deps = run.deps
    async with deps.store.transaction() as tx:
        total = await tx.count_packs()
        pack_ids = await tx.least_recently_checked_packs(sample_size(total, deps.cover_days))
    await _save_progress(run)
    await _check_packs(run, pack_ids)
    if not run.damaged:
        return
    accounts: dict[str, dict[str, PackVerdict]] = {}
    async with deps.store.transaction() as tx:
        for pack_id, verdict in run.damaged.items():
            pack, _ = await tx.pack_chunks(pack_id)
            if pack is not None:
                accounts.setdefault(pack.account_id, {})[pack_id] = verdict
    for account_id, damaged in sorted(accounts.items()):
        async with deps.store.transaction() as tx:
            points = await tx.list_points(account_id)
        run.counters.points_total += len(points)
        for point in points:
            manifest = await _manifest(run, point)
            if isinstance(manifest, str):
                await _whole_point_damaged(run, point, manifest, full=False)
            else:
                await _map_damage(run, point, manifest, damaged, set(), full=False)
            run.counters.points_done += 1
            await _save_progress(run)
