"""The REST edge on the real stack (issue 12, ADR 0052): every capability class over HTTPS and JSON.

An HTTP client, the CA of the local PKI and bearer tokens only: activate (with an idempotency key),
register inventory and page through the instances, enroll the agent, back up now, list versions,
browse with pagination, search, restore a file, billing, messages, audit (paged), tokens and
verification; a viewer token is refused a mutation (403), an unknown id is 404, bad JSON is 400
with a clear message, no credential is 401.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from strongroom_platform.admin import create_admin_token
from strongroom_platform.certs import CA_CERT_FILE
from strongroom_testing.fixtures import PgLogins, S3Config
from test_backup_restore import Platform, eventually, running_platform, s3_settings, start_agent

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

DONE = {"JOB_STATUS_COMPLETE", "JOB_STATUS_PARTIAL_COMPLETE", "JOB_STATUS_FAILED"}


class Rest:
    """Calls the edge with one bearer token; returns (status, JSON body, headers)."""

    def __init__(self, session: aiohttp.ClientSession, context: ssl.SSLContext, token: str) -> None:
        self.session, self.context, self.token = session, context, token

    def as_(self, token: str) -> Rest:
        return Rest(self.session, self.context, token)

    async def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        all_headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        all_headers.update(headers or {})
        request = self.session.request(
            method, path, json=body, data=raw, params=params, headers=all_headers, ssl=self.context
        )
        async with request as response:
            payload = await response.json() if response.content_type == "application/json" else None
            return response.status, payload, response.headers.copy()  # names case-insensitive


@pytest.fixture
async def rest_platform(
    stack_kafka: str, pg_logins: PgLogins, s3_config: S3Config, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with running_platform(stack_kafka, pg_logins, tmp_path, s3_settings(s3_config), edge=True) as running:
        yield running


async def pages(rest: Rest, path: str, items: str, params: dict[str, str]) -> list[list[Any]]:
    """Every page of a paginated list, following ``next_page_token`` until it is empty."""
    found: list[list[Any]] = []
    token = ""
    while True:
        status, body, _ = await rest("GET", path, params={**params, **({"page_token": token} if token else {})})
        assert status == 200, body
        found.append(body[items])
        token = body["next_page_token"]
        if not token:
            return found
        assert len(found) < 50, "pagination does not end"


async def finished(rest: Rest, path: str) -> dict[str, Any]:
    """The job at ``path`` once it has finished (backup and restore jobs share the statuses)."""

    async def done() -> dict[str, Any] | None:
        _, current, _ = await rest("GET", path)
        return current if current["status"] in DONE else None

    return await eventually(f"{path} to finish", done, within=300)


async def test_every_capability_class_over_rest(rest_platform: Platform, tmp_path: Path) -> None:
    platform = rest_platform
    source = tmp_path / "source"
    (source / "etc/app").mkdir(parents=True)
    (source / "etc/app/config.yaml").write_text("listen: 0.0.0.0:8080\n")
    (source / "www").mkdir()
    for name in ("a", "b", "c", "d", "e"):
        (source / f"www/{name}.html").write_text(f"<h1>{name}</h1>\n" * 100)
    admin = await create_admin_token(platform.env["STRONGROOM_PG_MIGRATE_DSN"], "acme")
    context = ssl.create_default_context(cafile=str(platform.tls_dir / CA_CERT_FILE))
    base = f"https://{platform.stack.addresses['api']}"
    async with aiohttp.ClientSession(base) as session:
        rest = Rest(session, context, admin)

        # the document and the caller
        async with session.get("/openapi.yaml", ssl=context) as response:
            assert response.status == 200 and b"openapi: 3.1.0" in await response.read()
        status, me, _ = await rest("GET", "/v1/whoami")
        assert status == 200 and me["grants"] == [{"account_id": "acme", "role": "ROLE_ADMIN"}]

        # tokens: an admin makes a viewer token
        status, created, _ = await rest(
            "POST", "/v1/tokens", {"name": "viewer", "grants": [{"account_id": "acme", "role": "ROLE_VIEWER"}]}
        )
        assert status == 200, created
        viewer = rest.as_(created["secret"])

        # activate, once, whatever the retries
        activation = {
            "account_id": "acme",
            "name": "web-1",
            "region": "local",
            "settings": {"priority": "BACKUP_PRIORITY_HIGH", "daily_start_minute": 120, "roots": [str(source)]},
            "has_settings": True,
        }
        key = {"Idempotency-Key": str(uuid.uuid4())}
        status, activated, _ = await rest("POST", "/v1/instances:activate", activation, headers=key)
        assert status == 200, activated
        status, again, headers = await rest("POST", "/v1/instances:activate", activation, headers=key)
        assert status == 200 and headers["Idempotent-Replayed"] == "true" and again == activated
        instance_id = activated["instance"]["instance_id"]

        # inventory, then the instance list page by page
        hosts = [{"host_id": f"h-{i}", "name": f"db-{i}", "region": "local", "os": "linux"} for i in range(3)]
        status, registered, _ = await rest("POST", "/v1/inventory:register", {"account_id": "acme", "instances": hosts})
        assert status == 200 and len(registered["instances"]) == 3
        listed = await pages(rest, "/v1/instances", "instances", {"account_id": "acme", "page_size": "2"})
        assert len(listed) >= 2 and all(len(page) <= 2 for page in listed)
        ids = [instance["instance_id"] for page in listed for instance in page]
        assert len(ids) == len(set(ids)) == 4 and instance_id in ids

        # a viewer reads but cannot act; unknown ids, bad JSON and no credential
        assert (await viewer("GET", f"/v1/instances/{instance_id}"))[0] == 200
        status, refused, _ = await viewer("POST", f"/v1/instances/{instance_id}:backupNow")
        assert status == 403 and refused["error"]["code"] == "PERMISSION_DENIED", refused
        status, missing, _ = await rest("GET", "/v1/instances/no-such-instance")
        assert status == 404 and missing["error"]["code"] == "NOT_FOUND", missing
        bad = {"Content-Type": "application/json"}
        status, broken, _ = await rest("POST", "/v1/restoreJobs", raw=b'{"point_id": ', headers=bad)
        assert status == 400 and "not valid JSON" in broken["error"]["message"], broken
        status, anonymous, _ = await rest.as_("")("GET", "/v1/instances")
        assert status == 401 and anonymous["error"]["code"] == "UNAUTHENTICATED"

        agent = await start_agent(platform, activated["enrollment_token"], tmp_path / "agent-state")
        try:

            async def ready() -> bool:
                _, instance, _ = await rest("GET", f"/v1/instances/{instance_id}")
                return bool(instance["status"] == "RUNNING_STATUS_READY")

            await eventually("instance READY", ready)

            # backup now, and its job
            status, job, _ = await rest("POST", f"/v1/instances/{instance_id}:backupNow")
            assert status == 200, job

            final = await finished(rest, f"/v1/jobs/{job['job_id']}")
            assert final["status"] == "JOB_STATUS_COMPLETE", final
            status, jobs, _ = await rest("GET", f"/v1/instances/{instance_id}/jobs", params={"limit": "5"})
            assert status == 200 and jobs["jobs"][0]["job_id"] == job["job_id"]

            # versions, browse page by page, search
            async def browsable() -> dict[str, Any] | None:
                _, versions, _ = await rest("GET", f"/v1/instances/{instance_id}/versions")
                points = [p for v in versions["versions"] for p in v["points"]]
                return points[0] if points and all(p["browsable"] for p in points) else None

            point = await eventually("a browsable point", browsable)
            assert int(point["file_count"]) >= 6  # uint64: a string in the proto3 JSON mapping
            entries = await pages(
                rest, f"/v1/points/{point['point_id']}/entries", "entries", {"path": "www", "page_size": "2"}
            )
            names = sorted(entry["path"].rsplit("/", 1)[-1] for page in entries for entry in page)
            assert names == ["a.html", "b.html", "c.html", "d.html", "e.html"] and len(entries) == 3
            status, found, _ = await rest("GET", "/v1/files", params={"pattern": "*.yaml"})
            assert status == 200 and [hit["path"].rsplit("/", 1)[-1] for hit in found["hits"]] == ["config.yaml"], found

            # restore one file elsewhere
            target = tmp_path / "restored"
            target.mkdir()
            status, restore_job, _ = await rest(
                "POST",
                "/v1/restoreJobs",
                {
                    "point_id": point["point_id"],
                    "include_paths": ["etc/app/config.yaml"],
                    "target_path": str(target),
                    "conflict_policy": "CONFLICT_POLICY_OVERWRITE",
                },
            )
            assert status == 200, restore_job

            final_restore = await finished(rest, f"/v1/restoreJobs/{restore_job['restore_job_id']}")
            assert final_restore["status"] == "JOB_STATUS_COMPLETE", final_restore
            assert (target / "etc/app/config.yaml").read_text() == "listen: 0.0.0.0:8080\n"
            status, restores, _ = await rest("GET", "/v1/restoreJobs", params={"instance_id": instance_id})
            assert status == 200 and len(restores["jobs"]) == 1
        finally:
            await agent.stop()

        # billing
        status, overview, _ = await rest("GET", "/v1/billing/overview", params={"account_id": "acme"})
        assert status == 200 and "backed_up_capacity_bytes" in overview, overview
        plan = {"account_id": "acme", "gib_days": "100", "starts_on": "2026-01-01", "ends_on": "2026-12-31"}
        status, created_plan, _ = await rest("POST", "/v1/billing/plans", plan)
        assert status == 200, created_plan
        status, viewer_plan, _ = await viewer("POST", "/v1/billing/plans", plan)
        assert status == 403, viewer_plan
        status, plans, etag_headers = await rest("GET", "/v1/billing/plans", params={"account_id": "acme"})
        assert status == 200 and [p["plan_id"] for p in plans["plans"]] == [created_plan["plan_id"]]
        not_modified = {"If-None-Match": etag_headers["ETag"]}
        assert (await rest("GET", "/v1/billing/plans", params={"account_id": "acme"}, headers=not_modified))[0] == 304
        status, ledger, _ = await rest("GET", "/v1/billing/ledger", params={"account_id": "acme"})
        assert status == 200 and ledger["currency"], ledger

        # messages and alerts, verification
        status, messages, _ = await rest("GET", "/v1/messages", params={"account_id": "acme", "page_size": "10"})
        assert status == 200 and "unread" in messages, messages
        status, recoverability, _ = await rest("GET", "/v1/recoverability", params={"account_id": "acme"})
        assert status == 200, recoverability

        # the audit trail, paged: the REST mutations are there under the admin token's subject
        async def audited() -> list[dict[str, Any]] | None:
            found = await pages(rest, "/v1/audit/events", "events", {"account_id": "acme", "page_size": "3"})
            events = [event for page in found for event in page]
            methods = {event["method"].rsplit("/", 1)[-1] for event in events}
            wanted = {"ActivateBackup", "RunBackupNow", "CreateRestoreJob", "CreatePlan"}
            return events if wanted <= methods else None

        events = await eventually("audit records of the REST calls", audited)
        refusals = [e for e in events if e["result_code"] == "PERMISSION_DENIED"]
        assert refusals and all(e["subject"] != me["subject"] for e in refusals)
