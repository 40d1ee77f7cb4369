"""FindMissingChunks: which of a backup's chunk ids its account does not hold yet.

Contract: at most ``MAX_IDS_PER_REQUEST`` valid ids, for a running backup job of the caller; the
answer lists each missing id once, in request order. Only the caller's account is consulted.
"""

from __future__ import annotations

from strongroom.agent.v1 import gateway_pb2

from strongroom_gateway import validation
from strongroom_gateway.agents import Identity
from strongroom_gateway.errors import InvalidArgument
from strongroom_gateway.ports import GatewayStore
from strongroom_gateway.restrictions import job_in

MAX_IDS_PER_REQUEST = 10_000


async def find_missing_chunks(
    identity: Identity, request: gateway_pb2.FindMissingChunksRequest, *, store: GatewayStore
) -> gateway_pb2.FindMissingChunksResponse:
    """The requested ids this agent's account does not hold (other accounts are never consulted)."""
    ids = [bytes(c) for c in request.chunk_ids]
    if len(ids) > MAX_IDS_PER_REQUEST:
        raise InvalidArgument(f"at most {MAX_IDS_PER_REQUEST} chunk ids per request, got {len(ids)}")
    validation.chunk_ids("chunk_ids", ids)
    async with store.transaction() as tx:  # one transaction: the job's check and the lookup (ADR 0079)
        await job_in(tx, identity, request.job_id, "backup")
        present = await tx.find_chunks(identity.account_id, ids)
    missing: list[bytes] = []
    seen: set[bytes] = set()
    for cid in ids:
        if cid not in present and cid not in seen:
            missing.append(cid)
            seen.add(cid)
    return gateway_pb2.FindMissingChunksResponse(missing_chunk_ids=missing)
