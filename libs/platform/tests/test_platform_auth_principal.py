"""Roles, the account a call acts on, and resource checks (ADR 0024)."""

from __future__ import annotations

import pytest
from strongroom_platform.auth import (
    CallAuth,
    InvalidArgument,
    NotFound,
    Permission,
    PermissionDenied,
    Role,
    agent,
    authorize,
    choose_account,
    current_call,
    operator,
    service,
    visible_accounts,
)
from strongroom_platform.testing import call_for


def call(principal: object, permission: Permission = Permission.READ, verb: str = "list instances") -> CallAuth:
    return CallAuth(principal=principal, method="/x/Y", permission=permission, verb=verb)  # type: ignore[arg-type]


def test_roles_grant_their_level_and_every_lower_one() -> None:
    assert Role.VIEWER.grants == Permission.READ
    assert Role.OPERATOR.grants == Permission.OPERATE
    assert Role.ADMIN.grants == Permission.ADMIN
    assert Role.parse(" Admin ") is Role.ADMIN
    with pytest.raises(ValueError, match="unknown role 'root'"):
        Role.parse("root")


def test_empty_account_means_the_credentials_only_account() -> None:
    alice = operator("token:a", {"acme": Role.VIEWER})
    assert choose_account("", call=call(alice)) == "acme"


def test_a_credential_with_several_accounts_must_choose() -> None:
    both = operator("token:b", {"acme": Role.ADMIN, "globex": Role.VIEWER})
    with pytest.raises(InvalidArgument, match=r"several accounts \(acme, globex\)"):
        choose_account("", call=call(both))
    assert choose_account("globex", call=call(both)) == "globex"


def test_a_foreign_account_is_not_found_and_a_weak_role_is_denied() -> None:
    viewer = operator("token:v", {"acme": Role.VIEWER})
    with pytest.raises(NotFound, match="account globex not found"):
        choose_account("globex", call=call(viewer))
    with pytest.raises(PermissionDenied, match="role viewer on account acme cannot pause backups"):
        choose_account("acme", call=call(viewer, Permission.OPERATE, "pause backups"))


def test_authorize_answers_a_foreign_resource_like_a_missing_one() -> None:
    alice = operator("token:a", {"acme": Role.OPERATOR})

    def missing() -> Exception:
        return LookupError("instance i-1 not found")

    with pytest.raises(LookupError, match="instance i-1 not found"):
        authorize("globex", missing, call=call(alice, Permission.OPERATE))
    authorize("acme", missing, call=call(alice, Permission.OPERATE))
    with pytest.raises(PermissionDenied):
        authorize("acme", missing, call=call(alice, Permission.ADMIN, "cancel backups"))


def test_services_act_for_every_account_but_must_name_one() -> None:
    restore = service("restore")
    authorize("any-account", lambda: LookupError(), call=call(restore, Permission.ADMIN))
    with pytest.raises(InvalidArgument, match="account_id is required"):
        choose_account("", call=call(restore))


def test_an_agent_acts_for_its_own_account_only() -> None:
    host = agent("acme", "i-1")
    assert choose_account("", call=call(host)) == "acme"
    with pytest.raises(NotFound):
        choose_account("globex", call=call(host))


def test_no_interceptor_means_no_access() -> None:
    with pytest.raises(PermissionDenied, match="missing its auth interceptor"):
        current_call()


def test_visible_accounts_are_those_granting_the_calls_permission() -> None:
    mixed = operator("token:m", {"acme": Role.VIEWER, "globex": Role.OPERATOR, "initech": Role.ADMIN})
    assert visible_accounts(call=call(mixed, Permission.READ)) == ["acme", "globex", "initech"]
    assert visible_accounts(call=call(mixed, Permission.OPERATE)) == ["globex", "initech"]
    assert visible_accounts(call=call(operator("token:none", {}))) == []
    assert visible_accounts(call=call(service("restore"))) is None  # every account
    assert visible_accounts(call=call(agent("acme", "i-1"))) == ["acme"]


def test_call_for_takes_permission_and_verb_from_the_table() -> None:
    alice = operator("token:a", {"acme": Role.VIEWER})
    built = call_for("/strongroom.scheduler.v1.SchedulerService/CancelBackup", alice)
    assert (built.permission, built.verb, built.principal) == (Permission.ADMIN, "cancel backups", alice)
    with pytest.raises(KeyError):
        call_for("/strongroom.scheduler.v1.SchedulerService/NoSuchMethod", alice)
