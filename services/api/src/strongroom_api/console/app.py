"""The console sub-application: login, logout, preferences, static files, and the pages."""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping

import grpc
from aiohttp import web
from strongroom.auth.v1 import auth_pb2
from strongroom_platform.clock import Clock
from strongroom_zones import parse_zone, zone_name

from strongroom_api.console import pages
from strongroom_api.console.client import ROLE_NAMES, ConsoleError, Services
from strongroom_api.console.sessions import Grant, SessionStore
from strongroom_api.console.web import PREFIX, SESSION_COOKIE, ZONE_COOKIE, Console, Ctx, guard, safe_back

STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain", ".svg": "image/svg+xml"}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The files under ``static/`` (read once at build, not at import)."""
    root = importlib.resources.files("strongroom_api.console") / "static"
    files: dict[str, tuple[bytes, str]] = {}
    for item in root.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in STATIC_TYPES:
            files[item.name] = (item.read_bytes(), STATIC_TYPES[suffix])
    return files


def build_console(  # noqa: C901 - one small closure per route
    *,
    channels: Mapping[str, grpc.aio.Channel],
    clock: Clock,
    secure_cookies: bool,
    gateway: str,
    timeout: float = 30.0,
    sessions: SessionStore | None = None,
    services: Services | None = None,
) -> web.Application:
    """The aiohttp application to mount at ``/console/``; ``services`` (tests) replaces the stubs on ``channels``."""
    console = Console(
        services=services or Services(channels, timeout=timeout),
        sessions=sessions or SessionStore(),
        clock=clock,
        secure_cookies=secure_cookies,
        gateway=gateway,
    )
    static = _static_files()
    app = web.Application(middlewares=[guard])

    async def login_form(request: web.Request) -> web.StreamResponse:
        return console.html("login.html", session=None, next=request.query.get("next", ""), message="")

    async def login(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return console.html("login.html", 403, session=None, next="", message="sign in from the console's own page")
        form = await request.post()
        token = str(form.get("token", "")).strip()
        target = safe_back(str(form.get("next", "")), f"{PREFIX}/")
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        if not token:
            return console.html("login.html", 400, session=None, next=target, message="paste an API token")
        try:
            me = await console.services.call(
                console.services.tokens.WhoAmI, auth_pb2.WhoAmIRequest(), f"Bearer {token}"
            )
        except ConsoleError as exc:
            return console.html("login.html", exc.status, session=None, next=target, message=exc.message)
        grants = tuple(Grant(g.account_id, ROLE_NAMES.get(g.role, "none")) for g in me.grants)
        if not grants:
            message = "this credential holds no role on any account; ask an admin for a token with a grant"
            return console.html("login.html", 403, session=None, next=target, message=message)
        session = console.sessions.create(token, me.subject, grants, clock.now())
        response = web.HTTPSeeOther(target)
        console.set_session_cookie(response, session.session_id)
        raise response

    async def logout(ctx: Ctx) -> web.StreamResponse:
        console.sessions.drop(ctx.session.session_id)
        response = web.HTTPSeeOther(f"{PREFIX}/login")
        response.del_cookie(SESSION_COOKIE, path=PREFIX)
        raise response

    async def preferences(ctx: Ctx) -> web.StreamResponse:
        back = safe_back(ctx.field("back"), f"{PREFIX}/")
        account = ctx.field("account")
        if account and ctx.session.role(account):
            ctx.session.account_id = account
        response = web.HTTPSeeOther(back)
        zone = ctx.field("zone").strip()
        if zone:
            try:
                chosen = zone_name(parse_zone(zone))
            except ValueError as exc:
                ctx.session.flash.append(f"Zone not changed: {exc}")
            else:
                response.set_cookie(
                    ZONE_COOKIE,
                    chosen,
                    path=PREFIX,
                    secure=console.secure_cookies,
                    samesite="Strict",
                    max_age=365 * 86400,
                )
        raise response

    async def static_file(request: web.Request) -> web.StreamResponse:
        found = static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "max-age=3600"})

    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", console.page(logout))
    app.router.add_post("/preferences", console.page(preferences))
    app.router.add_get("/static/{name}", static_file)
    pages.register(app, console)
    return app
