"""Every RPC generated from proto/ has exactly one rule in the authorization table (ADR 0024).

A new RPC without a rule fails here, so nothing ships open; the interceptor also refuses such a
method at run time.
"""

from __future__ import annotations

import importlib
import pkgutil

import strongroom
from strongroom_platform.auth import POLICY, Caller

STANDARD_SERVICES = ("/grpc.health.v1.", "/grpc.reflection.")


def generated_methods() -> set[str]:
    methods = set()
    for module_info in pkgutil.walk_packages(strongroom.__path__, prefix="strongroom."):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(module_info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods.add(f"/{service.full_name}/{method.name}")
    return methods


def test_the_proto_tree_has_services() -> None:
    assert len(generated_methods()) >= 20


def test_every_generated_rpc_has_a_rule() -> None:
    missing = sorted(generated_methods() - set(POLICY))
    assert not missing, f"RPCs without a rule in strongroom_platform.auth.policy.POLICY: {missing}"


def test_every_rule_names_an_existing_rpc() -> None:
    stale = sorted(m for m in set(POLICY) - generated_methods() if not m.startswith(STANDARD_SERVICES))
    assert not stale, f"rules for RPCs that no longer exist: {stale}"


def test_operator_rules_name_a_permission_and_services_are_named() -> None:
    for method, rule in POLICY.items():
        if Caller.OPERATOR in rule.callers:
            assert rule.permission is not None, method
        if Caller.SERVICE in rule.callers:
            assert rule.services, f"{method} admits services but names none"
        assert rule.verb, method


def test_mutating_operator_calls_are_audited() -> None:
    """Every operator RPC whose name says it changes something is marked mutating."""
    readers = ("Get", "List", "Browse", "WhoAmI")
    for method, rule in POLICY.items():
        if Caller.OPERATOR not in rule.callers:
            continue
        name = method.rsplit("/", 1)[1]
        assert rule.mutating == (not name.startswith(readers)), method
