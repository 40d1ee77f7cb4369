"""The aiohttp adapter: every request goes to ``edge.handle``; plus the OpenAPI document and health.

Thin on purpose: it copies what ``edge`` needs out of the aiohttp request and the answer back.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web
from strongroom_platform.clock import Clock

from strongroom_api import edge, idempotency
from strongroom_api.errors import ApiError
from strongroom_api.rules import Router

OPENAPI_PATHS = ("/openapi.yaml", "/openapi.json")
CONSOLE_PREFIX = "/console"  # the web console's sub-application (ADR 0054), mounted by bootstrap
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HEALTH_PATH = "/healthz"


def _answer(answer: edge.HttpAnswer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


def build_app(
    *,
    router: Router,
    invoke: edge.Invoke,
    store: idempotency.IdempotencyStore,
    clock: Clock,
    openapi_yaml: bytes,
    openapi_json: bytes,
    max_body_bytes: int,
) -> web.Application:
    """The application: ``/openapi.yaml``, ``/openapi.json`` and ``/healthz`` (no credential
    needed: they reveal nothing an operator's documentation does not), everything else transcoded."""

    async def openapi(request: web.Request) -> web.Response:
        if request.path.endswith(".json"):
            return web.Response(body=openapi_json, content_type="application/json")
        return web.Response(body=openapi_yaml, content_type="application/yaml")

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "SERVING"})

    async def transcode(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            too_large = ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request body is larger than {max_body_bytes} bytes",
                http_status=413,
            )
            return _answer(edge.error_answer(too_large))
        http_request = edge.HttpRequest(
            method=request.method,
            raw_path=request.rel_url.raw_path,
            query=list(request.rel_url.query.items()),
            query_string=request.rel_url.raw_query_string,
            headers={key.lower(): value for key, value in request.headers.items()},
            body=body,
        )
        return _answer(await edge.handle(http_request, router=router, invoke=invoke, store=store, clock=clock))

    @web.middleware
    async def everything_else(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Every path but the document and health goes to the edge, whatever it contains (a route
        # pattern would miss some: aiohttp matches decoded paths, and '.' no newline).
        if request.method in ("GET", "HEAD") and (request.path in OPENAPI_PATHS or request.path == HEALTH_PATH):
            return await handler(request)
        if request.path == CONSOLE_PREFIX or request.path.startswith(CONSOLE_PREFIX + "/"):
            return await handler(request)
        return await transcode(request)

    app = web.Application(client_max_size=max_body_bytes, middlewares=[everything_else])
    for path in OPENAPI_PATHS:
        app.router.add_get(path, openapi)
    app.router.add_get(HEALTH_PATH, health)
    return app


def openapi_bytes(document: dict[str, object]) -> tuple[bytes, bytes]:
    """The document as YAML and as JSON."""
    from strongroom_api.openapi import to_yaml

    return to_yaml(document).encode(), json.dumps(document, indent=1).encode()
