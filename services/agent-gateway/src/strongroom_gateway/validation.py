"""Validation at the edge: every string and bytes field an agent sends, checked before anything is written.

The gateway stores agent input in PostgreSQL, in manifests and in events that other services store
in turn; a value one of them cannot hold (a NUL byte in PostgreSQL ``text``, an unpaired surrogate
that does not encode as UTF-8) would fail there, after the gateway accepted it, and be retried
forever. So each field is checked here, by kind, and refused with ``InvalidArgument`` naming the
field and the problem. The value itself is never echoed: it is hostile by assumption. Limits and
rules are documented in ``docs/formats/agent-input.md``.

Kinds of field:
- **ids** (job, restore job, point ids; the instance id of a credential): ``_ID``, printable ASCII.
- **labels** (hostname, os, arch, agent version, device, filesystem type): UTF-8, no control
  characters, at most ``MAX_LABEL_BYTES``.
- **paths** (entry paths, deleted, include and exclude paths): UTF-8, no NUL, relative,
  '/'-separated, no empty, '.' or '..' component, at most ``MAX_PATH_BYTES`` and
  ``MAX_NAME_BYTES`` per component. Other control characters are legal in POSIX file names
  (a newline in a name is unusual but real) and are kept byte for byte.
- **mount points**: absolute, normalized (POSIX ``/a/b``, Windows ``C:\\a``), no control characters.
- **link targets**: UTF-8, no NUL, non-empty, at most ``MAX_PATH_BYTES``; relative, absolute and
  '..' targets are all legal symlinks (restores create them as links and never follow them).
- **texts** (a job's error and file errors): UTF-8, no NUL, bounded.
- **chunk ids**: exactly 32 bytes.

Every proto ``string`` already arrives as valid UTF-8 from the wire (protobuf refuses other bytes
while parsing); the UTF-8 check still matters for callers that build messages in-process.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2

from strongroom_gateway.chunks import CHUNK_ID_SIZE
from strongroom_gateway.errors import InvalidArgument

MAX_ID_CHARS = 128
MAX_LABEL_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_TOKEN_CHARS = 256
MAX_ERROR_BYTES = 16 << 10
MAX_FILE_ERROR_BYTES = 8 << 10
MAX_FILESYSTEMS = 256
MAX_PATH_FILTERS = 1_000

# Ids end up in object keys and the credential ("<instance_id>.<secret>").
ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.:-]{0,127}")
_TOKEN = re.compile(r"[\x21-\x7e]+")
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:\\")
_ENTRY_TYPES = frozenset({common_pb2.ENTRY_TYPE_FILE, common_pb2.ENTRY_TYPE_DIRECTORY, common_pb2.ENTRY_TYPE_SYMLINK})


def _refuse(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {problem}")


def _encoded(field: str, value: str, max_bytes: int) -> bytes:
    """``value`` as UTF-8, NUL-free and at most ``max_bytes`` long."""
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(field, "is not valid UTF-8") from None
    if b"\x00" in data:
        raise _refuse(field, "contains a NUL byte")
    if len(data) > max_bytes:
        raise _refuse(field, f"is longer than {max_bytes} bytes")
    return data


def _has_control(value: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in value)


def text(field: str, value: str, *, max_bytes: int) -> None:
    """Free text (an error message): UTF-8, no NUL, bounded; newlines and tabs are fine."""
    _encoded(field, value, max_bytes)


def label(field: str, value: str, *, required: bool = False, max_bytes: int = MAX_LABEL_BYTES) -> None:
    """A short name shown to operators: UTF-8, no control characters, bounded."""
    _encoded(field, value, max_bytes)
    if _has_control(value):
        raise _refuse(field, "contains a control character")
    if required and not value:
        raise _refuse(field, "is missing")


def identifier(field: str, value: str, *, required: bool = True) -> None:
    """A job, restore job or point id: 1-128 characters of ``[A-Za-z0-9_.:-]``, not starting with '.' or ':'."""
    if not value:
        if required:
            raise _refuse(field, "is missing")
        return
    if len(value) > MAX_ID_CHARS:
        raise _refuse(field, f"is longer than {MAX_ID_CHARS} characters")
    if not ID_PATTERN.fullmatch(value):
        raise _refuse(field, "is not an id (letters, digits, '_', '-', '.', ':')")


def relative_path(field: str, value: str) -> None:
    """A point-relative path; '' is the point's root."""
    data = _encoded(field, value, MAX_PATH_BYTES)
    if not data:
        return
    if data.startswith(b"/"):
        raise _refuse(field, "must be relative to the mount point (no leading '/')")
    for part in data.split(b"/"):
        if part in (b"", b".", b".."):
            raise _refuse(field, "has an empty, '.' or '..' component")
        if len(part) > MAX_NAME_BYTES:
            raise _refuse(field, f"has a component longer than {MAX_NAME_BYTES} bytes")


def mount_point(field: str, value: str) -> None:
    """An absolute, normalized mount point: ``/``, ``/data``, ``C:\\`` or ``C:\\data``."""
    _encoded(field, value, MAX_PATH_BYTES)
    if not value:
        raise _refuse(field, "is missing")
    if _has_control(value):
        raise _refuse(field, "contains a control character")
    if value.startswith("/"):
        rest, separator = value[1:], "/"
    elif _WINDOWS_DRIVE.match(value):
        rest, separator = value[3:], "\\"
    else:
        raise _refuse(field, "must be an absolute path")
    if rest and any(part in ("", ".", "..") for part in rest.split(separator)):
        raise _refuse(field, "must be normalized (no empty, '.' or '..' component, no trailing separator)")


def link_target(field: str, value: str) -> None:
    _encoded(field, value, MAX_PATH_BYTES)
    if not value:
        raise _refuse(field, "is empty")


def chunk_id(field: str, value: bytes) -> None:
    if len(value) != CHUNK_ID_SIZE:
        raise _refuse(field, f"must be {CHUNK_ID_SIZE} bytes, got {len(value)}")


def paths(field: str, values: Iterable[str], *, limit: int = MAX_PATH_FILTERS) -> None:
    for number, value in enumerate(values):
        if number >= limit:
            raise _refuse(field, f"has more than {limit} paths")
        relative_path(f"{field}[{number}]", value)


def filesystem(field: str, value: common_pb2.Filesystem) -> None:
    mount_point(f"{field}.mount_point", value.mount_point)
    label(f"{field}.device", value.device, max_bytes=MAX_PATH_BYTES)
    label(f"{field}.fs_type", value.fs_type)


def entry(field: str, value: common_pb2.FileEntry) -> None:
    """One manifest entry (docs/formats/manifest.md)."""
    relative_path(f"{field}.path", value.path)
    if value.type not in _ENTRY_TYPES:
        raise _refuse(f"{field}.type", "is not file, directory or symlink")
    if value.type == common_pb2.ENTRY_TYPE_SYMLINK:
        link_target(f"{field}.link_target", value.link_target)
    elif value.link_target:
        raise _refuse(f"{field}.link_target", "is set on an entry that is not a symlink")
    if value.type != common_pb2.ENTRY_TYPE_FILE and value.chunk_ids:
        raise _refuse(f"{field}.chunk_ids", "are set on an entry that is not a file")
    for number, cid in enumerate(value.chunk_ids):
        chunk_id(f"{field}.chunk_ids[{number}]", cid)
    if value.mode > 0o7777:
        raise _refuse(f"{field}.mode", "has bits beyond the permission bits (07777)")


def enroll_request(request: gateway_pb2.EnrollRequest) -> None:
    if len(request.enrollment_token) > MAX_TOKEN_CHARS or (
        request.enrollment_token and not _TOKEN.fullmatch(request.enrollment_token)
    ):
        raise _refuse("enrollment_token", f"must be at most {MAX_TOKEN_CHARS} printable ASCII characters")
    label("hostname", request.hostname)
    label("os", request.os)
    label("arch", request.arch)
    label("agent_version", request.agent_version)
    filesystems("filesystems", request.filesystems)
    label("host_id", request.host_id)
    if len(request.block_devices) > MAX_FILESYSTEMS:
        raise _refuse("block_devices", f"has more than {MAX_FILESYSTEMS} devices")
    for number, device in enumerate(request.block_devices):
        label(f"block_devices[{number}].device", device.device)
        if device.size_bytes >= 1 << 63:
            raise _refuse(f"block_devices[{number}].size_bytes", "is out of range")


def filesystems(field: str, values: Iterable[common_pb2.Filesystem]) -> None:
    seen: set[str] = set()
    for number, value in enumerate(values):
        if number >= MAX_FILESYSTEMS:
            raise _refuse(field, f"has more than {MAX_FILESYSTEMS} filesystems")
        filesystem(f"{field}[{number}]", value)
        if value.mount_point in seen:
            raise _refuse(f"{field}[{number}].mount_point", "is listed twice")
        seen.add(value.mount_point)


def hello(value: gateway_pb2.AgentHello) -> None:
    label("hello.agent_version", value.agent_version)
    label("hello.hostname", value.hostname)
    filesystems("hello.filesystems", value.filesystems)


def progress(value: gateway_pb2.JobProgress) -> None:
    identifier("progress.job_id", value.job_id)


def finished(value: gateway_pb2.JobFinished) -> None:
    identifier("finished.job_id", value.job_id)
    text("finished.error", value.error, max_bytes=MAX_ERROR_BYTES)
    for number, message in enumerate(value.file_errors):
        text(f"finished.file_errors[{number}]", message, max_bytes=MAX_FILE_ERROR_BYTES)
    for number, failed in enumerate(value.failed_files):
        text(f"finished.failed_files[{number}].path", failed.path, max_bytes=MAX_PATH_BYTES)
        text(f"finished.failed_files[{number}].reason", failed.reason, max_bytes=MAX_FILE_ERROR_BYTES)


def point_header(value: gateway_pb2.PointHeader) -> None:
    identifier("header.job_id", value.job_id)
    filesystem("header.filesystem", value.filesystem)
    identifier("header.base_point_id", value.base_point_id, required=False)


def entry_batch(value: gateway_pb2.EntryBatch, first_entry: int, first_deleted: int) -> None:
    """A batch of a commit; indexes count across the whole stream so the field names the entry."""
    for number, item in enumerate(value.entries, start=first_entry):
        entry(f"entries[{number}]", item)
    for number, path in enumerate(value.deleted_paths, start=first_deleted):
        relative_path(f"deleted_paths[{number}]", path)


def read_manifest_request(value: gateway_pb2.ReadManifestRequest) -> None:
    identifier("restore_job_id", value.restore_job_id)
    identifier("point_id", value.point_id, required=False)
    # Leading and trailing '/' are forgiven for filters (a user typed them); the rest is a path.
    paths("include_paths", (p.strip("/") for p in value.include_paths))
    paths("exclude_paths", (p.strip("/") for p in value.exclude_paths))


def chunk_ids(field: str, values: Iterable[bytes]) -> None:
    for number, value in enumerate(values):
        chunk_id(f"{field}[{number}]", value)
