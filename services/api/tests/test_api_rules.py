"""Routes come from the protos' google.api.http rules; every operator RPC has exactly one."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from strongroom_api.rules import OPERATOR_SERVICES, Resolved, Router, RuleError, load_routes, parse_template
from strongroom_platform.auth import POLICY, Caller


def test_every_operator_rpc_of_the_authorization_table_has_a_route_and_nothing_else() -> None:
    operator_methods = {name for name, rule in POLICY.items() if Caller.OPERATOR in rule.callers}
    routed = {route.grpc_path for route in load_routes()}
    assert routed == operator_methods
    assert len(routed) == 47


def test_template_match_decodes_variables_and_checks_the_verb() -> None:
    template = parse_template("/v1/instances/{instance_id}:pause")
    assert template.variables == ("instance_id",) and template.verb == "pause"
    assert template.match("/v1/instances/i-1:pause") == {"instance_id": "i-1"}
    assert template.match("/v1/instances/a%2Fb%3Ac:pause") == {"instance_id": "a/b:c"}
    assert template.match("/v1/instances/i-1:resume") is None
    assert template.match("/v1/instances/i-1") is None
    assert template.match("/v1/instances/:pause") is None
    plain = parse_template("/v1/instances/{instance_id}")
    assert plain.match("/v1/instances/i-1:pause") is None  # a raw ':' is a verb, never part of an id
    assert plain.match("/v1/instances/i-1/x") is None


@pytest.mark.parametrize(
    "text", ["v1/x", "/v1/x/", "/v1/{a.b}", "/v1/{a=**}", "/v1/x:bad-verb", "/v1/{Upper}", "/v1//x"]
)
def test_unsupported_templates_are_refused_at_start(text: str) -> None:
    with pytest.raises(RuleError):
        parse_template(text)


def test_router_finds_the_route_or_the_allowed_methods() -> None:
    router = Router(load_routes())
    found = router.resolve("POST", "/v1/instances/i-1:backupNow")
    assert isinstance(found, Resolved) and found.route.method.name == "RunBackupNow"
    assert found.variables == {"instance_id": "i-1"}
    found = router.resolve("GET", "/v1/billing/plans")
    assert isinstance(found, Resolved) and found.route.method.name == "ListPlans"
    found = router.resolve("POST", "/v1/billing/plans")
    assert isinstance(found, Resolved) and found.route.method.name == "CreatePlan"
    assert router.resolve("DELETE", "/v1/billing/plans") == ("GET", "POST")
    assert router.resolve("GET", "/v1/nothing") is None


def _service_with(rule_text: str) -> dict[str, object]:
    """A one-method service whose rule is ``rule_text`` (compiled into a private pool)."""
    from google.api import annotations_pb2, http_pb2
    from google.protobuf import text_format

    pool = descriptor_pool.DescriptorPool()
    for module in (descriptor_pb2, http_pb2, annotations_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t", syntax="proto3")
    file.dependency.append("google/api/annotations.proto")
    request = file.message_type.add(name="Req")
    request.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64)
    file.message_type.add(name="Resp")
    method = file.service.add(name="S").method.add(name="M", input_type=".t.Req", output_type=".t.Resp")
    rule = text_format.Parse(rule_text, http_pb2.HttpRule())
    method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    pool.Add(file)
    return {"t.S": (pool.FindServiceByName("t.S"), "scheduler")}


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ('get: "/v1/x/{id}"', "not a string field"),
        ('get: "/v1/x" body: "*"', "takes no body"),
        ('post: "/v1/x" body: "id"', "not a message field"),
        ('custom: {kind: "HEAD" path: "/v1/x"}', "not supported"),
    ],
)
def test_rules_the_edge_cannot_serve_stop_it_at_start(rule: str, problem: str) -> None:
    with pytest.raises(RuleError, match=problem):
        load_routes(_service_with(rule))  # type: ignore[arg-type]


def test_a_method_without_a_rule_stops_the_edge_at_start() -> None:
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(name="u.proto", package="u", syntax="proto3")
    file.message_type.add(name="Req")
    file.service.add(name="S").method.add(name="M", input_type=".u.Req", output_type=".u.Req")
    pool.Add(file)
    with pytest.raises(RuleError, match="has no google.api.http rule"):
        load_routes({"u.S": (pool.FindServiceByName("u.S"), "scheduler")})


def test_operator_services_are_served_by_known_backends() -> None:
    assert {backend for _, backend in OPERATOR_SERVICES.values()} == {
        "scheduler",
        "catalog",
        "restore",
        "billing",
        "gateway",
    }
