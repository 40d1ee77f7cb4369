"""Ask a Kafka-protocol broker what it is, over a raw socket (stdlib only).

Why raw bytes instead of aiokafka: aiokafka 0.14 speaks ApiVersions only up to v2, whose response
has no feature information, and its admin ``describe_cluster()`` is a Metadata call (brokers and
controller id, no version). The Kafka protocol never sends the broker's software version, but
ApiVersions v3+ (KIP-584) carries, as tagged fields, the *supported* and the *finalized* feature
levels; the finalized ``metadata.version`` names the release line the cluster runs at
(level 30 = "4.3-IV0"). That is what :func:`probe_kafka` reports.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

__all__ = ["KafkaServerInfo", "metadata_request_ok", "metadata_version_name", "probe_kafka"]

_API_VERSIONS = 18
_METADATA = 3
_UNSUPPORTED_VERSION = 35

# metadata.version feature levels -> MetadataVersion names, read from
# org.apache.kafka.server.common.MetadataVersion in kafka-server-common 4.3.1 (javap of the enum's
# static initialiser). Levels below 7 predate KRaft production use.
_METADATA_VERSIONS: dict[int, str] = {
    7: "3.3-IV3",
    8: "3.4-IV0",
    9: "3.5-IV0",
    10: "3.5-IV1",
    11: "3.5-IV2",
    12: "3.6-IV0",
    13: "3.6-IV1",
    14: "3.6-IV2",
    15: "3.7-IV0",
    16: "3.7-IV1",
    17: "3.7-IV2",
    18: "3.7-IV3",
    19: "3.7-IV4",
    20: "3.8-IV0",
    21: "3.9-IV0",
    22: "4.0-IV0",
    23: "4.0-IV1",
    24: "4.0-IV2",
    25: "4.0-IV3",
    26: "4.1-IV0",
    27: "4.1-IV1",
    28: "4.2-IV0",
    29: "4.2-IV1",
    30: "4.3-IV0",
    31: "4.4-IV0",
}


def metadata_version_name(level: int) -> str:
    """``"4.3-IV0"`` for level 30; ``"level N"`` for levels this table does not know."""
    return _METADATA_VERSIONS.get(level, f"level {level}")


@dataclass(frozen=True)
class KafkaServerInfo:
    """What one broker said in its ApiVersions response."""

    api_versions_version: int
    """The ApiVersions request version the broker answered (3 when features are present)."""
    api_keys: dict[int, tuple[int, int]] = field(default_factory=dict)
    """api_key -> (min_version, max_version)."""
    supported_features: dict[str, tuple[int, int]] = field(default_factory=dict)
    """feature -> (min_version, max_version) the broker software supports."""
    finalized_features: dict[str, tuple[int, int]] = field(default_factory=dict)
    """feature -> (min_version_level, max_version_level) finalized for the cluster."""

    @property
    def metadata_version(self) -> str | None:
        """The finalized ``metadata.version`` as a name such as ``"4.3-IV0"``, if the broker reports one."""
        finalized = self.finalized_features.get("metadata.version")
        return metadata_version_name(finalized[1]) if finalized else None

    @property
    def release_line(self) -> str | None:
        """``"4.3"`` from the finalized metadata.version, i.e. the broker software is at least this release."""
        name = self.metadata_version
        if name is None or not name[0].isdigit():
            return None
        return name.split("-", 1)[0]

    def describe(self) -> str:
        """One short human-readable phrase, e.g. ``"metadata.version 4.3-IV0 via ApiVersions v3"``."""
        if self.metadata_version is not None:
            return f"metadata.version {self.metadata_version} via ApiVersions v{self.api_versions_version}"
        return f"no finalized features; ApiVersions v{self.api_versions_version}, {len(self.api_keys)} APIs"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated Kafka response")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int16(self) -> int:
        value: int = struct.unpack(">h", self.take(2))[0]
        return value

    def int32(self) -> int:
        value: int = struct.unpack(">i", self.take(4))[0]
        return value

    def int64(self) -> int:
        value: int = struct.unpack(">q", self.take(8))[0]
        return value

    def uvarint(self) -> int:
        shift = result = 0
        while True:
            byte = self.take(1)[0]
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    def compact_string(self) -> str:
        n = self.uvarint() - 1
        return "" if n <= 0 else self.take(n).decode()

    def string(self) -> str | None:
        n = self.int16()
        return None if n < 0 else self.take(n).decode()

    def skip_tagged(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _compact_string(value: str) -> bytes:
    raw = value.encode()
    return _uvarint(len(raw) + 1) + raw


def _frame(api_key: int, api_version: int, correlation_id: int, body: bytes, *, flexible: bool) -> bytes:
    client_id = b"strongroom-probe"
    # Request header v1 (client_id is a non-compact nullable string even in flexible header v2).
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id
    if flexible:
        header += _uvarint(0)  # header v2: empty tagged fields
    message = header + body
    return struct.pack(">i", len(message)) + message


def _roundtrip(host: str, port: int, request: bytes, correlation_id: int, timeout: float) -> _Reader:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        reader = _Reader(_recv_exact(sock, size))
    if reader.int32() != correlation_id:
        raise ValueError("Kafka response correlation id mismatch")
    return reader


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("Kafka broker closed the connection")
        buf += chunk
    return bytes(buf)


def _split_bootstrap(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, _, port = first.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def probe_kafka(bootstrap: str, timeout: float = 5.0) -> KafkaServerInfo:
    """Send ApiVersions v3 to the first broker of ``bootstrap`` and decode the answer.

    Falls back to the v0 layout when the broker answers UNSUPPORTED_VERSION (a pre-2.4 broker).
    Raises OSError/ValueError when the broker cannot be reached or answers garbage.
    """
    host, port = _split_bootstrap(bootstrap)
    body = _compact_string("strongroom-servers") + _compact_string("1") + _uvarint(0)
    reader = _roundtrip(host, port, _frame(_API_VERSIONS, 3, 1, body, flexible=True), 1, timeout)
    # ApiVersions responses always use response header v0 (no tagged fields), so clients that
    # sent too new a version can still read the error code.
    error = reader.int16()
    if error == _UNSUPPORTED_VERSION:
        keys: dict[int, tuple[int, int]] = {}
        for _ in range(reader.int32()):
            key, lo, hi = reader.int16(), reader.int16(), reader.int16()
            keys[key] = (lo, hi)
        return KafkaServerInfo(api_versions_version=0, api_keys=keys)
    if error != 0:
        raise ValueError(f"ApiVersions error code {error}")
    keys = {}
    for _ in range(reader.uvarint() - 1):
        key, lo, hi = reader.int16(), reader.int16(), reader.int16()
        reader.skip_tagged()
        keys[key] = (lo, hi)
    reader.int32()  # throttle_time_ms
    supported: dict[str, tuple[int, int]] = {}
    finalized: dict[str, tuple[int, int]] = {}
    for _ in range(reader.uvarint()):
        tag, size = reader.uvarint(), reader.uvarint()
        end = reader.pos + size
        if tag == 0:  # SupportedFeatures: name, min_version, max_version
            for _ in range(reader.uvarint() - 1):
                name = reader.compact_string()
                lo, hi = reader.int16(), reader.int16()
                reader.skip_tagged()
                supported[name] = (lo, hi)
        elif tag == 2:  # FinalizedFeatures: name, max_version_level, min_version_level
            for _ in range(reader.uvarint() - 1):
                name = reader.compact_string()
                hi, lo = reader.int16(), reader.int16()
                reader.skip_tagged()
                finalized[name] = (lo, hi)
        reader.pos = end
    return KafkaServerInfo(3, keys, supported, finalized)


def metadata_request_ok(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when the broker answers a Metadata v1 request listing at least one broker.

    Used as a readiness check: an open port alone does not mean the broker serves requests yet.
    """
    try:
        host, port = _split_bootstrap(bootstrap)
        body = struct.pack(">i", -1)  # null topic array = all topics
        reader = _roundtrip(host, port, _frame(_METADATA, 1, 2, body, flexible=False), 2, timeout)
        return reader.int32() >= 1  # brokers array length
    except (OSError, ValueError):
        return False
