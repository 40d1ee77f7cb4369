"""The restore side of a point: the restore job's point, and ReadManifest.

Contract: a restore job of the caller names the point; the point must belong to the caller's
account. ReadManifest streams the point's entries below the include paths minus the exclude paths,
in batches of ``MANIFEST_BATCH``; an unreadable manifest is FAILED_PRECONDITION, a missing one NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from strongroom.agent.v1 import gateway_pb2
from strongroom_platform.manifest import ManifestFormatError
from strongroom_platform.objectstore import ObjectNotFound, ObjectStore

from strongroom_gateway import manifests, validation
from strongroom_gateway.agents import Identity
from strongroom_gateway.errors import FailedPrecondition, NotFound, PermissionDenied
from strongroom_gateway.keys import AccountKeys
from strongroom_gateway.ports import GatewayStore, Point
from strongroom_gateway.restrictions import require_job

MANIFEST_BATCH = 1_000


def _normalize(paths: Iterable[str]) -> list[str]:
    """Filter paths without leading and trailing '/' (checked by ``validation.read_manifest_request``)."""
    return [raw.strip("/") for raw in paths]


async def restore_point(
    identity: Identity, restore_job_id: str, point_id: str, store: GatewayStore, *, field: str = "restore_job_id"
) -> Point:
    job = await require_job(identity, restore_job_id, "restore", store=store, field=field)
    if point_id and point_id != job.point_id:
        raise PermissionDenied(f"restore job {restore_job_id!r} restores another point than {point_id!r}")
    async with store.transaction() as tx:
        point = await tx.get_point(job.point_id or "")
    if point is None:
        raise NotFound(f"point {job.point_id!r} of restore job {restore_job_id!r} does not exist")
    if point.account_id != identity.account_id:
        raise PermissionDenied(f"point {point.point_id!r} belongs to another account")
    return point


async def read_manifest(
    identity: Identity,
    request: gateway_pb2.ReadManifestRequest,
    *,
    store: GatewayStore,
    object_store: ObjectStore,
    keys: AccountKeys,
) -> AsyncIterator[gateway_pb2.ReadManifestResponse]:
    """Stream the entries of the restore job's point below the include paths, minus the exclude paths."""
    validation.read_manifest_request(request)
    point = await restore_point(identity, request.restore_job_id, request.point_id, store)
    include = _normalize(request.include_paths)
    exclude = _normalize(request.exclude_paths)
    entries = manifests.stream_point_entries(
        object_store, keys, point, include, exclude, store=store, batch=MANIFEST_BATCH
    )
    try:
        async for batch in entries:
            yield gateway_pb2.ReadManifestResponse(entries=batch)
    except ObjectNotFound:
        raise NotFound(f"manifest of point {point.point_id!r} is missing from the object store") from None
    except ManifestFormatError as exc:
        raise FailedPrecondition(f"manifest of point {point.point_id!r} cannot be read: {exc}") from None
    finally:
        await entries.aclose()
