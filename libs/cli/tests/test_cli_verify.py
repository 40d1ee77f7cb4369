"""``strongroom verify``: it only asks the gateway and follows the verification; damaged files are printed by path."""

from __future__ import annotations

import json

from cli_fakes import Cli, FakeServices
from strongroom.gateway.v1 import verify_pb2
from test_cli_commands import field


def test_verify_point_waits_and_lists_the_damaged_files(services: FakeServices, cli: Cli) -> None:
    services.verify.damaged = [
        verify_pb2.DamagedFile(point_id="p-1", path="etc/a.conf", reason="chunk 3f of this file is damaged (x)"),
        verify_pb2.DamagedFile(point_id="p-1", path="odd\nname", reason="chunk 77 of this file is damaged (y)"),
    ]
    code, out, _ = cli("verify", "point", "p-1", "--wait", "--poll-interval", "0.01")
    assert code == 1  # damage found
    request = services.calls.last("StartVerification")
    assert isinstance(request, verify_pb2.StartVerificationRequest)
    assert (request.point_id, request.instance_id, request.whole_account) == ("p-1", "", False)
    assert field(out, "State") == "damaged" and field(out, "Damaged files") == "3"
    assert field(out, "Packs read") == "3, 48.0 MiB"
    assert out.endswith(
        "Damaged files:\n"
        "  p-1  etc/a.conf: chunk 3f of this file is damaged (x)\n"
        "  p-1  odd\\x0aname: chunk 77 of this file is damaged (y)\n"
        "  ... and 1 more (only the first 2 are kept)\n"
    )


def test_verify_clean_exits_0_and_without_wait_only_queues(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("verify", "instance", "i-1")
    assert code == 0 and field(out, "State") == "queued"
    assert "GetVerification" not in services.calls.requests
    code, out, _ = cli("verify", "instance", "i-1", "--wait", "--poll-interval", "0.01")
    assert code == 0 and field(out, "State") == "clean"
    code, _, err = cli("verify", "point", "p-9")
    assert (code, err) == (1, "error: NOT_FOUND: backup point 'p-9' not found\n")


def test_verify_account_status_list_show(services: FakeServices, cli: Cli) -> None:
    cli("verify", "account")
    request = services.calls.last("StartVerification")
    assert isinstance(request, verify_pb2.StartVerificationRequest) and request.whole_account
    code, out, _ = cli("verify", "status")
    assert code == 0
    assert out.splitlines()[1].split()[:2] == ["i-1", "p-1"]
    assert out.splitlines()[1].split()[-2:] == ["2", "1"]
    [status] = json.loads(cli("verify", "status", "i-1", "--json")[1])
    assert status["damaged_files"] == 2
    listed = cli("verify", "list")[1]
    assert "v-1" in listed and "v-0" in listed  # the second page's too
    assert field(cli("verify", "show", "v-1")[1], "Verification") == "v-1"
