"""All scheduler logic: operator operations and event handlers, over the ``SchedulerStore`` port.

Each function runs in one transaction: the state change and the events it
produces (through the outbox) commit together. Errors are raised as
``errors.NotFound`` / ``InvalidArgument`` / ``FailedPrecondition`` with a
message meant for the operator. Operator operations take the ``CallAuth`` of
the RPC (``call=``, ADR 0024 addendum): account-keyed calls pick their account
with ``choose_account``; calls by id load the resource and ``authorize`` its account.

One module per area; the adapters (``grpc_api``, ``consumers``) call the names re-exported here:

- ``common``: ``Deps``, ``SettingsInput``, loading the instance or job a call may act on.
- ``activation``: activating backup, enrollment tokens.
- ``instances``: reading, listing, pausing, resuming, canceling an instance; its settings.
- ``backup_jobs``: manual jobs, listing and canceling jobs, job progress and results.
- ``audit_trail``: the append-only audit trail (ADR 0027).
- ``admission``: the overview's admission figures (ADR 0058).
- ``lifecycle``: enrollment, recovery from the bucket, the inventory, reinstatement (ADR 0032, 0040).
"""

from strongroom_scheduler.handlers.activation import (
    ENROLLMENT_TOKEN_PREFIX,
    TOKEN_VALIDITY,
    activate_backup,
    issue_enrollment_token,
    new_enrollment_token,
    token_sha256,
)
from strongroom_scheduler.handlers.admission import AdmissionView, get_admission
from strongroom_scheduler.handlers.audit_trail import (
    DEFAULT_AUDIT_PAGE,
    MAX_AUDIT_PAGE,
    handle_audit_recorded,
    list_audit_events,
)
from strongroom_scheduler.handlers.backup_jobs import (
    DEFAULT_JOB_LIMIT,
    MAX_ALERT_FILE_ERRORS,
    MAX_JOB_LIMIT,
    JobPage,
    cancel_job,
    get_job,
    handle_job_updated,
    list_jobs,
    record_finished_backup,
    run_backup_now,
)
from strongroom_scheduler.handlers.common import AUDIT_CONSUMER, CONSUMER, Deps, SettingsInput
from strongroom_scheduler.handlers.instances import (
    DEFAULT_INSTANCE_PAGE,
    MAX_INSTANCE_PAGE,
    SETTINGS_FIELDS,
    InstancePage,
    cancel_backup,
    get_instance,
    list_instances,
    pause_backup,
    resume_backup,
    update_settings,
)
from strongroom_scheduler.handlers.lifecycle import (
    handle_agent_enrolled,
    handle_instance_recovered,
    handle_instance_reinstated,
    register_instances,
    release_instance,
)

__all__ = [
    "AUDIT_CONSUMER",
    "CONSUMER",
    "DEFAULT_AUDIT_PAGE",
    "DEFAULT_INSTANCE_PAGE",
    "DEFAULT_JOB_LIMIT",
    "ENROLLMENT_TOKEN_PREFIX",
    "MAX_ALERT_FILE_ERRORS",
    "MAX_AUDIT_PAGE",
    "MAX_INSTANCE_PAGE",
    "MAX_JOB_LIMIT",
    "SETTINGS_FIELDS",
    "TOKEN_VALIDITY",
    "AdmissionView",
    "Deps",
    "InstancePage",
    "JobPage",
    "SettingsInput",
    "activate_backup",
    "cancel_backup",
    "cancel_job",
    "get_admission",
    "get_instance",
    "get_job",
    "handle_agent_enrolled",
    "handle_audit_recorded",
    "handle_instance_recovered",
    "handle_instance_reinstated",
    "handle_job_updated",
    "issue_enrollment_token",
    "list_audit_events",
    "list_instances",
    "list_jobs",
    "new_enrollment_token",
    "pause_backup",
    "record_finished_backup",
    "register_instances",
    "release_instance",
    "resume_backup",
    "run_backup_now",
    "token_sha256",
    "update_settings",
]
