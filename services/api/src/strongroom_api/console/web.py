"""The console's web layer: sessions and CSRF on every request, rendering, errors as pages.

Everything under ``/console/`` is served by the aiohttp sub-application ``build_console``; pages
(``pages.py``) get a :class:`Ctx` — the user's session, the services, the chosen zone and account —
and return a response. Mutations are refused here for a viewer before any service is called, and
refused again by the service (ADR 0024), so a forged POST gets 403 either way.
"""

from __future__ import annotations

import datetime as dt
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import jinja2
from aiohttp import web
from strongroom_platform.clock import Clock

from strongroom_api.console import views
from strongroom_api.console.client import ConsoleError, Services
from strongroom_api.console.sessions import Session, SessionStore

log = logging.getLogger(__name__)

PREFIX = "/console"
SESSION_COOKIE = "sr_session"
ZONE_COOKIE = "sr_zone"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
Resp = TypeVar("Resp")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class Refused(Exception):
    """A request the console itself refuses (no session, bad CSRF, viewer mutation), with its status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Ctx:
    """One request of a signed-in user."""

    request: web.Request
    session: Session
    services: Services
    zone: dt.tzinfo
    account: str
    form: dict[str, list[str]]

    @property
    def can_mutate(self) -> bool:
        return self.session.can_mutate(self.account)

    async def call(self, method: Callable[..., Awaitable[Resp]], request: object) -> Resp:
        return await self.services.call(method, request, self.session.authorization)

    def require_mutate(self) -> None:
        if not self.can_mutate:
            raise Refused(
                403,
                f"your token can read account {self.account!r} but not change it (role: "
                f"{self.session.role(self.account) or 'none'}); sign in with an operator's or admin's token",
            )

    def field(self, name: str, default: str = "") -> str:
        values = self.form.get(name)
        return values[0] if values else default

    def fields(self, name: str) -> list[str]:
        return self.form.get(name, [])

    @property
    def htmx(self) -> bool:
        return self.request.headers.get("HX-Request") == "true"


Page = Callable[[Ctx], Awaitable[web.StreamResponse]]


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("strongroom_api.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        size=views.size,
        running_status=views.running_status,
        job_status=views.job_status,
        priority=views.priority,
        minute_of_day=views.minute_of_day,
        progress=views.progress,
        breadcrumbs=views.breadcrumbs,
        parent=views.parent,
        quote=urllib.parse.quote,
        PREFIX=PREFIX,
        ACTIVE_JOBS=views.ACTIVE_JOBS,
        NEXT_BACKUP_RULES=views.NEXT_BACKUP_RULES,
    )
    return env


def safe_back(value: str, default: str) -> str:
    """A redirect target inside the console only (no open redirect)."""
    if value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value and "\n" not in value:
        return value
    return default


class Console:
    """Sessions, rendering and the request guard of the console sub-application."""

    def __init__(
        self, *, services: Services, sessions: SessionStore, clock: Clock, secure_cookies: bool, gateway: str
    ) -> None:
        self.services, self.sessions, self.clock = services, sessions, clock
        self.secure_cookies, self.gateway = secure_cookies, gateway
        self.env = templates()

    def html(self, name: str, status: int = 200, **values: Any) -> web.Response:
        values.setdefault("session", None)
        values.setdefault("flash", [])
        body = self.env.get_template(name).render(**values)
        response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
        response.headers["Cache-Control"] = "no-store"
        return response

    def render(self, ctx: Ctx, name: str, status: int = 200, **values: Any) -> web.Response:
        flash = list(ctx.session.flash)
        ctx.session.flash.clear()
        return self.html(
            name,
            status,
            session=ctx.session,
            account=ctx.account,
            accounts=[g.account_id for g in ctx.session.grants],
            role=ctx.session.role(ctx.account),
            can_mutate=ctx.can_mutate,
            csrf=ctx.session.csrf,
            zone=views.zone_label(ctx.zone),
            when=lambda ts: views.when(ts, ctx.zone),
            when_ns=lambda ns: views.when_ns(ns, ctx.zone),
            flash=flash,
            current_url=ctx.request.path_qs,
            **values,
        )

    def redirect(self, ctx: Ctx, location: str, message: str | None = None) -> web.Response:
        """After a POST: back to a page (303; htmx follows ``HX-Redirect``), with a one-time notice."""
        if message:
            ctx.session.flash.append(message)
        if ctx.htmx:
            return web.Response(status=200, headers={"HX-Redirect": location})
        raise web.HTTPSeeOther(location)

    def set_session_cookie(self, response: web.StreamResponse, session_id: str) -> None:
        response.set_cookie(
            SESSION_COOKIE, session_id, path=PREFIX, httponly=True, secure=self.secure_cookies, samesite="Strict"
        )

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE), self.clock.now())

    async def ctx(self, request: web.Request) -> Ctx:
        session = self._session(request)
        if session is None:
            raise Refused(401, "sign in first")
        form: dict[str, list[str]] = {}
        if request.method == "POST":
            same_site = request.headers.get("Sec-Fetch-Site", "same-origin")
            if same_site not in ("same-origin", "none"):
                raise Refused(403, "a console form may only be sent from the console itself")
            posted = await request.post()
            for key, value in posted.items():
                if isinstance(value, str):
                    form.setdefault(key, []).append(value)
            presented = request.headers.get(CSRF_HEADER) or next(iter(form.get(CSRF_FIELD, [])), None)
            if not session.csrf_ok(presented):
                raise Refused(403, "the form is stale or was not sent by the console (CSRF check); reload the page")
        account = session.account_id if session.role(session.account_id) else session.grants[0].account_id
        return Ctx(
            request=request,
            session=session,
            services=self.services,
            zone=views.zone_or_default(request.cookies.get(ZONE_COOKIE)),
            account=account,
            form=form,
        )

    def page(self, handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """An aiohttp handler: the user's Ctx, then ``handler``; errors become pages with their status."""

        async def run(request: web.Request) -> web.StreamResponse:
            try:
                ctx = await self.ctx(request)
            except Refused as exc:
                if exc.status == 401:
                    if request.method == "GET" and request.headers.get("HX-Request") != "true":
                        raise web.HTTPSeeOther(f"{PREFIX}/login?next={urllib.parse.quote(request.path_qs)}") from None
                    return web.Response(status=401, headers={"HX-Redirect": f"{PREFIX}/login"}, text=exc.message)
                return self.html("error.html", exc.status, message=exc.message, session=None)
            try:
                return await handler(ctx)
            except (ConsoleError, Refused) as exc:
                if ctx.htmx and request.method == "POST":
                    return self.redirect(ctx, safe_back(ctx.field("back"), f"{PREFIX}/"), f"Refused: {exc.message}")
                return self.render(ctx, "error.html", exc.status, message=exc.message)

        return run


@web.middleware
async def guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Security headers on every answer; an unexpected exception is a generic page, logged;
    ``/console`` itself goes to ``/console/``."""
    try:
        if request.path == PREFIX:
            raise web.HTTPSeeOther(PREFIX + "/")
        response = await handler(request)
    except web.HTTPException as exc:  # redirects are raised: they get the headers too
        for key, value in SECURITY_HEADERS.items():
            exc.headers.setdefault(key, value)
        raise
    except Exception:
        log.exception("console %s %s failed", request.method, request.path)
        response = web.Response(
            status=500, text="internal error: the console could not show this page (see the edge's log)"
        )
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response
