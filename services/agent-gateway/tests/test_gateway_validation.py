"""Validation at the edge: every string and bytes field an agent sends gets hostile values.

Each refusal is INVALID_ARGUMENT naming the field and the problem, never echoing the value, and
happens before anything is written (no manifest object, no point, no event, no consumed token).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from gateway_helpers import AGENT_VERSION, Agent, GatewayHarness, aiter_of, dir_entry
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_gateway import validation
from strongroom_gateway.errors import InvalidArgument
from strongroom_platform import events

LONG_NAME = "n" * 256
LONG_PATH = "/".join(["d" * 200] * 21)  # > 4096 bytes, every component legal
# What Python makes of an undecodable byte (surrogateescape). protobuf refuses it in a message (and
# invalid UTF-8 bytes on the wire: test_invalid_utf8_on_the_wire_never_reaches_the_gateway), so the
# validators are fed it directly, for callers that pass plain strings.
SURROGATE = "a\udcffb"

# (value, problem the message must name)
HOSTILE_PATHS = [
    ("a\x00b", "NUL"),
    ("/etc/passwd", "relative"),
    ("..", "'..'"),
    ("a/../../b", "'..'"),
    ("./a", "'.'"),
    ("a//b", "empty"),
    ("a/", "empty"),
    (LONG_PATH, "4096"),
    (f"a/{LONG_NAME}", "255"),
]
HOSTILE_LABELS = [
    ("host\x00name", "NUL"),
    ("host\nname", "control"),
    ("host\x1b[31m", "control"),
    ("host\x7f", "control"),
    ("host\x85", "control"),
    ("h" * 256, "255"),
]
HOSTILE_IDS = [
    ("job\x00", "not an id"),
    ("../job", "not an id"),
    ("job/1", "not an id"),
    ("job 1", "not an id"),
    (".job", "not an id"),
    ("j" * 129, "128"),
]
HOSTILE_MOUNT_POINTS = [
    ("", "missing"),
    ("data", "absolute"),
    ("../data", "absolute"),
    ("/data/../etc", "normalized"),
    ("/data/", "normalized"),
    ("//data", "normalized"),
    ("/da\x00ta", "NUL"),
    ("/da\nta", "control"),
    ("C:data", "absolute"),
    ("C:\\data\\..", "normalized"),
    ("/" + "m" * 4096, "4096"),
]
HOSTILE_TEXTS = [
    ("error\x00", "NUL"),
    ("e" * (validation.MAX_ERROR_BYTES + 1), "bytes"),
]


def _refusal(call: Callable[[], object], field: str, problem: str, value: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        call()
    message = str(caught.value)
    assert message.startswith(f"{field}: "), message
    assert problem in message, message
    if len(value) > 4:  # short values ('..') may coincide with the wording
        assert value not in message, "the hostile value is echoed"


@pytest.mark.parametrize(("value", "problem"), HOSTILE_PATHS)
def test_entry_paths_deleted_paths_and_filters_refuse_hostile_paths(value: str, problem: str) -> None:
    entry = _entry_with(path=value)
    _refusal(lambda: validation.entry("entries[4]", entry), "entries[4].path", problem, value)
    batch = gateway_pb2.EntryBatch(deleted_paths=[value])
    _refusal(lambda: validation.entry_batch(batch, 0, 7), "deleted_paths[7]", problem, value)
    if not value.startswith("/") and not value.endswith("/"):  # filters forgive leading and trailing '/'
        request = gateway_pb2.ReadManifestRequest(restore_job_id="r-1", include_paths=[value])
        _refusal(lambda: validation.read_manifest_request(request), "include_paths[0]", problem, value)


@pytest.mark.parametrize(("value", "problem"), [("a\x00b", "NUL"), ("", "empty"), ("t" * 4097, "4096")])
def test_link_targets_refuse_nul_invalid_utf8_empty_and_over_long(value: str, problem: str) -> None:
    entry = _entry_with(path="link", type=common_pb2.ENTRY_TYPE_SYMLINK, link_target=value)
    _refusal(lambda: validation.entry("entries[0]", entry), "entries[0].link_target", problem, value)


@pytest.mark.parametrize(
    "check",
    [
        lambda v: validation.relative_path("f", v),
        lambda v: validation.link_target("f", v),
        lambda v: validation.mount_point("f", "/" + v),
        lambda v: validation.label("f", v),
        lambda v: validation.text("f", v, max_bytes=100),
    ],
)
def test_every_string_kind_refuses_what_is_not_utf8(check: Callable[[str], None]) -> None:
    _refusal(lambda: check(SURROGATE), "f", "not valid UTF-8", SURROGATE)
    with pytest.raises(InvalidArgument, match="not an id"):
        validation.identifier("f", SURROGATE)


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd", "b.conf", "dir with\nnewline"])
def test_link_targets_may_be_absolute_relative_or_climb(target: str) -> None:
    validation.entry("e", _entry_with(path="link", type=common_pb2.ENTRY_TYPE_SYMLINK, link_target=target))


@pytest.mark.parametrize("path", ["", "a", "etc/a.conf", "name with\nnewline\tand tab", "é/ü", "d" * 255])
def test_legal_paths_pass(path: str) -> None:
    validation.entry("e", _entry_with(path=path))


def test_entries_refuse_unknown_types_stray_fields_bad_chunk_ids_and_mode_bits() -> None:
    _refusal(lambda: validation.entry("e", _entry_with(path="a", type=0)), "e.type", "file", "")
    link_on_file = _entry_with(path="a", link_target="x")
    _refusal(lambda: validation.entry("e", link_on_file), "e.link_target", "not a symlink", "")
    chunks_on_dir = _entry_with(path="a", type=common_pb2.ENTRY_TYPE_DIRECTORY, chunk_ids=[b"\x00" * 32])
    _refusal(lambda: validation.entry("e", chunks_on_dir), "e.chunk_ids", "not a file", "")
    short_id = _entry_with(path="a", chunk_ids=[b"\x00" * 32, b"\x00" * 31])
    _refusal(lambda: validation.entry("e", short_id), "e.chunk_ids[1]", "32 bytes", "")
    _refusal(lambda: validation.entry("e", _entry_with(path="a", mode=0o100644)), "e.mode", "07777", "")


@pytest.mark.parametrize(("value", "problem"), HOSTILE_IDS)
def test_ids_refuse_anything_but_id_characters(value: str, problem: str) -> None:
    header = gateway_pb2.PointHeader(filesystem=common_pb2.Filesystem(mount_point="/"))
    header.job_id = value
    _refusal(lambda: validation.point_header(header), "header.job_id", problem, value)
    header.job_id = "job-1"
    header.base_point_id = value
    _refusal(lambda: validation.point_header(header), "header.base_point_id", problem, value)
    request = gateway_pb2.ReadManifestRequest(restore_job_id="r-1")
    request.point_id = value
    _refusal(lambda: validation.read_manifest_request(request), "point_id", problem, value)
    finished = gateway_pb2.JobFinished()
    finished.job_id = value
    _refusal(lambda: validation.finished(finished), "finished.job_id", problem, value)


@pytest.mark.parametrize(("value", "problem"), HOSTILE_LABELS)
def test_labels_refuse_nul_control_characters_invalid_utf8_and_over_long(value: str, problem: str) -> None:
    for field in ("hostname", "os", "arch", "agent_version"):
        request = gateway_pb2.EnrollRequest(enrollment_token="t")
        setattr(request, field, value)
        _refusal(lambda r=request: validation.enroll_request(r), field, problem, value)
    for field in ("hostname", "agent_version"):
        hello = gateway_pb2.AgentHello()
        setattr(hello, field, value)
        _refusal(lambda h=hello: validation.hello(h), f"hello.{field}", problem, value)
    fs = common_pb2.Filesystem(mount_point="/", fs_type=value)
    hello = gateway_pb2.AgentHello()
    hello.filesystems.append(common_pb2.Filesystem(mount_point="/data"))
    hello.filesystems.append(fs)
    _refusal(lambda: validation.hello(hello), "hello.filesystems[1].fs_type", problem, value)


@pytest.mark.parametrize(("value", "problem"), HOSTILE_MOUNT_POINTS)
def test_mount_points_must_be_absolute_and_normalized(value: str, problem: str) -> None:
    fs = common_pb2.Filesystem(mount_point=value)
    header = gateway_pb2.PointHeader(job_id="job-1", filesystem=fs)
    hello = gateway_pb2.AgentHello(filesystems=[fs])
    _refusal(lambda: validation.point_header(header), "header.filesystem.mount_point", problem, value)
    _refusal(lambda: validation.hello(hello), "hello.filesystems[0].mount_point", problem, value)


@pytest.mark.parametrize("mount_point", ["/", "/data", "/mnt/with space", "C:\\", "C:\\Data", "/é"])
def test_legal_mount_points_pass(mount_point: str) -> None:
    validation.mount_point("m", mount_point)


def test_a_mount_point_listed_twice_is_refused() -> None:
    hello = gateway_pb2.AgentHello(filesystems=[common_pb2.Filesystem(mount_point="/")] * 2)
    _refusal(lambda: validation.hello(hello), "hello.filesystems[1].mount_point", "twice", "")


@pytest.mark.parametrize(("value", "problem"), HOSTILE_TEXTS)
def test_error_texts_refuse_nul_invalid_utf8_and_over_long(value: str, problem: str) -> None:
    finished = gateway_pb2.JobFinished(job_id="job-1")
    finished.error = value
    _refusal(lambda: validation.finished(finished), "finished.error", problem, value)
    finished = gateway_pb2.JobFinished(job_id="job-1", file_errors=["fine", value])
    _refusal(lambda: validation.finished(finished), "finished.file_errors[1]", problem, value)
    failed = [common_pb2.FileError(path="a", reason="fine"), common_pb2.FileError(path="b", reason=value)]
    finished = gateway_pb2.JobFinished(job_id="job-1", failed_files=failed)
    _refusal(lambda: validation.finished(finished), "finished.failed_files[1].reason", problem, value)


def test_error_texts_keep_newlines_and_tabs() -> None:
    validation.finished(gateway_pb2.JobFinished(job_id="job-1", error="line 1\n\tline 2", file_errors=["a\nb: x"]))


@pytest.mark.parametrize("token", ["tok\x00en", "tok en", "tök", "t" * 257])
def test_enrollment_tokens_are_bounded_printable_ascii(token: str) -> None:
    request = gateway_pb2.EnrollRequest(enrollment_token=token)
    _refusal(lambda: validation.enroll_request(request), "enrollment_token", "printable ASCII", token)


@pytest.mark.parametrize("length", [0, 31, 33, 4096])
def test_chunk_ids_must_be_32_bytes(length: int) -> None:
    _refusal(lambda: validation.chunk_ids("chunk_ids", [b"\x01" * 32, b"\x02" * length]), "chunk_ids[1]", "32", "")


# --- through the gRPC edge: refused before anything is written -----------------------------------


async def _backup_job(gw: GatewayHarness) -> Agent:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    return agent


async def _commit_code(gw: GatewayHarness, agent: Agent, header: Any, entries: list[Any]) -> grpc.aio.AioRpcError:
    requests = [
        gateway_pb2.CommitPointRequest(header=header),
        gateway_pb2.CommitPointRequest(entries=gateway_pb2.EntryBatch(entries=entries)),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.CommitPoint(aiter_of(requests), metadata=agent.md)
    return caught.value


def _header(mount_point: str = "/") -> gateway_pb2.PointHeader:
    return gateway_pb2.PointHeader(job_id="job-1", filesystem=common_pb2.Filesystem(mount_point=mount_point))


async def _nothing_written(gw: GatewayHarness) -> None:
    assert [k async for k in gw.objects.list("manifests/")] == []
    assert not gw.store.events(events.POINT_CREATED)
    async with gw.store.transaction() as tx:
        assert await tx.find_point("job-1", "/") is None


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (common_pb2.FileEntry(path="link", type=common_pb2.ENTRY_TYPE_SYMLINK, link_target="/a\x00b"), "link_target"),
        (common_pb2.FileEntry(path="a\x00b", type=common_pb2.ENTRY_TYPE_DIRECTORY), "path"),
        (common_pb2.FileEntry(path="../escape", type=common_pb2.ENTRY_TYPE_DIRECTORY), "path"),
        (common_pb2.FileEntry(path="/etc/cron.d/x", type=common_pb2.ENTRY_TYPE_DIRECTORY), "path"),
    ],
)
async def test_commit_with_a_hostile_entry_is_refused_before_any_write(
    gw: GatewayHarness, entry: common_pb2.FileEntry, field: str
) -> None:
    agent = await _backup_job(gw)
    error = await _commit_code(gw, agent, _header(), [dir_entry(""), entry])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"entries[1].{field}: ")
    assert "\x00" not in (error.details() or "")
    await _nothing_written(gw)


async def test_commit_with_a_hostile_mount_point_is_refused(gw: GatewayHarness) -> None:
    agent = await _backup_job(gw)
    error = await _commit_code(gw, agent, _header("/data/../etc"), [dir_entry("")])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("header.filesystem.mount_point: ")
    await _nothing_written(gw)


async def test_invalid_utf8_on_the_wire_never_reaches_the_gateway(gw: GatewayHarness) -> None:
    agent = await _backup_job(gw)
    header = gateway_pb2.CommitPointRequest(header=_header()).SerializeToString()
    # EntryBatch{entries: FileEntry{path: "a\xffb", type: DIRECTORY}} built by hand: no client library would.
    entry = b"\x0a\x03a\xffb\x10\x02"
    batch = b"\x12" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry
    call = gw.channel.stream_unary(
        "/strongroom.agent.v1.AgentGatewayService/CommitPoint",
        request_serializer=lambda raw: raw,
        response_deserializer=gateway_pb2.CommitPointResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(aiter_of([header, batch]), metadata=agent.md)
    assert caught.value.code() != grpc.StatusCode.OK
    await _nothing_written(gw)


async def test_enroll_with_a_hostile_hostname_is_refused_and_the_token_stays_usable(gw: GatewayHarness) -> None:
    token = await gw.activate("i-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Enroll(gateway_pb2.EnrollRequest(enrollment_token=token, hostname="h\x00st"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "hostname: contains a NUL byte"
    assert not gw.store.events(events.AGENT_ENROLLED)
    response = await gw.stub.Enroll(
        gateway_pb2.EnrollRequest(enrollment_token=token, hostname="host", agent_version=AGENT_VERSION)
    )
    assert response.instance_id == "i-1"


async def test_a_finished_report_with_a_nul_in_its_error_is_refused_and_not_forwarded(gw: GatewayHarness) -> None:
    agent = await _backup_job(gw)
    call = gw.stub.Connect(metadata=agent.md)
    assert (await asyncio.wait_for(call.read(), 5)).run_backup.job_id == "job-1"
    before = len(gw.store.events(events.JOB_UPDATED))
    await call.write(
        gateway_pb2.AgentReport(
            finished=gateway_pb2.JobFinished(job_id="job-1", status=common_pb2.JOB_STATUS_FAILED, error="disk\x00full")
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while True:
            await asyncio.wait_for(call.read(), 5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "finished.error: contains a NUL byte"
    assert len(gw.store.events(events.JOB_UPDATED)) == before


# --- helpers --------------------------------------------------------------------------------------


def _entry_with(**fields: Any) -> common_pb2.FileEntry:
    fields.setdefault("type", common_pb2.ENTRY_TYPE_FILE)
    return common_pb2.FileEntry(**fields)
