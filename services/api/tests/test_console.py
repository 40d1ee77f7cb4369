"""The web console against fakes of the services (ADR 0054): every page renders with data, login and
logout, CSRF, a viewer sees no mutating control and a forged mutation is refused 403, gRPC errors
become readable pages, the vendored htmx is the pinned one. The real-browser suite is tests/browser."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.resources
import json
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import grpc
import markupsafe
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf.timestamp_pb2 import Timestamp
from strongroom.alerts.v1 import alerts_pb2
from strongroom.auth.v1 import auth_pb2
from strongroom.billing.v1 import billing_pb2
from strongroom.catalog.v1 import catalog_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.restore.v1 import restore_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_api.console import build_console, views
from strongroom_api.console.client import Services
from strongroom_api.console.sessions import Grant, SessionStore
from strongroom_platform.testing import FakeClock
from test_api_process import BACKENDS, pki, running_edge, settings_for

__all__ = ["pki"]  # a fixture of the edge's process tests, used here too

NOW = dt.datetime(2026, 12, 6, 10, 0, tzinfo=dt.UTC)
ADMIN, VIEWER = "sr_admin_secret", "sr_viewer_secret"


def ts(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class FakeError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


INSTANCE = scheduler_pb2.Instance(
    instance_id="i-1",
    account_id="acme",
    name="web-1",
    region="local",
    status=scheduler_pb2.RUNNING_STATUS_RUNNING,
    settings=scheduler_pb2.BackupSettings(priority=common_pb2.BACKUP_PRIORITY_HIGH, daily_start_minute=125),
    next_backup_at=ts(NOW + dt.timedelta(hours=5)),
    agent_enrolled=True,
    schedule_zone="UTC+08:00",
)
JOB = scheduler_pb2.BackupJob(
    job_id="j-1",
    instance_id="i-1",
    status=common_pb2.JOB_STATUS_RUNNING,
    created_at=ts(NOW),
    stats=common_pb2.JobStats(files_scanned=10, bytes_scanned=1000, bytes_read=400),
)
POINT = catalog_pb2.Point(
    point_id="p-1",
    version_id="v-1",
    instance_id="i-1",
    filesystem=common_pb2.Filesystem(mount_point="/"),
    file_count=3,
    total_bytes=3000,
    created_at=ts(NOW),
    browsable=True,
)
ENTRIES = {
    "": [common_pb2.FileEntry(path="etc", type=common_pb2.ENTRY_TYPE_DIRECTORY, mode=0o755)],
    "etc": [
        common_pb2.FileEntry(path="etc/app", type=common_pb2.ENTRY_TYPE_DIRECTORY, mode=0o755),
        common_pb2.FileEntry(path="etc/hosts", type=common_pb2.ENTRY_TYPE_FILE, size=120, mode=0o644),
    ],
    "etc/app": [common_pb2.FileEntry(path="etc/app/config.yaml", type=common_pb2.ENTRY_TYPE_FILE, size=2048)],
}


class FakeServices(Services):
    """The stubs replaced by async functions; records mutating calls by method name."""

    def __init__(self) -> None:
        self.timeout = 5.0
        self.called: list[str] = []

        def rpc(name: str, answer: Callable[[Any], Any]) -> Callable[..., Awaitable[Any]]:
            async def call(request: Any, *, metadata: tuple[tuple[str, str], ...], timeout: float) -> Any:  # noqa: ASYNC109 - gRPC's signature
                token = dict(metadata)["authorization"].removeprefix("Bearer ")
                if token not in (ADMIN, VIEWER):
                    raise FakeError(grpc.StatusCode.UNAUTHENTICATED, "the token is not valid")
                self.called.append(name)
                return answer(request)

            return call

        def denied(request: Any) -> Any:
            raise FakeError(grpc.StatusCode.NOT_FOUND, "instance 'nope' not found")

        def browse(request: catalog_pb2.BrowsePointRequest) -> catalog_pb2.BrowsePointResponse:
            return catalog_pb2.BrowsePointResponse(entries=ENTRIES.get(request.path, []))

        def admission(request: scheduler_pb2.GetAdmissionRequest) -> scheduler_pb2.Admission:
            # the account's figures in all regions, and fewer in one (ADR 0058)
            figures = scheduler_pb2.Admission(
                running_backups=1 if request.region else 4,
                waiting_backups=0 if request.region else 7,
                max_concurrent_backups=40,
                admission_window_seconds=21600,
            )
            if not request.region:
                figures.oldest_waiting_since.CopyFrom(ts(NOW))
            return figures

        self.tokens = SimpleNamespace(WhoAmI=None)
        self.scheduler = SimpleNamespace(
            ListInstances=rpc("ListInstances", lambda r: scheduler_pb2.ListInstancesResponse(instances=[INSTANCE])),
            GetInstance=rpc("GetInstance", lambda r: INSTANCE if r.instance_id == "i-1" else denied(r)),
            ListJobs=rpc("ListJobs", lambda r: scheduler_pb2.ListJobsResponse(jobs=[JOB])),
            GetAdmission=rpc("GetAdmission", admission),
            RunBackupNow=rpc("RunBackupNow", lambda r: JOB),
            PauseBackup=rpc("PauseBackup", lambda r: INSTANCE),
            ResumeBackup=rpc("ResumeBackup", lambda r: INSTANCE),
            CancelBackup=rpc("CancelBackup", lambda r: INSTANCE),
            UpdateSettings=rpc("UpdateSettings", lambda r: INSTANCE),
            CancelJob=rpc("CancelJob", lambda r: JOB),
            ActivateBackup=rpc(
                "ActivateBackup",
                lambda r: scheduler_pb2.ActivateBackupResponse(instance=INSTANCE, enrollment_token="enroll-123"),
            ),
        )
        self.catalog = SimpleNamespace(
            ListVersions=rpc(
                "ListVersions",
                lambda r: catalog_pb2.ListVersionsResponse(
                    versions=[catalog_pb2.Version(version_id="v-1", created_at=ts(NOW), points=[POINT])]
                ),
            ),
            GetPoint=rpc("GetPoint", lambda r: POINT),
            BrowsePoint=rpc("BrowsePoint", browse),
            ListFiles=rpc(
                "ListFiles",
                lambda r: catalog_pb2.ListFilesResponse(
                    hits=[
                        catalog_pb2.FileHit(
                            instance_id="i-1",
                            path="etc/app/config.yaml",
                            full_path="/etc/app/config.yaml",
                            versions=[catalog_pb2.FileVersion(point_id="p-1", created_at=ts(NOW), size=2048)],
                        )
                    ]
                ),
            ),
        )
        self.restore = SimpleNamespace(
            ListRestoreJobs=rpc("ListRestoreJobs", lambda r: restore_pb2.ListRestoreJobsResponse()),
            CreateRestoreJob=rpc(
                "CreateRestoreJob", lambda r: restore_pb2.RestoreJob(restore_job_id="r-1", target_instance_id="i-1")
            ),
            CancelRestoreJob=rpc("CancelRestoreJob", lambda r: restore_pb2.RestoreJob(restore_job_id="r-1")),
        )
        self.billing = SimpleNamespace(
            GetOverview=rpc(
                "GetOverview",
                lambda r: billing_pb2.Overview(backed_up_instances=1, free_quota_bytes=100 << 30),
            ),
            ListLedger=rpc(
                "ListLedger",
                lambda r: billing_pb2.ListLedgerResponse(
                    zone="UTC+08:00", currency="USD", days=[billing_pb2.LedgerDay(day="2026-12-05", fee="0.00")]
                ),
            ),
            ListPlans=rpc("ListPlans", lambda r: billing_pb2.ListPlansResponse()),
        )
        self.alerts = SimpleNamespace(
            ListMessages=rpc(
                "ListMessages",
                lambda r: alerts_pb2.ListMessagesResponse(
                    unread=1,
                    messages=[
                        alerts_pb2.Message(
                            message_id="m-1",
                            kind=events_pb2.ALERT_KIND_BACKUP_FAILED,
                            title="Backup failed: web-1",
                            body="root missing",
                            instance_id="i-1",
                            occurred_at=ts(NOW),
                        )
                    ],
                ),
            ),
            MarkMessagesRead=rpc("MarkMessagesRead", lambda r: alerts_pb2.MarkMessagesReadResponse(marked=1)),
        )

        def whoami(request: Any) -> auth_pb2.WhoAmIResponse:
            token = self._last_token
            role = auth_pb2.ROLE_ADMIN if token == ADMIN else auth_pb2.ROLE_VIEWER
            return auth_pb2.WhoAmIResponse(
                subject=f"token:{token[:8]}", grants=[auth_pb2.Grant(account_id="acme", role=role)]
            )

        async def whoami_call(request: Any, *, metadata: tuple[tuple[str, str], ...], timeout: float) -> Any:  # noqa: ASYNC109 - gRPC's signature
            self._last_token = dict(metadata)["authorization"].removeprefix("Bearer ")
            return await rpc("WhoAmI", whoami)(request, metadata=metadata, timeout=timeout)

        self._last_token = ""
        self.tokens = SimpleNamespace(WhoAmI=whoami_call)


@pytest.fixture
async def console() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], FakeServices]]:
    services = FakeServices()
    root = web.Application()
    root.add_subapp(
        "/console",
        build_console(
            channels={},
            clock=FakeClock(NOW),
            secure_cookies=False,
            gateway="gw:1",
            services=services,
            sessions=SessionStore(),
        ),
    )
    async with TestClient(TestServer(root)) as client:
        yield client, services


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def login(client: TestClient[web.Request, web.Application], token: str) -> str:
    """Signs in; returns the session's CSRF token (from a page's form)."""
    response = await client.post("/console/login", data={"token": token}, allow_redirects=False)
    assert response.status == 303, await response.text()
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    page = await (await client.get("/console/instances")).text()
    found = CSRF.search(page)
    assert found is not None
    return found.group(1)


PAGES = [
    ("/console/", "All regions"),
    ("/console/?region=local", "Region local"),
    ("/console/instances", "web-1"),
    ("/console/instances?status=Paused", "match the filter"),
    ("/console/instances/i-1", "Backup history"),
    ("/console/instances/i-1/jobs", "40%"),
    ("/console/instances/i-1/restores", "No restore jobs"),
    ("/console/points/p-1/browse?path=etc", "hosts"),
    ("/console/points/p-1/restore", "Restore item"),
    ("/console/billing", "2026-12-05"),
    ("/console/messages", "Backup failed: web-1"),
    ("/console/search?pattern=*.yaml", "/etc/app/config.yaml"),
]


async def test_every_page_renders_for_an_admin_with_security_headers(console: Any) -> None:
    client, _ = console
    await login(client, ADMIN)
    for path, expected in PAGES:
        response = await client.get(path)
        text = await response.text()
        assert response.status == 200, (path, text)
        assert expected in text, path
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"
    detail = await (await client.get("/console/instances/i-1")).text()
    assert "Back up now" in detail and "Cancel backup" in detail and 'hx-trigger="every 2s"' in detail
    assert "18:00:00" in detail  # 10:00 UTC shown in the default UTC+8
    assert str(markupsafe.escape(views.NEXT_BACKUP_RULES)) in detail


async def test_the_overview_shows_admission_per_region_and_for_all(console: Any) -> None:
    client, services = console
    await login(client, ADMIN)
    page = await (await client.get("/console/?region=local")).text()
    region, everywhere = page.split("<h2>All regions</h2>")
    assert "Backups running</dt><dd>1</dd>" in region and "Waiting for a backup slot</dt><dd>0</dd>" in region
    assert "Backups running</dt><dd>4</dd>" in everywhere
    assert "Waiting for a backup slot</dt><dd>7<br><small>oldest since 2026-12-06 18:00:00" in everywhere
    assert "Concurrent backups cap (whole fleet)</dt><dd>40</dd>" in everywhere
    assert "one still waiting 6 h" in everywhere
    assert services.called.count("GetAdmission") == 2


async def test_unauthenticated_goes_to_login_and_a_bad_token_is_told(console: Any) -> None:
    client, _ = console
    response = await client.get("/console/instances", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/console/login?next=")
    refused = await client.post("/console/login", data={"token": "wrong"})
    assert refused.status == 401 and "the token is not valid" in await refused.text()


async def test_a_viewer_sees_no_mutating_control_and_a_forged_post_is_refused(console: Any) -> None:
    client, services = console
    csrf = await login(client, VIEWER)
    for path, _ in PAGES:
        text = await (await client.get(path)).text()
        for control in ("Back up now", "Pause backup", "Cancel backup", "Save settings", "Start restore", ">Cancel<"):
            assert control not in text, (path, control)
    services.called.clear()
    for path in ("/console/instances/i-1/backup", "/console/instances/i-1/cancel", "/console/jobs/j-1/cancel"):
        forged = await client.post(path, data={"csrf": csrf})
        assert forged.status == 403 and "can read account &#39;acme&#39; but not change it" in await forged.text()
    assert services.called == []  # refused before any service call


async def test_csrf_and_cross_site_posts_are_refused(console: Any) -> None:
    client, services = console
    csrf = await login(client, ADMIN)
    services.called.clear()
    assert (await client.post("/console/instances/i-1/backup", data={})).status == 403
    assert (await client.post("/console/instances/i-1/backup", data={"csrf": "x" + csrf})).status == 403
    cross = await client.post(
        "/console/instances/i-1/backup", data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status == 403 and services.called == []
    done = await client.post("/console/instances/i-1/backup", data={"csrf": csrf}, allow_redirects=False)
    assert done.status == 303 and services.called == ["RunBackupNow"]
    htmx = await client.post(
        "/console/instances/i-1/pause", headers={"X-CSRF-Token": csrf, "HX-Request": "true"}, allow_redirects=False
    )
    assert htmx.status == 200 and htmx.headers["HX-Redirect"] == "/console/instances/i-1"
    follow = await (await client.get("/console/instances/i-1")).text()
    assert "Backup paused" in follow


async def test_mutations_activate_settings_restore_and_preview(console: Any) -> None:
    client, services = console
    csrf = await login(client, ADMIN)
    activated = await client.post(
        "/console/activate", data={"csrf": csrf, "name": "db-1", "region": "local", "start_time": "02:30"}
    )
    text = await activated.text()
    assert activated.status == 200 and "strongroom-agent enroll --gateway gw:1 --token enroll-123" in text
    bad = await client.post("/console/instances/i-1/settings", data={"csrf": csrf, "start_time": "25:00"})
    assert bad.status == 400 and "HH:MM" in await bad.text()
    preview = await client.post(
        "/console/points/p-1/restore",
        data={"csrf": csrf, "items": "exclude", "paths": "etc/hosts", "preview": "1"},
    )
    text = await preview.text()
    assert "etc/app/config.yaml" in text and "etc/hosts</td>" not in text
    services.called.clear()
    created = await client.post(
        "/console/points/p-1/restore",
        data={"csrf": csrf, "items": "include", "paths": "etc/app", "path_choice": "other", "target_path": "/tmp/x"},
        allow_redirects=False,
    )
    assert created.status == 303 and services.called == ["CreateRestoreJob"]


async def test_a_service_error_is_a_readable_page_and_logout_ends_the_session(console: Any) -> None:
    client, _ = console
    csrf = await login(client, ADMIN)
    missing = await client.get("/console/instances/nope")
    assert missing.status == 404 and "instance &#39;nope&#39; not found" in await missing.text()
    assert (await client.post("/console/logout", data={"csrf": csrf}, allow_redirects=False)).status == 303
    assert (await client.get("/console/instances", allow_redirects=False)).status == 303


def test_sessions_expire_when_idle_and_are_bounded() -> None:
    store = SessionStore(idle=dt.timedelta(minutes=10), max_sessions=2)
    grants = (Grant("acme", "viewer"),)
    first = store.create("t1", "s", grants, NOW)
    assert store.get(first.session_id, NOW + dt.timedelta(minutes=9)) is first
    assert store.get(first.session_id, NOW + dt.timedelta(minutes=30)) is None
    for n in range(3):
        store.create(f"t{n}", "s", grants, NOW)
    assert len(store) == 2
    assert not first.can_mutate("acme") and first.csrf_ok(first.csrf) and not first.csrf_ok(None)


def test_views_formats() -> None:
    assert views.size(512) == "512 B" and views.size(1536) == "1.5 KiB"
    assert views.parse_minute_of_day("02:05") == 125
    with pytest.raises(ValueError, match="HH:MM"):
        views.parse_minute_of_day("2:5x")
    assert views.selected("etc/app/x", ["etc"], ["etc/hosts"]) and not views.selected("etc/hosts", [], ["etc/hosts"])
    assert not views.selected("etcetera", ["etc"], [])
    assert views.breadcrumbs("a/b") == [("/", ""), ("a", "a"), ("b", "a/b")]
    assert views.when(ts(NOW), views.zone_or_default("UTC")) == "2026-12-06 10:00:00"
    assert views.zone_or_default("not a zone") == views.zone_or_default(None)


def test_the_vendored_htmx_is_the_pinned_file() -> None:
    static = importlib.resources.files("strongroom_api.console") / "static"
    pin = json.loads((static / "htmx.json").read_text())
    script = (static / "htmx.min.js").read_bytes()
    assert pin["package"] == "htmx.org" and pin["integrity"].startswith("sha512-")
    assert hashlib.sha256(script).hexdigest() == pin["sha256"]
    assert (static / "htmx.LICENSE.txt").read_text().startswith(("BSD", "Zero-Clause BSD"))


async def test_the_edge_process_serves_the_console_beside_the_api(pki: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Mounted by the composition root on the HTTPS listener; the REST routes are untouched, and a
    service that cannot be reached is a readable sign-in error, not a traceback."""
    async with running_edge(settings_for(pki, BACKENDS), capsys) as address:
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        async with aiohttp.ClientSession(f"https://{address}") as session:
            async with session.get("/console", ssl=context, allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"] == "/console/"
            async with session.get("/console/login", ssl=context) as response:
                assert response.status == 200 and response.content_type == "text/html"
                assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
                assert 'name="token"' in await response.text()
            async with session.get("/console/static/htmx.min.js", ssl=context) as response:
                assert response.status == 200 and response.content_type == "text/javascript"
            async with session.post("/console/login", data={"token": "sr_x"}, ssl=context) as response:
                assert response.status == 503 and "the service is unavailable" in await response.text()
                assert "Set-Cookie" not in response.headers
            async with session.get("/v1/instances", ssl=context) as response:
                assert response.status == 401 and (await response.json())["error"]["code"] == "UNAUTHENTICATED"


async def test_times_are_shown_in_the_zone_the_user_chooses(console: Any) -> None:
    client, _ = console
    csrf = await login(client, ADMIN)
    chosen = await client.post(
        "/console/preferences", data={"csrf": csrf, "zone": "Europe/Berlin", "back": "/console/instances/i-1"}
    )
    text = await chosen.text()
    assert chosen.status == 200 and "Created (Europe/Berlin)" in text and "2026-12-06 11:00:00" in text
    bad = await client.post("/console/preferences", data={"csrf": csrf, "zone": "Mars/Base", "back": "//evil"})
    assert bad.url.path == "/console/" and "Zone not changed" in await bad.text()
