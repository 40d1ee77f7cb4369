"""The web console in a real Chromium over the real stack and a real agent (issue 12, ADR 0054).

Log in with an API token, activate an instance (the install command is shown), enroll the agent,
back up now and watch the job's progress, browse the point, restore one file through the wizard
(preview first) and see the restore job complete; a failed backup shows its error and its alert;
a viewer's token gets no mutating control, and a forged POST with its session is refused 403.
Every page is saved as a screenshot in the artifacts directory.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Dialog, Locator, Page, Playwright, async_playwright, expect
from strongroom_platform.admin import create_admin_token
from strongroom_platform.certs import CA_CERT_FILE, pair_paths, spki_sha256
from strongroom_testing.fixtures import PgLogins, S3Config
from test_backup_restore import Platform, running_platform, s3_settings, start_agent

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(420)]

WAIT_MS = 120_000


@pytest.fixture
async def console_platform(
    stack_kafka: str, pg_logins: PgLogins, s3_config: S3Config, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with running_platform(stack_kafka, pg_logins, tmp_path, s3_settings(s3_config), edge=True) as running:
        yield running


class Shots:
    """Numbered full-page screenshots, one a page visited."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.count = directory, 0

    async def __call__(self, page: Page, name: str) -> None:
        self.count += 1
        await page.screenshot(path=str(self.directory / f"{self.count:02d}-{name}.png"), full_page=True)


async def sign_in(page: Page, base: str, token: str) -> None:
    await page.goto(f"{base}/console/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Backup overview")).to_be_visible()


async def viewer_token(platform: Platform, admin: str) -> str:
    context = ssl.create_default_context(cafile=str(platform.tls_dir / CA_CERT_FILE))
    body = {"name": "viewer", "grants": [{"account_id": "acme", "role": "ROLE_VIEWER"}]}
    headers = {"Authorization": f"Bearer {admin}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://{platform.stack.addresses['api']}/v1/tokens", json=body, headers=headers, ssl=context
        ) as response,
    ):
        assert response.status == 200, await response.text()
        secret: str = (await response.json())["secret"]
        return secret


async def reload_until(page: Page, locator: Locator, within: float = 120.0) -> None:
    """Reload until ``locator`` is on the page (for state the page does not poll)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if await locator.count() > 0:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{page.url} never showed {locator}")
        await asyncio.sleep(1.0)
        await page.reload()


async def launch(playwright: Playwright, chromium: str, platform: Platform) -> Browser:
    """Debian's chromium, trusting exactly the edge's certificate (its SPKI pin), nothing else."""
    cert, _ = pair_paths(platform.tls_dir, "api")
    pin = spki_sha256(cert.read_bytes())
    return await playwright.chromium.launch(
        executable_path=chromium, args=["--no-sandbox", f"--ignore-certificate-errors-spki-list={pin}"]
    )


async def test_console_in_a_real_browser(
    console_platform: Platform, chromium: str, artifacts: Path, tmp_path: Path
) -> None:
    platform = console_platform
    source = tmp_path / "source"
    (source / "etc/app").mkdir(parents=True)
    (source / "etc/app/config.yaml").write_text("listen: 0.0.0.0:8080\n")
    (source / "www").mkdir()
    for name in ("index", "about", "contact"):
        (source / f"www/{name}.html").write_text(f"<h1>{name}</h1>\n" * 2000)
    restored = tmp_path / "restored"
    restored.mkdir()
    admin = await create_admin_token(platform.env["STRONGROOM_PG_MIGRATE_DSN"], "acme")
    viewer = await viewer_token(platform, admin)
    base = f"https://{platform.stack.addresses['api']}"
    shot = Shots(artifacts)
    playwright = await async_playwright().start()
    browser = await launch(playwright, chromium, platform)
    agent = None
    try:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(WAIT_MS)

        async def accept(dialog: Dialog) -> None:
            await dialog.accept()

        page.on("dialog", accept)
        await page.goto(f"{base}/console/")
        await shot(page, "login")
        await sign_in(page, base, admin)
        await shot(page, "overview-empty")

        # activate: the install command carries the one-time enrollment token
        await page.get_by_role("link", name="Activate").click()
        await page.get_by_label("Instance name").fill("web-1")
        await page.get_by_label("Region").fill("local")
        await page.get_by_label("Backup priority").select_option("high")
        await page.get_by_label("Backup roots").fill(str(source))
        await shot(page, "activate-form")
        await page.get_by_role("button", name="Activate").click()
        command = await page.locator("#install-command").inner_text()
        token = re.search(r"--token (\S+)", command)
        assert token is not None and "strongroom-agent enroll --gateway" in command, command
        await shot(page, "activate-done")
        agent = await start_agent(platform, token.group(1), tmp_path / "agent-state")

        await page.get_by_role("link", name="View details").click()
        await reload_until(page, page.locator("#running-status", has_text="Ready"))
        instance_url = page.url
        await shot(page, "instance-ready")

        # back up now (confirmation accepted); the jobs table polls until the job completes
        await page.get_by_role("button", name="Back up now").click()
        await expect(page.get_by_role("status")).to_contain_text("Backup job")
        job = page.locator("tr.job").first
        await expect(job.locator(".job-status")).to_have_text(re.compile("Created|Queued|Running|Complete"))
        await expect(job).to_contain_text("files scanned")
        await shot(page, "backup-progress")
        await expect(job.locator(".job-status")).to_have_text("Complete", timeout=WAIT_MS * 2)
        await shot(page, "backup-complete")

        # versions, then browse the point
        await reload_until(page, page.get_by_role("link", name="Browse"))
        await page.get_by_role("link", name="Browse").first.click()
        await page.locator("a.dir", has_text="etc").click()
        await page.locator("a.dir", has_text="app").click()
        row = page.locator("tr", has_text="config.yaml")
        await expect(row).to_contain_text("21 B")
        await shot(page, "browse")

        # the restore wizard: include one file, another path, preview, then start
        await page.get_by_role("link", name="Restore…").click()
        await page.get_by_label("Include specified files").check()
        await page.get_by_label("Files or directories").fill("etc/app/config.yaml")
        await page.get_by_label("Other path (must exist").check()
        await page.get_by_label("Other path (absolute)").fill(str(restored))
        await page.get_by_label("Overwrite the file").check()
        await page.get_by_role("button", name="Preview files").click()
        preview = page.locator("#preview")
        await expect(preview).to_contain_text("etc/app/config.yaml")
        await expect(preview).not_to_contain_text("index.html")
        await shot(page, "restore-preview")
        await page.get_by_role("button", name="Start restore").click()
        await expect(page.get_by_role("status")).to_contain_text("Restore job")
        restore_row = page.locator("tr.restore").first
        await expect(restore_row.locator(".restore-status")).to_have_text("Complete", timeout=WAIT_MS * 2)
        await shot(page, "restore-complete")
        assert (restored / "etc/app/config.yaml").read_text() == "listen: 0.0.0.0:8080\n"

        for path, name, expected in (
            ("/console/", "overview", "All regions"),
            ("/console/?region=local", "overview-region", "Region local"),
            ("/console/instances", "instances", "web-1"),
            ("/console/search?pattern=*.yaml", "search", "config.yaml"),
            ("/console/billing", "billing", "Daily ledger"),
        ):
            await page.goto(base + path)
            await expect(page.locator("main")).to_contain_text(expected)
            await shot(page, name)

        # a failing backup: a backup root that does not exist; the job fails and its alert arrives
        await page.goto(instance_url)
        await page.get_by_label("Backup roots").fill(str(tmp_path / "no-such-root"))
        await page.get_by_role("button", name="Save settings").click()
        await expect(page.get_by_role("status")).to_contain_text("Settings saved")
        await page.get_by_role("button", name="Back up now").click()
        failed = page.locator("tr.job").first
        await expect(failed.locator(".job-status")).to_have_text("Failed", timeout=WAIT_MS * 2)
        await expect(failed.locator(".error")).not_to_be_empty()
        await shot(page, "backup-failed")
        await page.goto(f"{base}/console/messages")
        await reload_until(page, page.get_by_text("Backup failed: web-1"))
        await shot(page, "messages")

        # a viewer: reads everything, no mutating control, and a forged POST is refused
        viewer_page = await browser.new_page(viewport={"width": 1280, "height": 900})
        viewer_page.set_default_timeout(WAIT_MS)
        await sign_in(viewer_page, base, viewer)
        await viewer_page.goto(instance_url)
        await expect(viewer_page.get_by_role("heading", name=re.compile("web-1"))).to_be_visible()
        for label in ("Back up now", "Pause backup", "Cancel backup", "Save settings"):
            assert await viewer_page.get_by_role("button", name=label).count() == 0, label
        assert await viewer_page.get_by_role("link", name="Activate").count() == 0
        await shot(viewer_page, "viewer-instance")
        csrf = await viewer_page.locator("form.logout input[name=csrf]").get_attribute("value")
        assert csrf
        # the forged POST: from the viewer's own page, with its session cookie and its valid CSRF token
        status, text = await viewer_page.evaluate(
            """async ([url, csrf]) => {
                const answer = await fetch(url, {method: "POST", body: new URLSearchParams({csrf})});
                return [answer.status, await answer.text()];
            }""",
            [f"{instance_url}/backup", csrf],
        )
        assert status == 403 and "can read account" in text, (status, text)
        await viewer_page.goto(f"{base}/console/points/none/restore")
        await shot(viewer_page, "viewer-error")
        await expect(viewer_page.locator("main")).to_contain_text("not found")
    finally:
        if agent is not None:
            await agent.stop()
        await browser.close()
        await playwright.stop()
