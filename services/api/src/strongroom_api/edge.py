"""One REST call, from the HTTP request to the HTTP answer; plain functions, no web framework.

``handle`` resolves the route, insists on a bearer credential, transcodes the request, applies the
idempotency key of a mutation, calls the backend with the caller's own ``authorization`` (the edge
has no privilege of its own: the service authenticates and authorizes the caller, ADR 0024) and
renders the answer or the error body. ``http_app`` adapts it to aiohttp.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.protobuf.message import Message
from strongroom_platform.clock import Clock

from strongroom_api import idempotency, preconditions
from strongroom_api.errors import ApiError, error_body, from_rpc_error
from strongroom_api.rules import Resolved, Route, Router
from strongroom_api.transcode import build_request, render

log = logging.getLogger(__name__)

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What the edge reads of a request; ``headers`` keys are lower case, ``raw_path`` is as sent
    (percent-encoded), ``query`` decoded pairs in order, ``query_string`` as sent."""

    method: str
    raw_path: str
    query: Sequence[tuple[str, str]] = ()
    query_string: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Invoke(Protocol):
    """Calls ``route``'s RPC on its backend with ``metadata``; raises grpc.aio.AioRpcError."""

    async def __call__(self, route: Route, request: Message, metadata: tuple[tuple[str, str], ...]) -> Message: ...


def error_answer(error: ApiError) -> HttpAnswer:
    body = json.dumps(error_body(error.code, error.message), ensure_ascii=False, separators=(",", ":")).encode()
    return HttpAnswer(error.http_status, body, {"Content-Type": JSON, **error.headers})


def _bearer(headers: Mapping[str, str]) -> str:
    value = headers.get("authorization", "")
    if not value:
        raise ApiError(
            grpc.StatusCode.UNAUTHENTICATED,
            "this call needs a credential: Authorization: Bearer <API token or OIDC token>",
            headers={"WWW-Authenticate": 'Bearer realm="strongroom"'},
        )
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            grpc.StatusCode.UNAUTHENTICATED,
            "the Authorization header must be 'Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="strongroom"'},
        )
    return f"Bearer {token.strip()}"


def _resolve(router: Router, request: HttpRequest) -> Resolved:
    found = router.resolve(request.method, request.raw_path)
    if found is None:
        raise ApiError(grpc.StatusCode.NOT_FOUND, f"no API operation at {request.raw_path} (see /openapi.yaml)")
    if isinstance(found, tuple):
        raise ApiError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{request.method} is not allowed on {request.raw_path}; allowed: {', '.join(found)}",
            http_status=405,
            headers={"Allow": ", ".join(found)},
        )
    return found


def _check_content_type(request: HttpRequest) -> None:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if request.body.strip() and content_type not in ("", JSON):
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT, f"the request body must be {JSON}, not {content_type}", http_status=415
        )


async def _call(invoke: Invoke, resolved: Resolved, request: HttpRequest, authorization: str) -> HttpAnswer:
    route = resolved.route
    message = build_request(route, resolved.variables, request.query, request.body)
    if route.http_method != "get":
        preconditions.apply_if_match(message, request.headers.get("if-match"), route.operation_id)
    try:
        response = await invoke(route, message, (("authorization", authorization),))
    except grpc.aio.AioRpcError as exc:
        error = from_rpc_error(exc)
        if error.code == grpc.StatusCode.ABORTED and preconditions.conditional(message):
            error.http_status = preconditions.STALE  # the resource is not the version the caller read
        return error_answer(error)
    body = render(response)
    headers = {"Content-Type": JSON}
    if route.http_method == "get" or preconditions.versioned(response):
        etag = headers["ETag"] = preconditions.etag_header(response, body)
        if route.http_method == "get" and preconditions.matches_none(request.headers.get("if-none-match", ""), etag):
            return HttpAnswer(304, b"", {"ETag": etag})
    return HttpAnswer(200, body, headers)


async def _idempotent(
    invoke: Invoke,
    resolved: Resolved,
    request: HttpRequest,
    authorization: str,
    key: str,
    store: idempotency.IdempotencyStore,
    clock: Clock,
) -> HttpAnswer:
    problem = idempotency.check_key(key)
    if problem is not None:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, problem)
    scope = idempotency.scope_of(authorization)
    print_ = idempotency.fingerprint(
        request.method, request.raw_path, request.query_string, request.body, request.headers.get("if-match", "")
    )
    claim = await store.claim(scope, key, print_, clock.now())
    if isinstance(claim, idempotency.Replay):
        first = claim.response
        return HttpAnswer(first.status, first.body, {"Content-Type": JSON, "Idempotent-Replayed": "true"})
    if isinstance(claim, idempotency.InProgress):
        raise ApiError(
            grpc.StatusCode.ABORTED, "a request with this Idempotency-Key is still running; retry after it finished"
        )
    if isinstance(claim, idempotency.Mismatch):
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "this Idempotency-Key was used for a different request; use a new key for a new request",
            http_status=422,
        )
    answer: HttpAnswer | None = None
    try:
        try:
            answer = await _call(invoke, resolved, request, authorization)
        except ApiError as exc:
            answer = error_answer(exc)
        return answer
    finally:
        # A bug (answer None) or an outcome that may differ on retry frees the key for the retry.
        if answer is not None and idempotency.stored(answer.status):
            await store.complete(scope, key, idempotency.StoredResponse(answer.status, answer.body))
        else:
            await store.release(scope, key)


async def handle(
    request: HttpRequest,
    *,
    router: Router,
    invoke: Invoke,
    store: idempotency.IdempotencyStore,
    clock: Clock,
) -> HttpAnswer:
    """The answer to one REST call; never raises (a bug becomes a logged INTERNAL answer)."""
    try:
        resolved = _resolve(router, request)
        authorization = _bearer(request.headers)
        _check_content_type(request)
        key = request.headers.get(idempotency.HEADER.lower())
        if key is not None and resolved.route.http_method != "get":
            return await _idempotent(invoke, resolved, request, authorization, key, store, clock)
        return await _call(invoke, resolved, request, authorization)
    except ApiError as exc:
        return error_answer(exc)
    except Exception:
        log.exception("REST %s %s failed", request.method, request.raw_path)
        return error_answer(ApiError(grpc.StatusCode.INTERNAL, "internal error"))
