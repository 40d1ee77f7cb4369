"""Agent identity and control: enrollment, credentials, command delivery, reports."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform.auth import AgentAuthenticator, AgentCall, Principal
from strongroom_platform.auth import agent as agent_principal
from strongroom_platform.clock import Clock
from strongroom_platform.events import AGENT_ENROLLED, new_meta

from strongroom_gateway import filesystems, validation
from strongroom_gateway.agent_versions import check_agent_version, gateway_release
from strongroom_gateway.errors import InvalidArgument, Unauthenticated
from strongroom_gateway.jobs import (
    FINAL_STATUSES,
    PRODUCER,
    bounded_failed_files,
    command_for_delivery,
    emit_job_status,
)
from strongroom_gateway.ports import Account, GatewayStore, GatewayTx, Job
from strongroom_gateway.sessions import Session
from strongroom_gateway.vault import Vault

log = logging.getLogger(__name__)

_BEARER = "bearer "
_MAX_FILE_ERRORS = 100


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated agent."""

    instance_id: str
    account_id: str


# Every refusal of a canceled instance's agent says this (ADR 0040): the agent uninstalls itself on it.
CANCELED = "backup was deactivated for this instance"
REVOKED_BY_CANCEL = f"credential revoked: {CANCELED}"

IssueAtEnrollment = Callable[[GatewayTx, str, str], Awaitable[gateway_pb2.AgentCertificate]]
"""Issues the agent's first certificate inside the enrollment's transaction (account, instance)."""


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def enroll(
    request: gateway_pb2.EnrollRequest,
    *,
    store: GatewayStore,
    clock: Clock,
    issue_certificate: IssueAtEnrollment | None = None,
    vault: Vault | None = None,
) -> gateway_pb2.EnrollResponse:
    """Exchange a one-time token for a credential (and, with ``issue_certificate``, a client
    certificate, ADR 0028); the token is consumed, only hashes and serials are stored. With
    ``vault``, the instance's disaster-recovery record is written once the enrollment committed."""
    validation.enroll_request(request)
    if not request.enrollment_token:
        raise Unauthenticated("enrollment token missing")
    token_hash = sha256_hex(request.enrollment_token)
    secret = secrets.token_urlsafe(32)
    async with store.transaction() as tx:
        instance = await tx.find_instance_by_token(token_hash)
        # Same message for unknown and already used tokens: a probe learns nothing.
        if instance is None or instance.revoked:
            raise Unauthenticated("enrollment token is unknown or was already used")
        if instance.token_expires_at is None or instance.token_expires_at <= clock.now():
            raise Unauthenticated("enrollment token has expired; re-activate backup to get a new one")
        # Refused before anything is written: the token stays valid for the upgraded agent (ADR 0045).
        check_agent_version(request.agent_version, gateway_release())
        await tx.enroll_instance(instance.instance_id, sha256_hex(secret), request.hostname, clock.now())
        await filesystems.record_enrolled(tx, instance.instance_id, request.filesystems, clock.now())
        certificate = None
        if issue_certificate is not None:
            certificate = await issue_certificate(tx, instance.account_id, instance.instance_id)
        await tx.enqueue(
            AGENT_ENROLLED,
            instance.instance_id,
            events_pb2.AgentEnrolled(
                meta=new_meta(PRODUCER, clock.now()),
                account_id=instance.account_id,
                instance_id=instance.instance_id,
                hostname=request.hostname,
                os=request.os,
                arch=request.arch,
                agent_version=request.agent_version,
                # the inventory record of a host activated without one (ADR 0040)
                host_id=request.host_id,
                block_devices=request.block_devices,
            ),
        )
    if vault is not None:
        await vault.record_instance_quietly(instance.instance_id)
    # The agent sends "Bearer <instance_id>.<credential>" (ADR 0004).
    return gateway_pb2.EnrollResponse(instance_id=instance.instance_id, credential=secret, certificate=certificate)


async def authenticate(authorization: str | None, *, store: GatewayStore) -> Identity:
    """Check ``authorization: Bearer <instance_id>.<secret>`` against the stored hash."""
    if not authorization:
        raise Unauthenticated("missing 'authorization: Bearer <credential>' metadata; enroll the agent first")
    if not authorization[: len(_BEARER)].lower() == _BEARER:
        raise Unauthenticated("authorization metadata must be 'Bearer <credential>'")
    instance_id, dot, secret = authorization[len(_BEARER) :].strip().rpartition(".")
    if not dot or not validation.ID_PATTERN.fullmatch(instance_id) or not secret:
        raise Unauthenticated("malformed credential; expected '<instance_id>.<secret>'")
    async with store.transaction() as tx:
        instance = await tx.get_instance(instance_id)
    expected = "" if instance is None or instance.credential_sha256 is None else instance.credential_sha256
    # Always compare, so timing does not tell unknown instances from wrong secrets.
    matches = hmac.compare_digest(sha256_hex(secret).encode(), expected.encode())
    if instance is None or not matches:
        raise Unauthenticated("invalid credential")
    if instance.revoked:
        raise Unauthenticated(REVOKED_BY_CANCEL)
    return Identity(instance.instance_id, instance.account_id)


def authenticator(store: GatewayStore) -> AgentAuthenticator:
    """The agent check of the auth interceptor on the agents' listener (ADR 0024)."""

    async def check(call: AgentCall) -> Principal:
        identity = await authenticate(call.bearer, store=store)
        return agent_principal(identity.account_id, identity.instance_id)

    return check


async def pending_commands(
    identity: Identity, session: Session, *, store: GatewayStore, unthrottled: bool = False
) -> list[tuple[str, gateway_pb2.AgentCommand]]:
    """Commands not yet sent on this stream: every unfinished job, then cancels of delivered ones.

    Each new stream gets all unfinished jobs again (the agent ignores a job it
    is already running), so a command lost with a broken stream is re-sent.
    """
    async with store.transaction() as tx:
        jobs = await tx.unfinished_jobs(identity.instance_id)
        account = await tx.get_account(identity.account_id)
    return commands_to_send(identity, session, jobs, account, unthrottled=unthrottled)


def commands_to_send(
    identity: Identity, session: Session, jobs: Iterable[Job], account: Account | None, *, unthrottled: bool = False
) -> list[tuple[str, gateway_pb2.AgentCommand]]:
    """Of the instance's unfinished ``jobs``, the commands ``session`` has not sent yet, keyed by job id
    (``cancel:<job id>`` for a cancel)."""
    out: list[tuple[str, gateway_pb2.AgentCommand]] = []
    if account is None:
        return out
    for job in jobs:
        if job.account_id != identity.account_id:
            continue
        if job.cancel_requested:
            key = f"cancel:{job.job_id}"
            if key not in session.sent:
                out.append((key, gateway_pb2.AgentCommand(cancel_job=gateway_pb2.CancelJob(job_id=job.job_id))))
        elif job.job_id not in session.sent:
            out.append((job.job_id, command_for_delivery(job, account, unthrottled=unthrottled)))
    return out


async def handle_report(
    identity: Identity,
    report: gateway_pb2.AgentReport,
    session: Session,
    *,
    store: GatewayStore,
    clock: Clock,
    vault: Vault | None = None,
) -> None:
    """Apply one report of the agent's stream (hello, progress, finished).

    A hello that records filesystems (the first set, or new ones pending approval) writes a new
    disaster-recovery record of the instance (with ``vault``).
    """
    kind = report.WhichOneof("report")
    if kind == "hello":
        validation.hello(report.hello)
        # Before anything is recorded: an agent outside N-1..N learns how to upgrade (ADR 0045).
        check_agent_version(report.hello.agent_version, gateway_release())
        session.agent_version = report.hello.agent_version
        capacity = sum(fs.capacity_bytes for fs in report.hello.filesystems)
        session.capacity_bytes = capacity
        async with store.transaction() as tx:
            await tx.set_instance_capacity(identity.instance_id, capacity, report.hello.hostname)
            before = len(await tx.instance_filesystems(identity.instance_id))
            await filesystems.note_reported(tx, identity.instance_id, report.hello.filesystems, clock.now())
            changed = len(await tx.instance_filesystems(identity.instance_id)) != before
        if changed and vault is not None:
            await vault.record_instance_quietly(identity.instance_id)
        return
    if kind == "progress":
        validation.progress(report.progress)
        await _job_report(
            identity,
            report.progress.job_id,
            None,
            report.progress.stats,
            "",
            [],
            store,
            clock,
            agent_version=session.agent_version,
        )
        return
    if kind == "finished":
        finished = report.finished
        validation.finished(finished)
        if finished.status not in FINAL_STATUSES:
            raise InvalidArgument(f"JobFinished status {finished.status} is not a final status")
        errors = list(finished.file_errors)[:_MAX_FILE_ERRORS]
        failed = bounded_failed_files(finished.failed_files)
        await _job_report(
            identity,
            finished.job_id,
            finished.status,
            finished.stats,
            finished.error,
            errors,
            store,
            clock,
            failed,
            agent_version=session.agent_version,
        )
        return
    raise InvalidArgument("empty AgentReport")


async def _job_report(
    identity: Identity,
    job_id: str,
    final: common_pb2.JobStatus.ValueType | None,
    stats: common_pb2.JobStats,
    error: str,
    file_errors: list[str],
    store: GatewayStore,
    clock: Clock,
    failed_files: Sequence[common_pb2.FileError] = (),
    agent_version: str = "",
) -> None:
    async with store.transaction() as tx:
        job = await tx.get_job(job_id, for_update=True)
        if job is None or job.instance_id != identity.instance_id:
            # Not an error for the stream: a stale agent may report a job the
            # gateway already dropped. It never touches another instance's job.
            log.warning("instance %s reported on unknown or foreign job %r", identity.instance_id, job_id)
            return
        if job.state == "finished":
            return
        updated: Job = dataclasses.replace(job, state="finished" if final is not None else "running")
        await tx.update_job(updated)
        status = final if final is not None else common_pb2.JOB_STATUS_RUNNING
        if job.cancel_requested and final is None:
            status = common_pb2.JOB_STATUS_CANCELING
        await emit_job_status(
            tx,
            updated,
            status,
            clock,
            error=error,
            stats=stats,
            file_errors=file_errors,
            failed_files=failed_files,
            agent_version=agent_version,
        )
