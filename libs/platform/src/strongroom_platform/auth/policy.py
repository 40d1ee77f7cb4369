"""The one table that says who may call every RPC, and what it needs (ADR 0024).

Every method of every service generated from ``proto/`` has a rule here;
``tests/contract/test_authorization_table.py`` walks the descriptors and fails on a method without
one, and the interceptor refuses a method it cannot find (fail closed). Adding an RPC therefore
means adding its line here, next to the permission it needs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from strongroom_platform.auth.principal import Permission


class Caller(enum.Flag):
    """Which kinds of caller a rule admits."""

    PUBLIC = enum.auto()  # anyone reaching the listener; the handler checks what it needs
    OPERATOR = enum.auto()  # API token or OIDC bearer
    SERVICE = enum.auto()  # another Strongroom service, by its mTLS certificate
    AGENT = enum.auto()  # an enrolled agent, by the gateway's agent authenticator


@dataclass(frozen=True, slots=True)
class Rule:
    """What one RPC requires.

    ``permission`` is checked against the caller's role on the account the call acts on (None for
    public and agent-only methods); ``services`` lists the service names admitted when ``callers``
    includes SERVICE; ``verb`` completes "role viewer on account a cannot ..."; ``mutating`` calls
    are recorded in the audit trail.
    """

    callers: Caller
    permission: Permission | None = None
    services: frozenset[str] = frozenset()
    verb: str = ""
    mutating: bool = False


def _op(permission: Permission, verb: str, *, mutating: bool = False, services: frozenset[str] = frozenset()) -> Rule:
    callers = Caller.OPERATOR | Caller.SERVICE if services else Caller.OPERATOR
    return Rule(callers=callers, permission=permission, services=services, verb=verb, mutating=mutating)


_AGENT = Rule(callers=Caller.AGENT, verb="act as an agent")
_PUBLIC = Rule(callers=Caller.PUBLIC, verb="call")

READ, OPERATE, ADMIN = Permission.READ, Permission.OPERATE, Permission.ADMIN

_SCHEDULER = "/strongroom.scheduler.v1.SchedulerService/"
_CATALOG = "/strongroom.catalog.v1.CatalogService/"
_BILLING = "/strongroom.billing.v1.BillingService/"
_RESTORE = "/strongroom.restore.v1.RestoreService/"
_MANIFEST = "/strongroom.gateway.v1.ManifestService/"
_AGENT_GATEWAY = "/strongroom.agent.v1.AgentGatewayService/"
_TOKENS = "/strongroom.auth.v1.TokenService/"
_AGENT_ADMIN = "/strongroom.gateway.v1.AgentAdminService/"
_AUDIT = "/strongroom.audit.v1.AuditService/"
_VERIFY = "/strongroom.gateway.v1.VerifyService/"
_ALERTS = "/strongroom.alerts.v1.AlertService/"

POLICY: Mapping[str, Rule] = MappingProxyType(
    {
        # scheduler: instances, schedules, backup jobs
        _SCHEDULER + "ActivateBackup": _op(OPERATE, "activate backup", mutating=True),
        # the restore service checks the target instance of the restore jobs it creates
        _SCHEDULER + "GetInstance": _op(READ, "read instances", services=frozenset({"restore"})),
        _SCHEDULER + "ListInstances": _op(READ, "list instances"),
        _SCHEDULER + "RunBackupNow": _op(OPERATE, "start backups", mutating=True),
        _SCHEDULER + "PauseBackup": _op(OPERATE, "pause backups", mutating=True),
        _SCHEDULER + "ResumeBackup": _op(OPERATE, "resume backups", mutating=True),
        # Cancelling backups deletes every version of the instance: admins only.
        _SCHEDULER + "CancelBackup": _op(ADMIN, "cancel backups", mutating=True),
        _SCHEDULER + "UpdateSettings": _op(OPERATE, "change backup settings", mutating=True),
        _SCHEDULER + "ListJobs": _op(READ, "list jobs"),
        _SCHEDULER + "GetJob": _op(READ, "read jobs"),
        _SCHEDULER + "CancelJob": _op(OPERATE, "cancel jobs", mutating=True),
        # A new token lets a new agent take over the instance's identity (ADR 0032): admins only.
        _SCHEDULER + "IssueEnrollmentToken": _op(ADMIN, "issue enrollment tokens", mutating=True),
        # the inventory (ADR 0040): registering hosts and saying one is gone
        _SCHEDULER + "RegisterInstances": _op(OPERATE, "register instances", mutating=True),
        _SCHEDULER + "ReleaseInstance": _op(OPERATE, "release instances", mutating=True),
        # admission control as the overview shows it (ADR 0058)
        _SCHEDULER + "GetAdmission": _op(READ, "read admission"),
        # catalog: versions and browse; the restore service reads points for the jobs it creates
        _CATALOG + "ListVersions": _op(READ, "list versions"),
        _CATALOG + "GetPoint": _op(READ, "read points", services=frozenset({"restore"})),
        _CATALOG + "BrowsePoint": _op(READ, "browse points"),
        # Undoing a cancel and holding versions past their retention: admins only, audited (ADR 0040).
        _CATALOG + "ReinstateBackup": _op(ADMIN, "reinstate backups", mutating=True),
        _CATALOG + "PlaceHold": _op(ADMIN, "place holds", mutating=True),
        _CATALOG + "ReleaseHold": _op(ADMIN, "release holds", mutating=True),
        _CATALOG + "ListHolds": _op(READ, "list holds"),
        # file search (ADR 0043)
        _CATALOG + "ListFiles": _op(READ, "search files"),
        _CATALOG + "GetFileHistory": _op(READ, "read file history"),
        # billing
        _BILLING + "GetOverview": _op(READ, "read billing"),
        _BILLING + "ListLedger": _op(READ, "read billing"),
        _BILLING + "ListPlans": _op(READ, "read billing"),
        # A plan offsets the account's fees: its admins only, and audited.
        _BILLING + "CreatePlan": _op(ADMIN, "create resource plans", mutating=True),
        # restore jobs
        _RESTORE + "CreateRestoreJob": _op(OPERATE, "restore files", mutating=True),
        _RESTORE + "GetRestoreJob": _op(READ, "read restore jobs"),
        _RESTORE + "ListRestoreJobs": _op(READ, "list restore jobs"),
        _RESTORE + "CancelRestoreJob": _op(OPERATE, "cancel restore jobs", mutating=True),
        # operator credentials (served by the scheduler)
        _TOKENS + "CreateToken": _op(ADMIN, "create API tokens", mutating=True),
        _TOKENS + "ListTokens": _op(ADMIN, "list API tokens"),
        _TOKENS + "RevokeToken": _op(ADMIN, "revoke API tokens", mutating=True),
        _TOKENS + "WhoAmI": _op(READ, "read its own identity"),
        # the audit trail (served by the scheduler, ADR 0027): admins of the account only
        _AUDIT + "ListAuditEvents": _op(ADMIN, "read the audit trail"),
        # alerts (served by the scheduler, ADR 0037): a subscription sends the account's alerts
        # outside the platform, so only its admins add or remove one (audited)
        _ALERTS + "CreateSubscription": _op(ADMIN, "subscribe to alerts", mutating=True),
        _ALERTS + "ListSubscriptions": _op(READ, "list alert subscriptions"),
        _ALERTS + "DeleteSubscription": _op(ADMIN, "remove alert subscriptions", mutating=True),
        _ALERTS + "ListMessages": _op(READ, "read messages"),
        # read state is the account's, shared by its operators: a viewer changes nothing
        _ALERTS + "MarkMessagesRead": _op(OPERATE, "mark messages read", mutating=True),
        _ALERTS + "ListDeliveries": _op(READ, "list alert deliveries"),
        # gateway, internal listener: decrypted manifests, for the catalog's indexer only
        _MANIFEST + "ReadPointManifest": Rule(
            callers=Caller.SERVICE, services=frozenset({"catalog"}), verb="read manifests"
        ),
        # gateway, public listener: repository verification (ADR 0033)
        _VERIFY + "StartVerification": _op(OPERATE, "verify backups", mutating=True),
        _VERIFY + "GetVerification": _op(READ, "read verifications"),
        _VERIFY + "ListVerifications": _op(READ, "list verifications"),
        _VERIFY + "GetRecoverability": _op(READ, "read recoverability"),
        # gateway, agent listener: the one-time enrollment token is Enroll's credential
        _AGENT_GATEWAY + "Enroll": _PUBLIC,
        _AGENT_GATEWAY + "Connect": _AGENT,
        _AGENT_GATEWAY + "FindMissingChunks": _AGENT,
        _AGENT_GATEWAY + "UploadChunks": _AGENT,
        _AGENT_GATEWAY + "CommitPoint": _AGENT,
        _AGENT_GATEWAY + "ReadManifest": _AGENT,
        _AGENT_GATEWAY + "ReadChunks": _AGENT,
        # by certificate on the mTLS listener, or by bearer once the certificate expired (ADR 0028)
        _AGENT_GATEWAY + "RenewCertificate": _AGENT,
        # gateway, internal listener: the break-glass operator tool's certificate (ADR 0028)
        _AGENT_ADMIN + "RevokeAgentCertificates": Rule(
            callers=Caller.SERVICE, services=frozenset({"admin"}), verb="revoke agent certificates", mutating=True
        ),
        # the filesystems an instance may back up (ADR 0025, 0032): the same break-glass identity
        _AGENT_ADMIN + "ListInstanceFilesystems": Rule(
            callers=Caller.SERVICE, services=frozenset({"admin"}), verb="list instance filesystems"
        ),
        _AGENT_ADMIN + "ApproveInstanceFilesystem": Rule(
            callers=Caller.SERVICE, services=frozenset({"admin"}), verb="approve filesystems", mutating=True
        ),
        # standard services every listener may carry
        "/grpc.health.v1.Health/Check": _PUBLIC,
        "/grpc.health.v1.Health/Watch": _PUBLIC,
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _PUBLIC,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _PUBLIC,
    }
)


def rule_for(method: str) -> Rule | None:
    """The rule of the full method name (``/package.Service/Method``), or None if it has none."""
    return POLICY.get(method)
