from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_fakes import Cli, FakeServices
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_cli import output


def field(out: str, label: str) -> str:
    """The value of a ``label: value`` line of the output."""
    for line in out.splitlines():
        if line.startswith(label + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {label!r} line in {out!r}")


def test_instances_list_table(services: FakeServices, cli: Cli) -> None:
    code, out, err = cli("instances", "list", "--region", "cn-hangzhou")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    header = ["ID", "NAME", "REGION", "STATUS", "PRIORITY", "DAILY", "NEXT", "BACKUP", "(UTC+08:00)", "AGENT"]
    assert lines[0].split() == header
    assert lines[1].split() == [
        "i-1", "web-1", "cn-hangzhou", "running", "low", "02:30", "2026-01-01", "11:00:00", "0.1.0",
    ]  # fmt: skip
    assert len(lines) == 3
    request = services.calls.last("ListInstances")
    # no --account: the empty field means "the credential's only account" (ADR 0024)
    assert (request.account_id, request.region) == ("", "cn-hangzhou")  # type: ignore[attr-defined]


def test_instances_list_json_and_account(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("--account", "acme", "instances", "list", "--json")
    assert code == 0
    data = json.loads(out)
    assert [i["instance_id"] for i in data] == ["i-1", "i-2"]
    assert data[0]["status"] == "RUNNING_STATUS_RUNNING"
    assert services.calls.last("ListInstances").account_id == "acme"  # type: ignore[attr-defined]


def test_activate_defaults_send_no_settings(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("instances", "activate", "web-9")
    assert code == 0
    assert "Enrollment token (shown only once, valid 24 h): tok-secret" in out
    assert "Status:" in out and "preparing" in out
    request = services.calls.last("ActivateBackup")
    assert (request.name, request.region, request.has_settings) == ("web-9", "local", False)  # type: ignore[attr-defined]


def test_activate_with_priority_and_time(services: FakeServices, cli: Cli) -> None:
    code, _, _ = cli("instances", "activate", "db", "--region", "eu", "--priority", "high", "--time", "23:45")
    assert code == 0
    request = services.calls.last("ActivateBackup")
    settings = request.settings  # type: ignore[attr-defined]
    assert request.has_settings  # type: ignore[attr-defined]
    assert (settings.priority, settings.daily_start_minute, settings.keep_latest_version) == (
        common_pb2.BACKUP_PRIORITY_HIGH,
        23 * 60 + 45,
        True,
    )


def test_activate_with_priority_only_picks_a_default_window_time(services: FakeServices, cli: Cli) -> None:
    assert cli("instances", "activate", "db", "--priority", "high")[0] == 0
    assert services.calls.last("ActivateBackup").settings.daily_start_minute < 360  # type: ignore[attr-defined]


def test_show_instance_fields(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("instances", "show", "i-1")
    assert code == 0
    assert field(out, "Daily start") == "02:30 (UTC+08:00)"
    assert field(out, "Keep latest") == "on"
    assert field(out, "Roots") == "all block-storage filesystems"
    assert field(out, "Activated") == "2026-01-01 10:00:00"
    assert field(out, "Agent version") == "0.1.0"


def test_pause_resume_cancel(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("instances", "pause", "i-1")
    assert code == 0 and "paused" in out and field(out, "Next backup") == "-"
    assert "running" in cli("instances", "resume", "i-1")[1]
    assert "canceled" in cli("instances", "cancel", "i-1")[1]
    assert [r.instance_id for r in services.calls.requests["CancelBackup"]] == ["i-1"]  # type: ignore[attr-defined]


def test_set_builds_update_mask(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("instances", "set", "i-1", "--priority", "high", "--time", "04:00", "--keep-latest", "off")
    assert code == 0
    request = services.calls.last("UpdateSettings")
    assert list(request.update_mask) == ["priority", "daily_start_minute", "keep_latest_version"]  # type: ignore[attr-defined]
    assert field(out, "Keep latest") == "off" and "04:00" in out
    cli("instances", "set", "i-1", "--time", "00:00")
    request = services.calls.last("UpdateSettings")
    assert list(request.update_mask) == ["daily_start_minute"]  # type: ignore[attr-defined]
    assert request.settings.daily_start_minute == 0  # type: ignore[attr-defined]


def test_set_without_changes_is_a_usage_error(services: FakeServices, cli: Cli) -> None:
    code, out, err = cli("instances", "set", "i-1")
    assert (code, out) == (2, "")
    assert err == "error: nothing to change: pass --priority, --time or --keep-latest\n"
    assert "UpdateSettings" not in services.calls.requests


@pytest.mark.parametrize("bad", ["24:00", "7", "ab:cd", "12:60"])
def test_bad_time_is_rejected_by_the_parser(services: FakeServices, cli: Cli, bad: str) -> None:
    with pytest.raises(SystemExit) as info:
        cli("instances", "set", "i-1", "--time", bad)
    assert info.value.code == 2


def test_backup_now_prints_job(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("instances", "backup-now", "i-1")
    assert code == 0
    assert field(out, "Job") == "j-2" and "queued" in out


def test_jobs_list_and_show(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("jobs", "list", "i-1", "--limit", "5")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("JOB  ")
    assert lines[1].split()[:2] == ["j-1", "complete"]
    assert "2.0 KiB" in lines[1] and "v-1" in lines[1]
    assert services.calls.last("ListJobs").page_size == 5  # type: ignore[attr-defined]
    code, out, _ = cli("jobs", "show", "j-1")
    assert field(out, "Scanned") == "12 files, 4.0 KiB"
    assert field(out, "Finished") == "2026-01-01 10:01:30"


def test_jobs_list_follows_pages_up_to_the_limit(services: FakeServices, cli: Cli) -> None:
    for n in range(3, 6):
        services.scheduler.jobs[f"j-{n}"] = scheduler_pb2.BackupJob(job_id=f"j-{n}", instance_id="i-1")
    code, out, _ = cli("jobs", "list", "i-1", "--limit", "0")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["j-1", "j-3", "j-4", "j-5"]
    requests = services.calls.requests["ListJobs"]
    assert [(r.page_size, r.page_token) for r in requests] == [(1000, ""), (1000, "2")]  # type: ignore[attr-defined]
    code, out, _ = cli("jobs", "list", "i-1", "--limit", "3")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["j-1", "j-3", "j-4"]
    assert [(r.page_size, r.page_token) for r in requests[2:]] == [(3, ""), (1, "2")]  # type: ignore[attr-defined]


def test_versions_list(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("versions", "list", "i-1")
    assert code == 0
    row = out.splitlines()[1].split()
    assert row[0] == "v-1" and "p-1" in row and "/" in row and row[-1] == "yes"
    assert out.splitlines()[2].split()[0] == "v-0"  # from the second page
    assert [r.page_token for r in services.calls.requests["ListVersions"]] == ["", "page-2"]  # type: ignore[attr-defined]


def test_browse_is_ls_like_and_follows_pages(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("browse", "p-1", "/docs/")
    assert code == 0
    assert out.splitlines() == [
        "drwxr-xr-x  4096  2026-01-01 10:00  docs/",
        "-rw-r--r--    23  2026-01-01 10:00  hello.txt",
        "lrwxrwxrwx     9  2026-01-01 10:00  latest -> hello.txt",
    ]
    requests = services.calls.requests["BrowsePoint"]
    assert [r.page_token for r in requests] == ["", "page-2"]  # type: ignore[attr-defined]
    assert requests[0].path == "docs"  # type: ignore[attr-defined]


def test_browse_json(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("--json", "browse", "p-1")
    assert code == 0
    assert [e["path"] for e in json.loads(out)] == ["docs", "hello.txt", "latest"]


def test_search_follows_pages_and_shows_each_hits_versions(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("search", "*.conf", "--instance", "i-1", "-i")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["INSTANCE", "PATH", "VERSIONS", "NEWEST", "CREATED", "SIZE"]
    assert lines[1].split()[:4] == ["i-1", "/etc/nginx/nginx.conf", "2", "v-2"]
    assert lines[2].split()[:4] == ["i-2", "/srv/site.conf", "1", "v-1"]
    requests = services.calls.requests["ListFiles"]
    assert [r.page_token for r in requests] == ["", "page-2"]  # type: ignore[attr-defined]
    assert requests[0].pattern == "*.conf" and requests[0].instance_id == "i-1"  # type: ignore[attr-defined]
    assert requests[0].ignore_case  # type: ignore[attr-defined]


def test_search_limit_stops_paging(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("search", "*.conf", "--limit", "1")
    assert code == 0 and "/srv/site.conf" not in out and "showing the first 1" in out
    assert len(services.calls.requests["ListFiles"]) == 1


def test_search_refusal_is_one_line(services: FakeServices, cli: Cli) -> None:
    code, _, err = cli("search", "etc/*.conf")
    assert code == 1 and "contains '/'" in err


def test_history(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("history", "i-1", "/etc/hosts")
    assert code == 0
    assert out.splitlines()[0].startswith("/etc/hosts on i-1")
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["v-2", "v-1"]
    code, out, _ = cli("--json", "history", "i-1", "/etc/hosts")
    assert [v["size"] for v in json.loads(out)["versions"]] == [130, 120]
    code, _, err = cli("history", "i-9", "/etc/hosts")
    assert code == 1 and "i-9" in err


def test_restore_create_request(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli(
        "restore", "create", "p-1", "--include", "docs", "--include", "hello.txt", "--exclude", "docs/tmp",
        "--target-instance", "i-2", "--target-path", "/tmp/r", "--overwrite",
    )  # fmt: skip
    assert code == 0
    request = services.calls.last("CreateRestoreJob")
    assert list(request.include_paths) == ["docs", "hello.txt"]  # type: ignore[attr-defined]
    assert list(request.exclude_paths) == ["docs/tmp"]  # type: ignore[attr-defined]
    assert request.target_instance_id == "i-2"  # type: ignore[attr-defined]
    assert request.conflict_policy == gateway_pb2.CONFLICT_POLICY_OVERWRITE  # type: ignore[attr-defined]
    assert field(out, "Restore job") == "r-1" and "queued" in out


def test_restore_default_policy_is_skip(services: FakeServices, cli: Cli) -> None:
    assert cli("restore", "create", "p-1")[0] == 0
    assert services.calls.last("CreateRestoreJob").conflict_policy == gateway_pb2.CONFLICT_POLICY_SKIP  # type: ignore[attr-defined]
    assert not services.calls.last("CreateRestoreJob").confirm_original_path_on_other_instance  # type: ignore[attr-defined]


def test_restore_onto_another_instance_at_the_original_path_is_confirmed(services: FakeServices, cli: Cli) -> None:
    assert cli("restore", "create", "p-1", "--target-instance", "i-2", "--confirm-original-path")[0] == 0
    request = services.calls.last("CreateRestoreJob")
    assert (request.target_instance_id, request.target_path) == ("i-2", "")  # type: ignore[attr-defined]
    assert request.confirm_original_path_on_other_instance  # type: ignore[attr-defined]


def test_restore_wait_polls_until_complete(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("restore", "create", "p-1", "--wait", "--poll-interval", "0.01")
    assert code == 0
    assert out.startswith("Restore job:")  # not a terminal: no progress bar, only the result
    assert field(out, "Status") == "complete"
    assert len(services.calls.requests["GetRestoreJob"]) == 2


def test_restore_wait_exits_1_when_failed(services: FakeServices, cli: Cli) -> None:
    services.restore.final_status = common_pb2.JOB_STATUS_FAILED
    code, out, _ = cli("restore", "create", "p-1", "--target-path", "/nope", "--wait", "--poll-interval", "0.01")
    assert code == 1
    assert field(out, "Status") == "failed" and "target path /nope does not exist" in out


def test_restore_wait_lists_the_failed_files_of_a_partial_restore(services: FakeServices, cli: Cli) -> None:
    services.restore.final_status = common_pb2.JOB_STATUS_PARTIAL_COMPLETE
    code, out, _ = cli("restore", "create", "p-1", "--wait", "--poll-interval", "0.01")
    assert code == 3  # partially complete: the files listed below failed
    assert field(out, "Status") == "partial complete" and field(out, "Failed") == "3 files"
    assert out.endswith(
        "Failed files:\n"
        "  docs/a.txt: chunk 3f2a of this file is damaged in storage (x)\n"
        "  odd\\x0aname: chunk 77 of this file is damaged in storage (y)\n"
        "  ... and 1 more (only the first 2 are kept)\n"
    )
    assert "Failed files:" in cli("restore", "show", "r-1")[1]


def test_restore_show_list_cancel(services: FakeServices, cli: Cli) -> None:
    cli("restore", "create", "p-1")
    listed = cli("restore", "list", "i-1")[1]
    assert "r-1" in listed and "r-0" in listed  # the second page's job too
    assert [r.page_token for r in services.calls.requests["ListRestoreJobs"]] == ["", "page-2"]  # type: ignore[attr-defined]
    assert "canceling" in cli("restore", "cancel", "r-1")[1]
    code, _, err = cli("restore", "show", "r-9")
    assert (code, err) == (1, "error: NOT_FOUND: restore job r-9 not found\n")


def test_overview_all_regions(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("overview")
    assert code == 0
    assert field(out, "Backed-up instances") == "5"
    assert field(out, "Free quota used") == "100.0 GiB (107374182400 bytes)"
    assert field(out, "Billable capacity") == "130.0 GiB (139586437120 bytes)"
    assert field(out, "Free quota remaining") == "0 B (0 bytes)"
    # admission (ADR 0058): the account's figures with the fleet's cap, from the scheduler
    assert field(out, "Backups running") == "3"
    assert field(out, "Waiting for a backup slot") == "2 (oldest since 2026-01-02 02:00:00)"
    assert field(out, "Concurrent backups cap") == "40 (whole fleet)"
    assert services.calls.last("GetAdmission").region == ""  # type: ignore[attr-defined]


def test_overview_region_has_no_quota(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("overview", "--region", "cn-hangzhou")
    assert code == 0
    assert field(out, "Backed-up instances") == "2"
    assert "Free quota" not in out
    assert (field(out, "Backups running"), field(out, "Waiting for a backup slot")) == ("1", "0")
    assert services.calls.last("GetAdmission").region == "cn-hangzhou"  # type: ignore[attr-defined]


def test_billing_ledger_shows_the_rule_and_the_rows(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("billing", "ledger", "--from", "2026-12-01", "--to", "2026-12-02", "--instances")
    assert code == 0
    assert "Days end at 00:00 UTC+08:00" in out
    assert "2026-12-02" in out and "0.0250 USD" in out and "150.0 GiB" in out
    assert "v-1" in out  # the billed version of each instance
    request = services.calls.last("ListLedger")
    assert (request.from_day, request.to_day, request.include_instances) == ("2026-12-01", "2026-12-02", True)
    # the day cut between two pages is one summary row, its instance rows from both pages
    assert [r.page_token for r in services.calls.requests["ListLedger"]] == ["", "page-2"]  # type: ignore[attr-defined]
    assert sum(1 for line in out.splitlines() if line.startswith("2026-12-02") and "USD" in line) == 1
    assert "v-2" in out


def test_billing_plans_list_and_create(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("billing", "plans", "list")
    assert code == 0 and "pl-1" in out and "3000.0000" in out and "pl-0" in out  # both pages
    args = ("billing", "plans", "create", "--gib-days", "300", "--starts-on", "2026-12-01", "--ends-on", "2026-12-31")
    code, out, _ = cli(*args)
    assert code == 0 and "pl-2" in out
    assert services.calls.last("CreatePlan").gib_days == "300"
    code, _, err = cli("billing", "plans", "create", "--gib-days", "bad", "--starts-on", "x", "--ends-on", "y")
    assert (code, err) == (1, "error: INVALID_ARGUMENT: gib_days must be a decimal number, got 'bad'\n")


def test_overview_json(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("overview", "--json")
    data = json.loads(out)
    assert data["billable_capacity_bytes"] == 130 << 30
    assert data["unbacked_up_instances"] == 3
    assert data["admission"]["waiting_backups"] == 2
    assert data["admission"]["oldest_waiting_since"] == "2026-01-01T18:00:00Z"


def test_json_includes_zero_values(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("overview", "--region", "r1", "--json")
    data = json.loads(out)
    assert (data["free_quota_bytes"], data["billable_capacity_bytes"]) == (0, 0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("instances", "show", "i-404"), "error: NOT_FOUND: instance i-404 not found\n"),
        (("jobs", "cancel", "j-1"), "error: FAILED_PRECONDITION: backup job j-1 already finished (COMPLETE)\n"),
        (("browse", "p-9"), "error: NOT_FOUND: point p-9 not found\n"),
        (("restore", "create", "p-2"), "error: FAILED_PRECONDITION: point p-2 is not browsable yet\n"),
    ],
)
def test_grpc_errors_are_one_line_and_exit_1(
    services: FakeServices, cli: Cli, argv: tuple[str, ...], message: str
) -> None:
    code, out, err = cli(*argv)
    assert (code, out, err) == (1, "", message)


def test_paused_instance_backup_now_fails(services: FakeServices, cli: Cli) -> None:
    cli("instances", "pause", "i-2")
    code, _, err = cli("instances", "backup-now", "i-2")
    assert (code, err) == (1, "error: FAILED_PRECONDITION: backup of instance i-2 is paused\n")


def test_unreachable_service_is_one_line(services: FakeServices, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = cli("--scheduler", "127.0.0.1:1", "--timeout", "2", "instances", "list")
    assert code == 1
    assert err.startswith(("error: UNAVAILABLE: ", "error: DEADLINE_EXCEEDED: "))
    assert len(err.splitlines()) == 1


def test_missing_address_explains_how_to_set_it(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STRONGROOM_BILLING_ADDR", raising=False)
    code, _, err = cli("overview")
    assert code == 1
    assert "no address for the billing service: pass --billing HOST:PORT, set STRONGROOM_BILLING_ADDR" in err


def test_sizes() -> None:
    assert [output.size(n) for n in (0, 1023, 1024, 1536, 100 << 30)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "100.0 GiB",
    ]


def test_times_show_in_the_zone_asked_for(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("--tz", "UTC", "instances", "show", "i-1")
    assert code == 0
    assert field(out, "Activated") == "2026-01-01 02:00:00"  # 10:00 in UTC+8
    assert field(out, "Daily start") == "02:30 (UTC+08:00)"  # a minute of the schedule zone, named
    code, out, _ = cli("--tz", "Asia/Kolkata", "instances", "list")
    assert "(IST)" in out.splitlines()[0] and "2026-01-01 08:30:00" in out


def test_an_unknown_zone_is_refused(services: FakeServices, cli: Cli) -> None:
    code, _, err = cli("--tz", "Nowhere/Atlantis", "instances", "list")
    assert code == 2 and "error: --tz: unknown zone 'Nowhere/Atlantis'" in err


def test_by_default_times_show_in_this_machines_zone(
    services: FakeServices, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRONGROOM_TZ")
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        code, out, _ = cli("instances", "show", "i-1")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert code == 0
    assert field(out, "Activated") == "2026-01-01 11:00:00"  # 02:00 UTC in Tokyo


def test_backup_now_wait_follows_the_job_to_its_end(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("instances", "backup-now", "i-1", "--wait", "--poll-interval", "0.01")
    assert code == 0
    assert field(out, "Status") == "complete"
    assert field(out, "Version") == "v-2"
    code, out, _ = cli("--json", "instances", "backup-now", "i-2", "--wait", "--poll-interval", "0.01")
    assert code == 3  # partially complete: some files failed
    assert json.loads(out)["status"] == "JOB_STATUS_PARTIAL_COMPLETE"


def test_without_wait_backup_now_returns_at_once(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("instances", "backup-now", "i-1")
    assert (code, field(out, "Status")) == (0, "queued")


def test_errors_are_json_under_json(services: FakeServices, cli: Cli) -> None:
    code, out, err = cli("--json", "jobs", "show", "j-9")
    assert code == 1 and err == ""
    assert json.loads(out) == {"error": {"code": "NOT_FOUND", "message": "backup job j-9 not found"}}


def test_a_list_of_an_unknown_instance_exits_non_zero(services: FakeServices, cli: Cli) -> None:
    code, _, err = cli("versions", "list", "i-nope")
    assert (code, err) == (1, "error: NOT_FOUND: instance i-nope not found\n")
    code, _, err = cli("restore", "list", "i-nope")
    assert (code, err) == (1, "error: NOT_FOUND: instance i-nope not found\n")
    assert cli("restore", "list", "i-1")[0] == 0  # known, with no restore jobs yet


def test_version(cli: Cli) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("--version")
    assert exited.value.code == 0


def test_a_closed_pipe_ends_quietly(services: FakeServices) -> None:
    # `true` exits without reading: the CLI's first write meets a closed pipe
    command = f"{shlex.quote(sys.executable)} -m strongroom_cli --json instances list | true"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 0


def test_instances_list_reads_every_page(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("instances", "list")
    assert code == 0 and "i-1" in out and "i-2" in out
    assert [r.page_token for r in services.calls.requests["ListInstances"]] == ["", "1"]
