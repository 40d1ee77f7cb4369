"""One REST call end to end through ``edge.handle``, against a fake of the gRPC services."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from strongroom.alerts.v1 import alerts_pb2
from strongroom.billing.v1 import billing_pb2
from strongroom.common.v1 import common_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_api import edge
from strongroom_api.idempotency import MemoryIdempotencyStore
from strongroom_api.rules import Route, Router, load_routes
from strongroom_platform.testing import FakeClock

TOKEN = "Bearer sr_test_token"


class FakeServices:
    """Records each call; answers from ``answers`` (a message, an exception, or a callable)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Message, tuple[tuple[str, str], ...]]] = []
        self.answers: dict[str, Any] = {}

    async def __call__(self, route: Route, request: Message, metadata: tuple[tuple[str, str], ...]) -> Message:
        self.calls.append((route.grpc_path, request, metadata))
        answer = self.answers.get(route.method.name)
        if callable(answer):
            answer = await answer(request)
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            from google.protobuf import message_factory

            return message_factory.GetMessageClass(route.method.output_type)()
        assert isinstance(answer, Message)
        return answer


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


ROUTER = Router(load_routes())


@pytest.fixture
def services() -> FakeServices:
    return FakeServices()


@pytest.fixture
def store() -> MemoryIdempotencyStore:
    return MemoryIdempotencyStore()


async def call(
    services: FakeServices,
    method: str,
    path: str,
    *,
    body: bytes | dict[str, Any] = b"",
    query: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    store: MemoryIdempotencyStore | None = None,
) -> tuple[int, Any, dict[str, str]]:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    all_headers = {"authorization": TOKEN, **(headers or {})}
    query = query or []
    request = edge.HttpRequest(
        method=method,
        raw_path=path,
        query=query,
        query_string="&".join(f"{k}={v}" for k, v in query),
        headers={k.lower(): v for k, v in all_headers.items() if v is not None},
        body=raw,
    )
    keys = store if store is not None else MemoryIdempotencyStore()
    answer = await edge.handle(request, router=ROUTER, invoke=services, store=keys, clock=FakeClock())
    parsed = json.loads(answer.body) if answer.body else None
    return answer.status, parsed, answer.headers


async def test_get_with_path_and_query_fields_forwards_the_callers_token(services: FakeServices) -> None:
    services.answers["ListInstances"] = scheduler_pb2.ListInstancesResponse(
        instances=[scheduler_pb2.Instance(instance_id="i-1", status=scheduler_pb2.RUNNING_STATUS_READY)],
        next_page_token="p2",
    )
    status, body, headers = await call(
        services, "GET", "/v1/instances", query=[("region", "eu"), ("page_size", "2"), ("page_token", "p1")]
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert body["next_page_token"] == "p2"
    instance = body["instances"][0]
    assert instance["instance_id"] == "i-1" and instance["status"] == "RUNNING_STATUS_READY"
    assert instance["agent_enrolled"] is False and instance["hostname"] == ""  # zero values are printed
    grpc_path, request, metadata = services.calls[0]
    assert grpc_path == "/strongroom.scheduler.v1.SchedulerService/ListInstances"
    assert request == scheduler_pb2.ListInstancesRequest(region="eu", page_size=2, page_token="p1")
    assert metadata == (("authorization", TOKEN),)


async def test_query_booleans_repeated_timestamps_and_enums(services: FakeServices) -> None:
    await call(services, "GET", "/v1/messages", query=[("unread_only", "true"), ("account_id", "acme")])
    assert services.calls[-1][1] == alerts_pb2.ListMessagesRequest(unread_only=True, account_id="acme")
    await call(services, "GET", "/v1/alerts/deliveries", query=[("state", "DELIVERY_STATE_DEAD"), ("limit", "5")])
    assert services.calls[-1][1] == alerts_pb2.ListDeliveriesRequest(state=alerts_pb2.DELIVERY_STATE_DEAD, limit=5)
    await call(services, "GET", "/v1/audit/events", query=[("since", "2026-12-01T00:00:00Z")])
    assert services.calls[-1][1].since.seconds == 1_796_083_200  # type: ignore[attr-defined]
    status, body, _ = await call(services, "GET", "/v1/messages", query=[("unread_only", "maybe")])
    assert status == 400 and "true or false" in body["error"]["message"]


async def test_body_star_and_path_variable_fill_the_request(services: FakeServices) -> None:
    services.answers["RunBackupNow"] = scheduler_pb2.BackupJob(
        job_id="j-1", status=common_pb2.JOB_STATUS_QUEUED, stats=common_pb2.JobStats(bytes_read=5)
    )
    status, body, _ = await call(services, "POST", "/v1/instances/i%2F1:backupNow")
    assert status == 200 and body["job_id"] == "j-1" and body["status"] == "JOB_STATUS_QUEUED"
    assert body["stats"]["bytes_read"] == "5"  # 64-bit integers are strings (proto3 JSON mapping)
    assert services.calls[-1][1] == scheduler_pb2.RunBackupNowRequest(instance_id="i/1")
    await call(services, "POST", "/v1/billing/plans", body={"account_id": "acme", "gib_days": "100"})
    assert services.calls[-1][1] == billing_pb2.CreatePlanRequest(account_id="acme", gib_days="100")


async def test_body_field_with_the_rest_in_the_query(services: FakeServices) -> None:
    status, _, _ = await call(
        services,
        "PATCH",
        "/v1/instances/i-1/settings",
        body={"priority": "BACKUP_PRIORITY_HIGH", "daily_start_minute": 90},
        query=[("update_mask", "priority"), ("update_mask", "daily_start_minute")],
    )
    assert status == 200
    assert services.calls[-1][1] == scheduler_pb2.UpdateSettingsRequest(
        instance_id="i-1",
        settings=scheduler_pb2.BackupSettings(priority=common_pb2.BACKUP_PRIORITY_HIGH, daily_start_minute=90),
        update_mask=["priority", "daily_start_minute"],
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "query", "status", "needle"),
    [
        ("POST", "/v1/billing/plans", b"{not json", [], 400, "not valid JSON"),
        ("POST", "/v1/billing/plans", b"[1, 2]", [], 400, "must be a JSON object"),
        ("POST", "/v1/billing/plans", b'{"gib_dayz": "1"}', [], 400, 'no field named "gib_dayz"'),
        ("POST", "/v1/billing/plans", b'{"gib_days": 7}', [], 400, "gib_days"),
        ("POST", "/v1/billing/plans", b"\xff\xfe", [], 400, "UTF-8"),
        ("POST", "/v1/instances/i-1:pause", b'{"instance_id": "i-2"}', [], 400, "in the path but"),
        ("POST", "/v1/billing/plans", b"{}", [("account_id", "a")], 400, "in the JSON body, not the query"),
        ("GET", "/v1/instances", b"{}", [], 400, "takes no request body"),
        ("GET", "/v1/instances", b"", [("colour", "red")], 400, "unknown query parameter 'colour'"),
        ("GET", "/v1/instances", b"", [("page_size", "many")], 400, "page_size"),
        ("GET", "/v1/instances", b"", [("region", "a"), ("region", "b")], 400, "more than once"),
        ("GET", "/v1/instances/i-1", b"", [("instance_id", "i-2")], 400, "set by the path"),
        ("GET", "/v1/nowhere", b"", [], 404, "no API operation at /v1/nowhere"),
        ("DELETE", "/v1/instances", b"", [], 405, "allowed: GET"),
    ],
)
async def test_bad_requests_get_a_clear_error_body(
    services: FakeServices, method: str, path: str, body: bytes, query: list[tuple[str, str]], status: int, needle: str
) -> None:
    got, answer, _ = await call(services, method, path, body=body, query=query)
    assert got == status
    assert set(answer) == {"error"} and set(answer["error"]) == {"code", "message"}
    assert needle in answer["error"]["message"], answer
    assert not services.calls  # nothing reached a service


async def test_wrong_content_type_is_415(services: FakeServices) -> None:
    status, body, _ = await call(
        services, "POST", "/v1/billing/plans", body=b"a=1", headers={"Content-Type": "text/plain"}
    )
    assert status == 415 and body["error"]["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(("authorization", "needle"), [(None, "needs a credential"), ("Basic abc", "Bearer <token>")])
async def test_no_bearer_is_401_before_any_service_call(
    services: FakeServices, authorization: str | None, needle: str
) -> None:
    status, body, headers = await call(services, "GET", "/v1/instances", headers={"authorization": authorization})  # type: ignore[dict-item]
    assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED" and needle in body["error"]["message"]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert not services.calls


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        (grpc.StatusCode.NOT_FOUND, 404, "instance i-9 not found"),
        (grpc.StatusCode.PERMISSION_DENIED, 403, "role viewer on account acme cannot start backups"),
        (grpc.StatusCode.UNAUTHENTICATED, 401, "unknown or revoked token"),
        (grpc.StatusCode.FAILED_PRECONDITION, 400, "the instance is paused"),
        (grpc.StatusCode.ALREADY_EXISTS, 409, "exists"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "slow down"),
        (grpc.StatusCode.UNAVAILABLE, 503, "the service is unavailable; try again shortly"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "deadline"),
    ],
)
async def test_grpc_status_becomes_http_status_and_error_body(
    services: FakeServices, code: grpc.StatusCode, status: int, message: str
) -> None:
    services.answers["RunBackupNow"] = rpc_error(code, "connection refused" if status == 503 else message)
    got, body, _ = await call(services, "POST", "/v1/instances/i-9:backupNow")
    assert got == status
    assert body == {"error": {"code": code.name, "message": message}}


async def test_a_bug_is_internal_with_a_generic_message(services: FakeServices) -> None:
    services.answers["GetInstance"] = RuntimeError("secret detail")
    status, body, _ = await call(services, "GET", "/v1/instances/i-1")
    assert status == 500 and body == {"error": {"code": "INTERNAL", "message": "internal error"}}


async def test_get_has_an_etag_and_if_none_match_gives_304(services: FakeServices) -> None:
    services.answers["GetInstance"] = scheduler_pb2.Instance(instance_id="i-1")
    status, _, headers = await call(services, "GET", "/v1/instances/i-1")
    etag = headers["ETag"]
    assert status == 200 and etag.startswith('"')
    status, body, again = await call(services, "GET", "/v1/instances/i-1", headers={"If-None-Match": etag})
    assert status == 304 and body is None and again["ETag"] == etag
    services.answers["GetInstance"] = scheduler_pb2.Instance(instance_id="i-1", name="renamed")
    status, _, changed = await call(services, "GET", "/v1/instances/i-1", headers={"If-None-Match": etag})
    assert status == 200 and changed["ETag"] != etag


async def test_idempotency_key_replays_the_first_answer(services: FakeServices, store: MemoryIdempotencyStore) -> None:
    jobs = iter(["j-1", "j-2", "j-3"])

    async def new_job(_request: Message) -> Message:
        return scheduler_pb2.BackupJob(job_id=next(jobs))

    services.answers["RunBackupNow"] = new_job
    key = {"Idempotency-Key": "k-1"}
    first = await call(services, "POST", "/v1/instances/i-1:backupNow", headers=key, store=store)
    again = await call(services, "POST", "/v1/instances/i-1:backupNow", headers=key, store=store)
    assert first[1]["job_id"] == again[1]["job_id"] == "j-1"
    assert again[2]["Idempotent-Replayed"] == "true" and len(services.calls) == 1
    other = await call(services, "POST", "/v1/instances/i-1:backupNow", headers={"Idempotency-Key": "k-2"}, store=store)
    assert other[1]["job_id"] == "j-2"
    # another credential has its own keys
    third = await call(
        services,
        "POST",
        "/v1/instances/i-1:backupNow",
        headers={**key, "authorization": "Bearer other"},
        store=store,
    )
    assert third[0] == 200 and len(services.calls) == 3


async def test_idempotency_key_reused_for_another_request_is_422(
    services: FakeServices, store: MemoryIdempotencyStore
) -> None:
    key = {"Idempotency-Key": "k-1"}
    await call(services, "POST", "/v1/instances/i-1:pause", headers=key, store=store)
    status, body, _ = await call(services, "POST", "/v1/instances/i-2:pause", headers=key, store=store)
    assert status == 422 and "different request" in body["error"]["message"]


async def test_idempotency_key_in_flight_is_409(services: FakeServices, store: MemoryIdempotencyStore) -> None:
    release = asyncio.Event()

    async def slow(_request: Message) -> Message:
        await release.wait()
        return scheduler_pb2.BackupJob(job_id="j-1")

    services.answers["RunBackupNow"] = slow
    key = {"Idempotency-Key": "k-1"}
    first = asyncio.create_task(call(services, "POST", "/v1/instances/i-1:backupNow", headers=key, store=store))
    await asyncio.sleep(0.01)
    status, body, _ = await call(services, "POST", "/v1/instances/i-1:backupNow", headers=key, store=store)
    assert status == 409 and body["error"]["code"] == "ABORTED"
    release.set()
    assert (await first)[0] == 200


@pytest.mark.parametrize(
    ("code", "kept"),
    [
        (grpc.StatusCode.UNAVAILABLE, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
        (grpc.StatusCode.NOT_FOUND, True),
    ],
)
async def test_unknown_or_fixable_outcomes_release_the_key(
    services: FakeServices, store: MemoryIdempotencyStore, code: grpc.StatusCode, kept: bool
) -> None:
    services.answers["RunBackupNow"] = rpc_error(code, "no")
    key = {"Idempotency-Key": "k-1"}
    await call(services, "POST", "/v1/instances/i-1:backupNow", headers=key, store=store)
    services.answers["RunBackupNow"] = scheduler_pb2.BackupJob(job_id="j-1")
    status, _, headers = await call(services, "POST", "/v1/instances/i-1:backupNow", headers=key, store=store)
    assert ("Idempotent-Replayed" in headers) is kept
    assert len(services.calls) == (1 if kept else 2)
    assert status == (404 if kept else 200)


async def test_bad_idempotency_key_is_400(services: FakeServices) -> None:
    status, body, _ = await call(services, "POST", "/v1/instances/i-1:pause", headers={"Idempotency-Key": "a b"})
    assert status == 400 and "Idempotency-Key" in body["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "query"),
    [
        ("GET", "/v1/alerts/deliveries", b"", [("state", "0")]),
        ("GET", "/v1/alerts/deliveries", b"", [("state", "DELIVERY_STATE_SOMETIMES")]),
        ("POST", "/v1/restoreJobs", b'{"point_id": "p", "conflict_policy": 2}', []),
        ("PATCH", "/v1/instances/i-1/settings", b'{"priority": 1}', []),
        ("POST", "/v1/tokens", b'{"grants": [{"account_id": "a", "role": 3}]}', []),
    ],
)
async def test_enums_by_name_only_as_the_document_says(
    services: FakeServices, method: str, path: str, body: bytes, query: list[tuple[str, str]]
) -> None:
    status, answer, _ = await call(services, method, path, body=body, query=query)
    assert status == 400 and "must be one of" in answer["error"]["message"], answer
    assert not services.calls


async def test_if_match_goes_to_the_service_and_a_stale_version_is_412(services: FakeServices) -> None:
    async def versioned(request: Message) -> Message:
        if request.etag not in ("", "v1"):  # type: ignore[attr-defined]
            raise rpc_error(grpc.StatusCode.ABORTED, "instance i-1 changed since etag v0 was read (now v1)")
        return scheduler_pb2.Instance(instance_id="i-1", etag="v2" if request.etag else "v1")  # type: ignore[attr-defined]

    services.answers["GetInstance"] = scheduler_pb2.Instance(instance_id="i-1", etag="v1")
    services.answers["UpdateSettings"] = versioned
    status, _, headers = await call(services, "GET", "/v1/instances/i-1")
    assert (status, headers["ETag"]) == (200, '"v1"')  # the resource's own version
    assert (await call(services, "GET", "/v1/instances/i-1", headers={"If-None-Match": '"v1"'}))[0] == 304
    path = "/v1/instances/i-1/settings"
    query = [("update_mask", "priority")]
    body = {"priority": "BACKUP_PRIORITY_HIGH"}
    status, answer, headers = await call(services, "PATCH", path, body=body, query=query, headers={"If-Match": '"v1"'})
    assert (status, answer["etag"], headers["ETag"]) == (200, "v2", '"v2"')
    assert services.calls[-1][1].etag == "v1"  # type: ignore[attr-defined]
    status, answer, _ = await call(services, "PATCH", path, body=body, query=query, headers={"If-Match": '"v0"'})
    assert status == 412 and answer["error"]["code"] == "ABORTED" and "changed since etag" in answer["error"]["message"]
    # the same ABORTED without a precondition stays 409
    services.answers["UpdateSettings"] = rpc_error(grpc.StatusCode.ABORTED, "conflict")
    assert (await call(services, "PATCH", path, body=body, query=query))[0] == 409
    calls = len(services.calls)
    for header, expected in [
        ('W/"v1"', 412),  # a weak tag never matches
        ('"v1", "v2"', 400),
        ("v1", 400),
    ]:
        status, answer, _ = await call(services, "PATCH", path, body=body, query=query, headers={"If-Match": header})
        assert status == expected, (header, answer)
    status, answer, _ = await call(
        services, "PATCH", path, body=body, query=[*query, ("etag", "v9")], headers={"If-Match": '"v1"'}
    )
    assert status == 400 and "name different versions" in answer["error"]["message"]
    assert len(services.calls) == calls  # refused before any service call
    # an operation whose resource has no version refuses If-Match rather than ignore it
    status, answer, _ = await call(services, "POST", "/v1/billing/plans", body={}, headers={"If-Match": '"x"'})
    assert status == 400 and "has no etag" in answer["error"]["message"]
    services.answers["PauseBackup"] = scheduler_pb2.Instance(instance_id="i-1")
    assert (await call(services, "POST", "/v1/instances/i-1:pause", body={}, headers={"If-Match": "*"}))[0] == 200
    assert services.calls[-1][1].etag == ""  # type: ignore[attr-defined]
