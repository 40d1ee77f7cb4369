"""Which jobs an authenticated agent may act on."""

from __future__ import annotations

from strongroom_gateway import validation
from strongroom_gateway.agents import Identity
from strongroom_gateway.errors import FailedPrecondition, NotFound, PermissionDenied
from strongroom_gateway.ports import GatewayStore, GatewayTx, Job, JobKind


async def require_job(
    identity: Identity, job_id: str, kind: JobKind, *, store: GatewayStore, field: str = "job_id"
) -> Job:
    """The job, if it is an unfinished ``kind`` job of this agent's instance that it may work on.

    A restore job must additionally have been delivered to the agent.
    """
    async with store.transaction() as tx:
        return await job_in(tx, identity, job_id, kind, field=field)


async def job_in(tx: GatewayTx, identity: Identity, job_id: str, kind: JobKind, *, field: str = "job_id") -> Job:
    """``require_job`` read in the caller's transaction ``tx``, with the caller's next statements.

    Each transaction is four round trips to PostgreSQL (``BEGIN``, the statement, ``COMMIT``, the
    pool's reset): the backup's calls check their job and read in one (ADR 0079).
    """
    validation.identifier(field, job_id)
    job = await tx.get_job(job_id)
    if job is None:
        raise NotFound(f"unknown {kind} job {job_id!r}")
    if job.instance_id != identity.instance_id or job.account_id != identity.account_id:
        raise PermissionDenied(f"{kind} job {job_id!r} is not a job of this instance")
    if job.kind != kind:
        raise FailedPrecondition(f"job {job_id!r} is a {job.kind} job, not a {kind} job")
    if job.state == "finished":
        raise FailedPrecondition(f"{kind} job {job_id!r} has already finished")
    if job.cancel_requested:
        raise FailedPrecondition(f"{kind} job {job_id!r} was canceled")
    if kind == "restore" and job.state == "queued":
        raise FailedPrecondition(f"restore job {job_id!r} has not been delivered to this agent yet")
    return job
