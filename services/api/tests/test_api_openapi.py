"""The OpenAPI document: generated from the descriptors, valid, and committed up to date."""

from __future__ import annotations

from pathlib import Path

import yaml
from openapi_spec_validator import validate
from strongroom_api.openapi import build_document, to_yaml
from strongroom_api.rules import load_routes

COMMITTED = Path(__file__).resolve().parents[3] / "docs" / "api" / "openapi.yaml"


def test_the_document_is_valid_openapi() -> None:
    validate(build_document())  # raises OpenAPIValidationError with the path of the problem


def test_the_committed_document_is_up_to_date() -> None:
    assert COMMITTED.read_text() == to_yaml(build_document()), "run `make openapi` and commit docs/api/openapi.yaml"


def test_every_route_is_an_operation_with_its_role_and_error_body() -> None:
    document = yaml.safe_load(COMMITTED.read_text())
    operations = {
        (path, method): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    routes = load_routes()
    assert set(operations) == {(r.template.text, r.http_method) for r in routes}
    for route in routes:
        operation = operations[(route.template.text, route.http_method)]
        assert route.grpc_path in operation["description"] and "role" in operation["description"]
        assert operation["responses"]["default"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
        names = {p["name"] for p in operation.get("parameters", [])}
        assert set(route.template.variables) <= names
        assert ("Idempotency-Key" in names) is (route.http_method != "get")


def test_schemas_follow_the_proto3_json_mapping() -> None:
    schemas = build_document()["components"]["schemas"]
    stats = schemas["common.v1.JobStats"]["properties"]
    assert stats["bytes_read"] == {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
    instance = schemas["scheduler.v1.Instance"]["properties"]
    assert instance["next_backup_at"] == {"type": "string", "format": "date-time"}
    assert instance["status"] == {"$ref": "#/components/schemas/scheduler.v1.RunningStatus"}
    assert "RUNNING_STATUS_READY" in schemas["scheduler.v1.RunningStatus"]["enum"]
    assert schemas["audit.v1.AuditEvent"]["properties"]["resources"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
    }


def test_fields_the_services_require_are_required_in_the_document() -> None:
    document = build_document()
    search = document["paths"]["/v1/files"]["get"]["parameters"]
    assert {p["name"]: p["required"] for p in search}["pattern"] is True
    assert {p["name"]: p["required"] for p in search}["instance_id"] is False
    create = document["paths"]["/v1/restoreJobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create["required"] == ["point_id"] and create["properties"]["point_id"]["minLength"] == 1


def test_a_body_with_every_field_leaves_out_those_the_path_carries() -> None:
    document = build_document()
    pause = document["paths"]["/v1/instances/{instance_id}:pause"]["post"]["requestBody"]
    assert pause["content"]["application/json"]["schema"] == {
        "type": "object",
        "properties": {"etag": {"type": "string"}},  # the version the caller read, like If-Match
        "additionalProperties": False,
    }
    hold = document["paths"]["/v1/instances/{instance_id}/holds"]["post"]["requestBody"]
    schema = hold["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"kind", "reason"} and schema["required"] == ["reason"]


def test_writes_of_a_versioned_resource_document_if_match_and_412() -> None:
    document = build_document()
    settings = document["paths"]["/v1/instances/{instance_id}/settings"]["patch"]
    assert "If-Match" in [p["name"] for p in settings["parameters"]]
    assert "412" in settings["responses"] and "ETag" in settings["responses"]["200"]["headers"]
    plan = document["paths"]["/v1/billing/plans"]["post"]  # plans have no version: no If-Match
    assert "If-Match" not in [p["name"] for p in plan.get("parameters", [])] and "412" not in plan["responses"]
