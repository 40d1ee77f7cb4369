"""The console's pages: each converts the form, calls the services as the user, renders a template."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Callable

from aiohttp import web
from strongroom.agent.v1 import gateway_pb2
from strongroom.alerts.v1 import alerts_pb2
from strongroom.billing.v1 import billing_pb2
from strongroom.catalog.v1 import catalog_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.restore.v1 import restore_pb2
from strongroom.scheduler.v1 import scheduler_pb2

from strongroom_api.console import views
from strongroom_api.console.client import ConsoleError
from strongroom_api.console.web import PREFIX, Console, Ctx, Page, Refused, safe_back

PREVIEW_LIMIT = 200  # entries shown by the restore preview
PREVIEW_CALLS = 50  # directories it may browse
INSTANCE_PAGE = 200
BULK_CONCURRENCY = 8  # service calls at once for a bulk action
ACTION_NAMES = {"backup": "Back up now", "pause": "Pause backup", "resume": "Resume backup"}


async def _instances(ctx: Ctx, region: str = "") -> list[scheduler_pb2.Instance]:
    request = scheduler_pb2.ListInstancesRequest(account_id=ctx.account, region=region, page_size=INSTANCE_PAGE)
    listed = await ctx.call(ctx.services.scheduler.ListInstances, request)
    return list(listed.instances)


def register(app: web.Application, console: Console) -> None:  # noqa: C901 - one closure per page
    """Add every page's route to the console sub-application."""
    s = console

    def get(path: str) -> Callable[[Page], Page]:
        def add(handler: Page) -> Page:
            app.router.add_get(path, console.page(handler))
            return handler

        return add

    def post(path: str) -> Callable[[Page], Page]:
        def add(handler: Page) -> Page:
            app.router.add_post(path, console.page(handler))
            return handler

        return add

    @get("/")
    async def overview(ctx: Ctx) -> web.StreamResponse:
        instances = await _instances(ctx)
        regions = sorted({i.region for i in instances if i.region})
        # The seed: a region is selected at the top of the page (the first one until the user chooses).
        region = ctx.request.query.get("region", regions[0] if regions else "")
        # billing's figures and, from the scheduler, the admission figures (ADR 0058), for the region and all
        admission = ctx.services.scheduler.GetAdmission
        here, everywhere, admitted_here, admitted = await asyncio.gather(
            ctx.call(
                ctx.services.billing.GetOverview, billing_pb2.GetOverviewRequest(account_id=ctx.account, region=region)
            ),
            ctx.call(ctx.services.billing.GetOverview, billing_pb2.GetOverviewRequest(account_id=ctx.account)),
            ctx.call(admission, scheduler_pb2.GetAdmissionRequest(account_id=ctx.account, region=region)),
            ctx.call(admission, scheduler_pb2.GetAdmissionRequest(account_id=ctx.account)),
        )
        return s.render(
            ctx,
            "overview.html",
            region=region,
            regions=regions,
            here=here,
            everywhere=everywhere,
            admitted_here=admitted_here,
            admitted=admitted,
        )

    @get("/instances")
    async def instances(ctx: Ctx) -> web.StreamResponse:
        region, status, text = (ctx.request.query.get(k, "") for k in ("region", "status", "q"))
        everything = await _instances(ctx)
        regions = sorted({i.region for i in everything if i.region})
        shown = [
            i
            for i in everything
            if (not region or i.region == region)
            and (not status or views.running_status(i.status)[0] == status)
            and (not text or text.lower() in f"{i.name} {i.instance_id} {i.hostname}".lower())
        ]
        return s.render(
            ctx,
            "instances.html",
            instances=shown,
            regions=regions,
            region=region,
            status_filter=status,
            q=text,
            statuses=list(views.STATUS_FILTERS),
        )

    @post("/instances/bulk")
    async def bulk(ctx: Ctx) -> web.StreamResponse:
        ctx.require_mutate()
        action, ids = ctx.field("action"), ctx.fields("instance_id")[:INSTANCE_PAGE]
        if action not in ("backup", "pause", "resume") or not ids:
            raise Refused(400, "choose an action (back up now, pause, resume) and at least one instance")
        limit = asyncio.Semaphore(BULK_CONCURRENCY)

        async def one(instance_id: str) -> str | None:
            """None when done, else why the service refused it."""
            async with limit:
                try:
                    if action == "backup":
                        request = scheduler_pb2.RunBackupNowRequest(instance_id=instance_id)
                        await ctx.call(ctx.services.scheduler.RunBackupNow, request)
                    else:
                        method = (
                            ctx.services.scheduler.PauseBackup
                            if action == "pause"
                            else ctx.services.scheduler.ResumeBackup
                        )
                        await ctx.call(method, scheduler_pb2.InstanceRef(instance_id=instance_id))
                except ConsoleError as exc:
                    return f"{instance_id}: {exc.message}"
                return None

        failed = [r for r in await asyncio.gather(*(one(i) for i in ids)) if r is not None]
        note = f"{ACTION_NAMES[action]}: {len(ids) - len(failed)} of {len(ids)} instances done" + (
            f"; refused: {'; '.join(failed)}" if failed else ""
        )
        return s.redirect(ctx, f"{PREFIX}/instances", note)

    @get("/activate")
    async def activate_form(ctx: Ctx) -> web.StreamResponse:
        return s.render(ctx, "activate.html", activated=None, command="")

    @post("/activate")
    async def activate(ctx: Ctx) -> web.StreamResponse:
        ctx.require_mutate()
        name, region = ctx.field("name").strip(), ctx.field("region").strip()
        if not name or not region:
            raise Refused(400, "the instance needs a name and a region")
        settings = scheduler_pb2.BackupSettings(
            priority=common_pb2.BACKUP_PRIORITY_HIGH
            if ctx.field("priority") == "high"
            else common_pb2.BACKUP_PRIORITY_LOW,
            keep_latest_version=ctx.field("keep_latest") == "on",
            roots=[r.strip() for r in ctx.field("roots").splitlines() if r.strip()],
        )
        specified = ctx.field("start_time").strip()
        if specified:
            try:
                settings.daily_start_minute = views.parse_minute_of_day(specified)
            except ValueError as exc:
                raise Refused(400, str(exc)) from None
        # Without a specified time the service picks a random one in 00:00-06:00 (the seed's
        # default); the other settings are then set right after.
        request = scheduler_pb2.ActivateBackupRequest(
            account_id=ctx.account, name=name, region=region, settings=settings, has_settings=bool(specified)
        )
        activated = await ctx.call(ctx.services.scheduler.ActivateBackup, request)
        if not specified and (
            settings.roots or settings.priority == common_pb2.BACKUP_PRIORITY_HIGH or not settings.keep_latest_version
        ):
            update = scheduler_pb2.UpdateSettingsRequest(
                instance_id=activated.instance.instance_id,
                settings=settings,
                update_mask=["priority", "keep_latest_version", "roots"],
            )
            activated.instance.CopyFrom(await ctx.call(ctx.services.scheduler.UpdateSettings, update))
        command = shlex.join(
            ["strongroom-agent", "enroll", "--gateway", s.gateway, "--token", activated.enrollment_token]
        )
        return s.render(ctx, "activate.html", activated=activated, command=command)

    @get("/instances/{instance_id}")
    async def instance(ctx: Ctx) -> web.StreamResponse:
        instance_id = ctx.request.match_info["instance_id"]
        found, jobs, versions, restores = await asyncio.gather(
            ctx.call(ctx.services.scheduler.GetInstance, scheduler_pb2.GetInstanceRequest(instance_id=instance_id)),
            ctx.call(
                ctx.services.scheduler.ListJobs, scheduler_pb2.ListJobsRequest(instance_id=instance_id, page_size=20)
            ),
            ctx.call(
                ctx.services.catalog.ListVersions,
                catalog_pb2.ListVersionsRequest(instance_id=instance_id, page_size=30),
            ),
            ctx.call(
                ctx.services.restore.ListRestoreJobs,
                restore_pb2.ListRestoreJobsRequest(instance_id=instance_id, page_size=20),
            ),
        )
        return s.render(
            ctx,
            "instance.html",
            instance=found,
            jobs=jobs.jobs,
            versions=versions.versions,
            restores=restores.jobs,
        )

    @get("/instances/{instance_id}/jobs")
    async def jobs_fragment(ctx: Ctx) -> web.StreamResponse:
        instance_id = ctx.request.match_info["instance_id"]
        jobs = await ctx.call(
            ctx.services.scheduler.ListJobs, scheduler_pb2.ListJobsRequest(instance_id=instance_id, page_size=20)
        )
        return s.render(ctx, "jobs_fragment.html", jobs=jobs.jobs, instance_id=instance_id)

    @get("/instances/{instance_id}/restores")
    async def restores_fragment(ctx: Ctx) -> web.StreamResponse:
        instance_id = ctx.request.match_info["instance_id"]
        request = restore_pb2.ListRestoreJobsRequest(instance_id=instance_id, page_size=20)
        restores = await ctx.call(ctx.services.restore.ListRestoreJobs, request)
        return s.render(ctx, "restores_fragment.html", restores=restores.jobs, instance_id=instance_id)

    @post("/instances/{instance_id}/{action:backup|pause|resume|cancel}")
    async def instance_action(ctx: Ctx) -> web.StreamResponse:
        ctx.require_mutate()
        instance_id, action = ctx.request.match_info["instance_id"], ctx.request.match_info["action"]
        ref = scheduler_pb2.InstanceRef(instance_id=instance_id)
        if action == "backup":
            job = await ctx.call(
                ctx.services.scheduler.RunBackupNow, scheduler_pb2.RunBackupNowRequest(instance_id=instance_id)
            )
            note = f"Backup job {job.job_id} requested."
        else:
            method = {
                "pause": ctx.services.scheduler.PauseBackup,
                "resume": ctx.services.scheduler.ResumeBackup,
                "cancel": ctx.services.scheduler.CancelBackup,
            }[action]
            changed = await ctx.call(method, ref)
            note = f"Backup {action}d: the instance is now {views.running_status(changed.status)[0]}."
        return s.redirect(ctx, f"{PREFIX}/instances/{instance_id}", note)

    @post("/instances/{instance_id}/settings")
    async def settings(ctx: Ctx) -> web.StreamResponse:
        ctx.require_mutate()
        instance_id = ctx.request.match_info["instance_id"]
        try:
            minute = views.parse_minute_of_day(ctx.field("start_time"))
        except ValueError as exc:
            raise Refused(400, str(exc)) from None
        roots = [r.strip() for r in ctx.field("roots").splitlines() if r.strip()]
        request = scheduler_pb2.UpdateSettingsRequest(
            instance_id=instance_id,
            settings=scheduler_pb2.BackupSettings(
                priority=common_pb2.BACKUP_PRIORITY_HIGH
                if ctx.field("priority") == "high"
                else common_pb2.BACKUP_PRIORITY_LOW,
                daily_start_minute=minute,
                keep_latest_version=ctx.field("keep_latest") == "on",
                roots=roots,
            ),
            update_mask=["priority", "daily_start_minute", "keep_latest_version", "roots"],
        )
        await ctx.call(ctx.services.scheduler.UpdateSettings, request)
        return s.redirect(ctx, f"{PREFIX}/instances/{instance_id}", "Settings saved.")

    @post("/jobs/{job_id}/cancel")
    async def cancel_job(ctx: Ctx) -> web.StreamResponse:
        ctx.require_mutate()
        job = await ctx.call(
            ctx.services.scheduler.CancelJob, scheduler_pb2.GetJobRequest(job_id=ctx.request.match_info["job_id"])
        )
        back = safe_back(ctx.field("back"), f"{PREFIX}/instances/{job.instance_id}")
        return s.redirect(ctx, back, f"Backup job {job.job_id}: {views.job_status(job.status)[0]}.")

    @post("/restores/{restore_job_id}/cancel")
    async def cancel_restore(ctx: Ctx) -> web.StreamResponse:
        ctx.require_mutate()
        request = restore_pb2.GetRestoreJobRequest(restore_job_id=ctx.request.match_info["restore_job_id"])
        job = await ctx.call(ctx.services.restore.CancelRestoreJob, request)
        back = safe_back(ctx.field("back"), f"{PREFIX}/instances/{job.target_instance_id}")
        return s.redirect(ctx, back, f"Restore job {job.restore_job_id}: {views.job_status(job.status)[0]}.")

    @get("/points/{point_id}/browse")
    async def browse(ctx: Ctx) -> web.StreamResponse:
        point_id = ctx.request.match_info["point_id"]
        path = ctx.request.query.get("path", "").strip("/")
        token = ctx.request.query.get("page_token", "")
        point, listed = await asyncio.gather(
            ctx.call(ctx.services.catalog.GetPoint, catalog_pb2.GetPointRequest(point_id=point_id)),
            ctx.call(
                ctx.services.catalog.BrowsePoint,
                catalog_pb2.BrowsePointRequest(point_id=point_id, path=path, page_size=200, page_token=token),
            ),
        )
        return s.render(
            ctx,
            "browse.html",
            point=point,
            path=path,
            entries=listed.entries,
            next_token=listed.next_page_token,
            DIRECTORY=common_pb2.ENTRY_TYPE_DIRECTORY,
            SYMLINK=common_pb2.ENTRY_TYPE_SYMLINK,
        )

    async def _preview(
        ctx: Ctx, point_id: str, include: list[str], exclude: list[str]
    ) -> tuple[list[common_pb2.FileEntry], bool]:
        """The files a restore with these filters would restore, walked from the catalog (the restore
        service has no dry run): at most PREVIEW_LIMIT entries from at most PREVIEW_CALLS directories."""
        found: list[common_pb2.FileEntry] = []
        pending = [views.parent(p) for p in include] or [""]
        seen: set[str] = set()
        calls = 0
        while pending and len(found) < PREVIEW_LIMIT and calls < PREVIEW_CALLS:
            directory = pending.pop(0)
            if directory in seen:
                continue
            seen.add(directory)
            calls += 1
            listed = await ctx.call(
                ctx.services.catalog.BrowsePoint,
                catalog_pb2.BrowsePointRequest(point_id=point_id, path=directory, page_size=1000),
            )
            for entry in listed.entries:
                below_include = not include or any(
                    views.under(p, entry.path) or views.under(entry.path, p) for p in include
                )
                if (
                    entry.type == common_pb2.ENTRY_TYPE_DIRECTORY
                    and below_include
                    and not any(views.under(entry.path, p) for p in exclude)
                ):
                    pending.append(entry.path)
                if entry.type != common_pb2.ENTRY_TYPE_DIRECTORY and views.selected(entry.path, include, exclude):
                    found.append(entry)
        return found[:PREVIEW_LIMIT], bool(pending) or len(found) > PREVIEW_LIMIT

    @get("/points/{point_id}/restore")
    async def restore_form(ctx: Ctx) -> web.StreamResponse:
        point_id = ctx.request.match_info["point_id"]
        point = await ctx.call(ctx.services.catalog.GetPoint, catalog_pb2.GetPointRequest(point_id=point_id))
        targets = [
            i for i in await _instances(ctx) if i.agent_enrolled and i.status != scheduler_pb2.RUNNING_STATUS_STOPPED
        ]
        return s.render(ctx, "restore.html", point=point, targets=targets, preview=None, truncated=False, form=ctx.form)

    @post("/points/{point_id}/restore")
    async def restore(ctx: Ctx) -> web.StreamResponse:
        point_id = ctx.request.match_info["point_id"]
        mode = ctx.field("items", "all")
        paths = views.split_paths(ctx.field("paths"))
        if mode != "all" and not paths:
            raise Refused(400, "name at least one file or directory to include or exclude, one a line")
        include, exclude = (paths, []) if mode == "include" else ([], paths) if mode == "exclude" else ([], [])
        if ctx.field("preview"):
            point = await ctx.call(ctx.services.catalog.GetPoint, catalog_pb2.GetPointRequest(point_id=point_id))
            targets = [
                i
                for i in await _instances(ctx)
                if i.agent_enrolled and i.status != scheduler_pb2.RUNNING_STATUS_STOPPED
            ]
            preview, truncated = await _preview(ctx, point_id, include, exclude)
            return s.render(
                ctx, "restore.html", point=point, targets=targets, preview=preview, truncated=truncated, form=ctx.form
            )
        ctx.require_mutate()
        other_instance = ctx.field("destination") == "other"
        other_path = ctx.field("path_choice") == "other"
        request = restore_pb2.CreateRestoreJobRequest(
            point_id=point_id,
            target_instance_id=ctx.field("target_instance_id") if other_instance else "",
            include_paths=include,
            exclude_paths=exclude,
            target_path=ctx.field("target_path").strip() if other_path else "",
            conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE
            if ctx.field("conflict") == "overwrite"
            else gateway_pb2.CONFLICT_POLICY_SKIP,
            confirm_original_path_on_other_instance=other_instance
            and not other_path
            and ctx.field("confirm_original") == "on",
        )
        job = await ctx.call(ctx.services.restore.CreateRestoreJob, request)
        return s.redirect(
            ctx, f"{PREFIX}/instances/{job.target_instance_id}#restores", f"Restore job {job.restore_job_id} created."
        )

    @get("/billing")
    async def billing(ctx: Ctx) -> web.StreamResponse:
        overview, ledger, plans = await asyncio.gather(
            ctx.call(ctx.services.billing.GetOverview, billing_pb2.GetOverviewRequest(account_id=ctx.account)),
            ctx.call(
                ctx.services.billing.ListLedger, billing_pb2.ListLedgerRequest(account_id=ctx.account, page_size=31)
            ),
            ctx.call(ctx.services.billing.ListPlans, billing_pb2.ListPlansRequest(account_id=ctx.account)),
        )
        return s.render(ctx, "billing.html", overview=overview, ledger=ledger, plans=plans.plans)

    @get("/messages")
    async def messages(ctx: Ctx) -> web.StreamResponse:
        unread_only = ctx.request.query.get("unread") == "1"
        request = alerts_pb2.ListMessagesRequest(account_id=ctx.account, unread_only=unread_only, page_size=100)
        listed = await ctx.call(ctx.services.alerts.ListMessages, request)
        kinds = {
            value: name.removeprefix("ALERT_KIND_").replace("_", " ").title()
            for name, value in events_pb2.AlertKind.items()
        }
        return s.render(
            ctx, "messages.html", messages=listed.messages, unread=listed.unread, unread_only=unread_only, kinds=kinds
        )

    @post("/messages/read")
    async def mark_read(ctx: Ctx) -> web.StreamResponse:
        ctx.require_mutate()
        ids = ctx.fields("message_id")
        request = alerts_pb2.MarkMessagesReadRequest(account_id=ctx.account, message_ids=ids, all=not ids)
        marked = await ctx.call(ctx.services.alerts.MarkMessagesRead, request)
        return s.redirect(ctx, f"{PREFIX}/messages", f"{marked.marked} messages marked read.")

    @get("/search")
    async def search(ctx: Ctx) -> web.StreamResponse:
        pattern = ctx.request.query.get("pattern", "").strip()
        hits: list[catalog_pb2.FileHit] = []
        if pattern:
            request = catalog_pb2.ListFilesRequest(pattern=pattern, ignore_case=True, page_size=100)
            hits = list((await ctx.call(ctx.services.catalog.ListFiles, request)).hits)
        return s.render(ctx, "search.html", pattern=pattern, hits=hits)
