"""Fake Strongroom services for the CLI tests: in-memory servicers on a real gRPC server (127.0.0.1:0)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from strongroom.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from strongroom.audit.v1 import audit_pb2, audit_pb2_grpc
from strongroom.auth.v1 import auth_pb2, auth_pb2_grpc
from strongroom.billing.v1 import billing_pb2, billing_pb2_grpc
from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.gateway.v1 import verify_pb2, verify_pb2_grpc
from strongroom.restore.v1 import restore_pb2, restore_pb2_grpc
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

Cli = Callable[..., tuple[int, str, str]]
"""Runs ``strongroom *argv``; returns (exit code, stdout, stderr)."""

# 2026-01-01 02:00:00 UTC = 10:00:00 UTC+8
T0 = Timestamp(seconds=1767232800)


@dataclass
class Calls:
    """Every request each fake received, by method name."""

    requests: dict[str, list[Message]] = field(default_factory=dict)

    def record(self, method: str, request: Message) -> None:
        self.requests.setdefault(method, []).append(request)

    def last(self, method: str) -> Message:
        return self.requests[method][-1]


def _instance(instance_id: str, name: str = "web-1", **kwargs: object) -> scheduler_pb2.Instance:
    values: dict[str, object] = {"status": scheduler_pb2.RUNNING_STATUS_RUNNING, **kwargs}
    instance = scheduler_pb2.Instance(
        instance_id=instance_id,
        account_id="default",
        name=name,
        region="cn-hangzhou",
        settings=scheduler_pb2.BackupSettings(
            priority=common_pb2.BACKUP_PRIORITY_LOW, daily_start_minute=150, keep_latest_version=True
        ),
        next_backup_at=Timestamp(seconds=T0.seconds + 3600),
        activated_at=T0,
        hostname="web-1.example",
        schedule_zone="UTC+08:00",
        agent_version="0.1.0",
        **values,  # type: ignore[arg-type]
    )
    return instance


def _next_step(job: scheduler_pb2.BackupJob, *, partial: bool) -> scheduler_pb2.BackupJob:
    """QUEUED → RUNNING (half read) → COMPLETE, or PARTIAL_COMPLETE with one failed file."""
    step = scheduler_pb2.BackupJob()
    step.CopyFrom(job)
    if job.status == common_pb2.JOB_STATUS_QUEUED:
        step.status = common_pb2.JOB_STATUS_RUNNING
        step.stats.CopyFrom(
            common_pb2.JobStats(files_scanned=10, bytes_scanned=10 << 20, files_read=5, bytes_read=5 << 20)
        )
    elif job.status == common_pb2.JOB_STATUS_RUNNING:
        step.status = common_pb2.JOB_STATUS_PARTIAL_COMPLETE if partial else common_pb2.JOB_STATUS_COMPLETE
        step.stats.files_read, step.stats.bytes_read = 10, 10 << 20
        step.stats.files_failed = 1 if partial else 0
        step.version_id = "v-2"
    return step


class FakeScheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.instances = {"i-1": _instance("i-1"), "i-2": _instance("i-2", "db-1")}
        self.jobs = {
            "j-1": scheduler_pb2.BackupJob(
                job_id="j-1",
                instance_id="i-1",
                status=common_pb2.JOB_STATUS_COMPLETE,
                created_at=T0,
                finished_at=Timestamp(seconds=T0.seconds + 90),
                stats=common_pb2.JobStats(files_scanned=12, bytes_scanned=4096, bytes_uploaded=2048),
                version_id="v-1",
                priority=common_pb2.BACKUP_PRIORITY_LOW,
            )
        }

    def _get(self, instance_id: str, context: grpc.ServicerContext) -> scheduler_pb2.Instance:
        if instance_id not in self.instances:
            context.abort(grpc.StatusCode.NOT_FOUND, f"instance {instance_id} not found")
        return self.instances[instance_id]

    def ActivateBackup(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("ActivateBackup", request)
        instance = _instance("i-new", request.name, status=scheduler_pb2.RUNNING_STATUS_PREPARING)
        instance.region = request.region
        if request.has_settings:
            instance.settings.CopyFrom(request.settings)
        return scheduler_pb2.ActivateBackupResponse(instance=instance, enrollment_token="tok-secret")

    def GetInstance(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("GetInstance", request)
        return self._get(request.instance_id, context)

    def GetAdmission(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("GetAdmission", request)
        if request.region:
            return scheduler_pb2.Admission(running_backups=1, max_concurrent_backups=40, admission_window_seconds=21600)
        figures = scheduler_pb2.Admission(
            running_backups=3, waiting_backups=2, max_concurrent_backups=40, admission_window_seconds=21600
        )
        figures.oldest_waiting_since.FromSeconds(1767290400)  # 2026-01-01 18:00 UTC
        return figures

    def ListInstances(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("ListInstances", request)
        # one instance per page, so that the CLI's paging is exercised
        ordered = list(self.instances.values())
        start = int(request.page_token or 0)
        more = start + 1 < len(ordered)
        return scheduler_pb2.ListInstancesResponse(
            instances=ordered[start : start + 1], next_page_token=str(start + 1) if more else ""
        )

    def RunBackupNow(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("RunBackupNow", request)
        instance = self._get(request.instance_id, context)
        if instance.status == scheduler_pb2.RUNNING_STATUS_PAUSED:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"backup of instance {request.instance_id} is paused")
        job = scheduler_pb2.BackupJob(
            job_id="j-2", instance_id=request.instance_id, status=common_pb2.JOB_STATUS_QUEUED, created_at=T0
        )
        self.jobs["j-2"] = job
        return job

    def PauseBackup(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("PauseBackup", request)
        instance = self._get(request.instance_id, context)
        instance.status = scheduler_pb2.RUNNING_STATUS_PAUSED
        instance.ClearField("next_backup_at")
        return instance

    def ResumeBackup(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("ResumeBackup", request)
        instance = self._get(request.instance_id, context)
        instance.status = scheduler_pb2.RUNNING_STATUS_RUNNING
        return instance

    def CancelBackup(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("CancelBackup", request)
        instance = self._get(request.instance_id, context)
        instance.status = scheduler_pb2.RUNNING_STATUS_CANCELED
        return instance

    def UpdateSettings(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("UpdateSettings", request)
        instance = self._get(request.instance_id, context)
        for name in request.update_mask:
            setattr(instance.settings, name, getattr(request.settings, name))
        return instance

    def ListJobs(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("ListJobs", request)
        self._get(request.instance_id, context)
        # at most two jobs a page, so that the CLI's paging is exercised
        jobs = [j for j in self.jobs.values() if j.instance_id == request.instance_id]
        start = int(request.page_token or 0)
        end = start + min(request.page_size or 50, 2)
        return scheduler_pb2.ListJobsResponse(jobs=jobs[start:end], next_page_token=str(end) if end < len(jobs) else "")

    def GetJob(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("GetJob", request)
        if request.job_id not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"backup job {request.job_id} not found")
        job = self.jobs[request.job_id]
        if request.job_id == "j-2":  # the job started by RunBackupNow moves on one step per look
            self.jobs["j-2"] = _next_step(job, partial=job.instance_id == "i-2")
        return job

    def CancelJob(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("CancelJob", request)
        job = self.GetJob(request, context)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"backup job {job.job_id} already finished (COMPLETE)")


def _entry(path: str, kind: int, mode: int, size: int, link: str = "") -> common_pb2.FileEntry:
    return common_pb2.FileEntry(
        path=path,
        type=kind,
        mode=mode,
        size=size,
        mtime_ns=T0.seconds * 10**9,
        link_target=link,  # type: ignore[arg-type]
    )


class FakeCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.entries = [
            _entry("docs", common_pb2.ENTRY_TYPE_DIRECTORY, 0o755, 4096),
            _entry("hello.txt", common_pb2.ENTRY_TYPE_FILE, 0o644, 23),
            _entry("latest", common_pb2.ENTRY_TYPE_SYMLINK, 0o777, 9, "hello.txt"),
        ]

    def ListVersions(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("ListVersions", request)
        if request.instance_id not in ("i-1", "i-2"):  # the catalog lists nothing for an id it never saw
            return catalog_pb2.ListVersionsResponse()
        point = catalog_pb2.Point(
            point_id="p-1",
            version_id="v-1",
            filesystem=common_pb2.Filesystem(mount_point="/", capacity_bytes=40 << 30),
            file_count=12,
            total_bytes=4096,
            created_at=T0,
            retain_until=Timestamp(seconds=T0.seconds + 30 * 86400),
            browsable=True,
        )
        # two pages, to exercise paging: v-1, then an older v-0
        if request.page_token == "":
            return catalog_pb2.ListVersionsResponse(
                versions=[
                    catalog_pb2.Version(
                        version_id="v-1", instance_id=request.instance_id, created_at=T0, points=[point]
                    )
                ],
                next_page_token="page-2",
            )
        older = Timestamp(seconds=T0.seconds - 86400)
        return catalog_pb2.ListVersionsResponse(
            versions=[catalog_pb2.Version(version_id="v-0", instance_id=request.instance_id, created_at=older)]
        )

    def GetPoint(self, request, context):  # type: ignore[no-untyped-def]
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by the CLI")

    def BrowsePoint(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("BrowsePoint", request)
        if request.point_id != "p-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"point {request.point_id} not found")
        # two pages, to exercise paging
        if request.page_token == "":
            return catalog_pb2.BrowsePointResponse(entries=self.entries[:2], next_page_token="page-2")
        return catalog_pb2.BrowsePointResponse(entries=self.entries[2:])

    def _hit(self, instance_id: str, path: str, sizes: list[int]) -> catalog_pb2.FileHit:
        versions = [
            catalog_pb2.FileVersion(
                version_id=f"v-{n}", point_id=f"p-{n}", created_at=T0, type=common_pb2.ENTRY_TYPE_FILE, size=size
            )
            for n, size in zip(range(len(sizes), 0, -1), sizes, strict=True)
        ]
        return catalog_pb2.FileHit(
            instance_id=instance_id, mount_point="/", path=path, full_path="/" + path, versions=versions
        )

    def ListFiles(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("ListFiles", request)
        if "/" in request.pattern:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pattern contains '/'")
        # two pages, to exercise paging
        if request.page_token == "":
            return catalog_pb2.ListFilesResponse(
                hits=[self._hit("i-1", "etc/nginx/nginx.conf", [2048, 2000])], next_page_token="page-2"
            )
        return catalog_pb2.ListFilesResponse(hits=[self._hit("i-2", "srv/site.conf", [10])])

    def GetFileHistory(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("GetFileHistory", request)
        if request.instance_id != "i-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"instance {request.instance_id} has no backup versions")
        return self._hit("i-1", request.path.lstrip("/"), [130, 120])


class FakeRestore(restore_pb2_grpc.RestoreServiceServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.final_status = common_pb2.JOB_STATUS_COMPLETE
        self.polls_until_done = 2
        self.job = restore_pb2.RestoreJob()

    def CreateRestoreJob(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("CreateRestoreJob", request)
        if request.point_id != "p-1":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"point {request.point_id} is not browsable yet")
        self.job = restore_pb2.RestoreJob(
            restore_job_id="r-1",
            point_id=request.point_id,
            source_instance_id="i-1",
            target_instance_id=request.target_instance_id or "i-1",
            status=common_pb2.JOB_STATUS_QUEUED,
            include_paths=request.include_paths,
            exclude_paths=request.exclude_paths,
            target_path=request.target_path,
            conflict_policy=request.conflict_policy,
            created_at=T0,
        )
        return self.job

    def GetRestoreJob(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("GetRestoreJob", request)
        if request.restore_job_id != "r-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"restore job {request.restore_job_id} not found")
        self.polls_until_done -= 1
        if self.polls_until_done <= 0:
            self.job.status = self.final_status
            self.job.stats.files_restored = 3
            if self.final_status == common_pb2.JOB_STATUS_FAILED:
                self.job.error = "target path /nope does not exist"
            if self.final_status == common_pb2.JOB_STATUS_PARTIAL_COMPLETE:
                self.job.stats.files_failed = 3
                self.job.failed_files.add(path="docs/a.txt", reason="chunk 3f2a of this file is damaged in storage (x)")
                self.job.failed_files.add(path="odd\nname", reason="chunk 77 of this file is damaged in storage (y)")
        else:
            self.job.status = common_pb2.JOB_STATUS_RUNNING
        return self.job

    def ListRestoreJobs(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("ListRestoreJobs", request)
        if not self.job.restore_job_id:
            return restore_pb2.ListRestoreJobsResponse()
        # two pages, to exercise paging: the job, then an older one
        if request.page_token == "":
            return restore_pb2.ListRestoreJobsResponse(jobs=[self.job], next_page_token="page-2")
        older = restore_pb2.RestoreJob(restore_job_id="r-0", target_instance_id=self.job.target_instance_id)
        return restore_pb2.ListRestoreJobsResponse(jobs=[older])

    def CancelRestoreJob(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("CancelRestoreJob", request)
        self.job.status = common_pb2.JOB_STATUS_CANCELING
        return self.job


class FakeBilling(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def GetOverview(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("GetOverview", request)
        gib = 1 << 30
        if request.region:
            return billing_pb2.Overview(
                backed_up_instances=2, unbacked_up_instances=1, backed_up_capacity_bytes=80 * gib
            )
        return billing_pb2.Overview(
            backed_up_instances=5,
            unbacked_up_instances=3,
            backed_up_capacity_bytes=230 * gib,
            free_quota_bytes=100 * gib,
            free_quota_used_bytes=100 * gib,
            billable_capacity_bytes=130 * gib,
        )

    def ListLedger(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("ListLedger", request)
        # with the instances, two pages that cut the day: i-1 on the first, the day again with i-2
        second = request.page_token == "page-2"
        rows = [billing_pb2.LedgerInstance(instance_id="i-1", version_id="v-1", capacity_bytes=150 << 30)]
        if second:
            rows = [billing_pb2.LedgerInstance(instance_id="i-2", version_id="v-2", capacity_bytes=0)]
        day = billing_pb2.LedgerDay(
            day="2026-12-02",
            instances=1,
            capacity_bytes=150 << 30,
            billable_gib="50.0000",
            price_per_gib_day="0.0005",
            fee="0.0250",
            plan_gib_days="0.0000",
            charged="0.0250",
            instance_rows=rows if request.include_instances else [],
        )
        token = "page-2" if request.include_instances and not second else ""
        return billing_pb2.ListLedgerResponse(days=[day], zone="UTC+08:00", currency="USD", next_page_token=token)

    def ListPlans(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("ListPlans", request)
        plan = billing_pb2.Plan(
            plan_id="pl-1", gib_days="3000.0000", used_gib_days="50.0000", starts_on="2026-12-01", ends_on="2027-11-30"
        )
        if request.page_token == "":  # two pages, to exercise paging
            return billing_pb2.ListPlansResponse(plans=[plan], next_page_token="page-2")
        later = billing_pb2.Plan(plan_id="pl-0", gib_days="10.0000", starts_on="2027-12-01", ends_on="2028-11-30")
        return billing_pb2.ListPlansResponse(plans=[later])

    def CreatePlan(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("CreatePlan", request)
        if request.gib_days == "bad":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "gib_days must be a decimal number, got 'bad'")
        return billing_pb2.Plan(
            plan_id="pl-2",
            gib_days=request.gib_days,
            used_gib_days="0",
            starts_on=request.starts_on,
            ends_on=request.ends_on,
        )


GOOD_TOKEN = "srt_" + "a" * 24 + "_" + "s" * 43


class FakeTokens(auth_pb2_grpc.TokenServiceServicer):
    """Knows one token (GOOD_TOKEN, admin of 'default'); records the authorization each call carried."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.authorizations: list[str] = []

    def _check(self, context: grpc.ServicerContext) -> None:
        value = dict(context.invocation_metadata()).get("authorization", "")
        self.authorizations.append(str(value))
        if value != f"Bearer {GOOD_TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or expired API token")

    def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: grpc.ServicerContext) -> auth_pb2.WhoAmIResponse:  # noqa: N802
        self.calls.record("WhoAmI", request)
        self._check(context)
        return auth_pb2.WhoAmIResponse(
            subject="token:" + "a" * 24, grants=[auth_pb2.Grant(account_id="default", role=auth_pb2.ROLE_ADMIN)]
        )

    def CreateToken(  # noqa: N802
        self, request: auth_pb2.CreateTokenRequest, context: grpc.ServicerContext
    ) -> auth_pb2.CreateTokenResponse:
        self.calls.record("CreateToken", request)
        self._check(context)
        token = auth_pb2.ApiToken(
            token_id="b" * 24, name=request.name, grants=request.grants, expires_at=T0, created_at=T0
        )
        return auth_pb2.CreateTokenResponse(token=token, secret="srt_" + "b" * 24 + "_" + "t" * 43)


class FakeAudit(audit_pb2_grpc.AuditServiceServicer):
    """Three records, served two per page."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.events = [
            audit_pb2.AuditEvent(
                event_id=f"e-{n}",
                occurred_at=Timestamp(seconds=T0.seconds - 60 * n),
                service="scheduler",
                subject="token:abc",
                principal_kind="operator",
                account_ids=["default"],
                method="/strongroom.scheduler.v1.SchedulerService/PauseBackup",
                verb="pause backups",
                resources={"instance_id": f"i-{n}"},
                result_code="OK" if n != 1 else "PERMISSION_DENIED",
                result_message="" if n != 1 else "role viewer on account default cannot pause backups",
            )
            for n in range(3)
        ]

    def ListAuditEvents(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("ListAuditEvents", request)
        start = int(request.page_token or 0)
        end = start + min(request.page_size or 100, 2)
        next_token = str(end) if end < len(self.events) else ""
        return audit_pb2.ListAuditEventsResponse(events=self.events[start:end], next_page_token=next_token)


class FakeVerify(verify_pb2_grpc.VerifyServiceServicer):
    """The gateway's VerifyService: a verification finds ``damaged`` after two polls."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.polls_until_done = 2
        self.damaged: list[verify_pb2.DamagedFile] = []
        self.verification = verify_pb2.Verification()

    def StartVerification(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("StartVerification", request)
        if request.point_id and request.point_id != "p-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"backup point {request.point_id!r} not found")
        scope = verify_pb2.VERIFICATION_SCOPE_POINT if request.point_id else verify_pb2.VERIFICATION_SCOPE_INSTANCE
        self.verification = verify_pb2.Verification(
            verification_id="v-1",
            account_id="default",
            scope=scope,
            target_id=request.point_id or request.instance_id,
            state=verify_pb2.VERIFICATION_STATE_QUEUED,
            created_at=T0,
        )
        return self.verification

    def GetVerification(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("GetVerification", request)
        if request.verification_id != "v-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"verification {request.verification_id!r} not found")
        self.polls_until_done -= 1
        v = self.verification
        v.points_total = 1
        if self.polls_until_done <= 0:
            v.points_done, v.packs_checked, v.bytes_read = 1, 3, 48 << 20
            v.state = verify_pb2.VERIFICATION_STATE_DAMAGED if self.damaged else verify_pb2.VERIFICATION_STATE_CLEAN
            v.damaged_files_count = len(self.damaged) + (1 if self.damaged else 0)
            del v.damaged_files[:]
            v.damaged_files.extend(self.damaged)
            v.finished_at.CopyFrom(T0)
        else:
            v.state = verify_pb2.VERIFICATION_STATE_RUNNING
        return v

    def ListVerifications(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("ListVerifications", request)
        if request.page_token == "":  # two pages, to exercise paging
            return verify_pb2.ListVerificationsResponse(verifications=[self.verification], next_page_token="page-2")
        older = verify_pb2.Verification(verification_id="v-0", created_at=T0)
        return verify_pb2.ListVerificationsResponse(verifications=[older])

    def GetRecoverability(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.record("GetRecoverability", request)
        return verify_pb2.GetRecoverabilityResponse(
            instances=[
                verify_pb2.InstanceRecoverability(
                    instance_id="i-1",
                    last_verified_point_id="p-1",
                    last_verified_point_created_at=T0,
                    last_verified_at=T0,
                    damaged_files=2,
                    damaged_points=1,
                    last_verification_id="v-1",
                )
            ]
        )


class FakeAlerts(alerts_pb2_grpc.AlertServiceServicer):
    """Three messages (the newest unread) served two per page, and one webhook subscription."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.messages = [
            alerts_pb2.Message(
                message_id=f"m-{n}",
                kind=events_pb2.ALERT_KIND_BACKUP_FAILED,
                title=f"Backup failed: web-{n}",
                body=f"Instance web-{n} (i-{n}), backup job j-{n}: the source root /data does not exist",
                instance_id=f"i-{n}",
                job_id=f"j-{n}",
                occurred_at=T0,
                read_at=None if n == 2 else T0,
            )
            for n in (2, 1, 0)
        ]

    def ListMessages(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.calls.record("ListMessages", request)
        start = int(request.page_token or 0)
        end = start + min(request.page_size or 50, 2)
        next_token = str(end) if end < len(self.messages) else ""
        return alerts_pb2.ListMessagesResponse(messages=self.messages[start:end], next_page_token=next_token, unread=1)

    def MarkMessagesRead(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.calls.record("MarkMessagesRead", request)
        return alerts_pb2.MarkMessagesReadResponse(marked=3 if request.all else len(request.message_ids))

    def _subscription(self, request: alerts_pb2.CreateSubscriptionRequest) -> alerts_pb2.Subscription:
        return alerts_pb2.Subscription(
            subscription_id="s-1",
            account_id=request.account_id or "default",
            channel=request.channel,
            target="https://hooks.example.com/…",
            kinds=request.kinds,
            created_at=T0,
            delivered=4,
            pending=1,
            dead_lettered=2,
            last_error="HTTP 500",
        )

    def CreateSubscription(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.calls.record("CreateSubscription", request)
        secret = "whsec-0123" if request.channel == alerts_pb2.CHANNEL_WEBHOOK else ""
        return alerts_pb2.CreateSubscriptionResponse(subscription=self._subscription(request), signing_secret=secret)

    def ListSubscriptions(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.calls.record("ListSubscriptions", request)
        sub = self._subscription(alerts_pb2.CreateSubscriptionRequest(channel=alerts_pb2.CHANNEL_WEBHOOK))
        if request.page_token == "":  # two pages, to exercise paging
            return alerts_pb2.ListSubscriptionsResponse(subscriptions=[sub], next_page_token="page-2")
        later = alerts_pb2.Subscription(
            subscription_id="s-2", channel=alerts_pb2.CHANNEL_EMAIL, target="ops@example.com"
        )
        return alerts_pb2.ListSubscriptionsResponse(subscriptions=[later])

    def DeleteSubscription(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.calls.record("DeleteSubscription", request)
        if request.subscription_id != "s-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"alert subscription {request.subscription_id} not found")
        return alerts_pb2.DeleteSubscriptionResponse()

    def ListDeliveries(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.calls.record("ListDeliveries", request)
        delivery = alerts_pb2.Delivery(
            delivery_id="d-1",
            subscription_id="s-1",
            message_id="m-2",
            channel=alerts_pb2.CHANNEL_WEBHOOK,
            target="https://hooks.example.com/…",
            state=alerts_pb2.DELIVERY_STATE_DEAD,
            attempts=8,
            last_error="HTTP 500",
            created_at=T0,
        )
        if request.page_token == "":  # two pages, to exercise paging
            return alerts_pb2.ListDeliveriesResponse(deliveries=[delivery], next_page_token="page-2")
        older = alerts_pb2.Delivery(delivery_id="d-0", state=request.state, created_at=T0)
        return alerts_pb2.ListDeliveriesResponse(deliveries=[older])


@dataclass
class FakeServices:
    calls: Calls
    scheduler: FakeScheduler
    catalog: FakeCatalog
    restore: FakeRestore
    billing: FakeBilling
    tokens: FakeTokens
    audit: FakeAudit
    address: str
    verify: FakeVerify = field(default_factory=lambda: FakeVerify(Calls()))
    alerts: FakeAlerts = field(default_factory=lambda: FakeAlerts(Calls()))


@contextmanager
def fake_services() -> Iterator[FakeServices]:
    """All four fakes on one gRPC server (a threaded server, since the CLI runs its own event loop)."""
    calls = Calls()
    services = FakeServices(
        calls,
        FakeScheduler(calls),
        FakeCatalog(calls),
        FakeRestore(calls),
        FakeBilling(calls),
        FakeTokens(calls),
        FakeAudit(calls),
        address="",
        verify=FakeVerify(calls),
        alerts=FakeAlerts(calls),
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(services.scheduler, server)
    catalog_pb2_grpc.add_CatalogServiceServicer_to_server(services.catalog, server)
    restore_pb2_grpc.add_RestoreServiceServicer_to_server(services.restore, server)
    billing_pb2_grpc.add_BillingServiceServicer_to_server(services.billing, server)
    auth_pb2_grpc.add_TokenServiceServicer_to_server(services.tokens, server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(services.audit, server)
    verify_pb2_grpc.add_VerifyServiceServicer_to_server(services.verify, server)
    alerts_pb2_grpc.add_AlertServiceServicer_to_server(services.alerts, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    services.address = f"127.0.0.1:{port}"
    try:
        yield services
    finally:
        server.stop(None)
