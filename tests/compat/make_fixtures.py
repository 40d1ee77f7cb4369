"""Write the compatibility fixtures of the CURRENT formats that do not exist yet.

Run ``uv run python tests/compat/make_fixtures.py`` after introducing a new format version, then
commit the new files. Existing fixtures are never rewritten: they are what older gateways wrote,
and ``test_compat_formats.py`` proves every supported version stays readable.

Keys are fixed test values (never used outside these fixtures).
"""

from __future__ import annotations

from pathlib import Path

import blake3
import zstandard
from strongroom.common.v1 import common_pb2
from strongroom_gateway import packfile, vault_format
from strongroom_gateway.crypto import DataKey
from strongroom_gateway.keys import MasterKey, MasterKeyring
from strongroom_gateway.manifests import SEALED_VERSION, seal_manifest
from strongroom_gateway.ports import Account, AccountDataKey, Instance, InstanceFilesystem, Point
from strongroom_gateway.segments import cut_segments
from strongroom_platform.clock import utc
from strongroom_platform.manifest import SEGMENTED_VERSION, SegmentRef, encode_manifest, encode_segment_list
from strongroom_platform.manifest import VERSION as MANIFEST_VERSION

FIXTURES = Path(__file__).parent / "fixtures"
ACCOUNT_ID = "compat-acct"
POINT_ID = "6f1c1d7e-0000-4000-8000-00000000c0de"
CHUNK_ID_KEY = bytes(range(32))
DATA_KEY = bytes(range(32, 64))
RAW_CHUNK = b"strongroom compat fixture: raw chunk\n"
ZSTD_CHUNK = b"strongroom compat fixture: zstd chunk " * 20
MASTER_KEY_ID = "compat-master"
MASTER_KEY = bytes(range(64, 96))
INSTANCE_ID = "compat-instance"
WRITTEN_AT = utc(2026, 12, 6, 12, 0)
FILESYSTEM = common_pb2.Filesystem(mount_point="/srv", device="/dev/vdb1", fs_type="xfs", capacity_bytes=1 << 40)


def chunk_id(content: bytes) -> bytes:
    return blake3.blake3(content, key=CHUNK_ID_KEY).digest()


def blobs() -> list[packfile.BlobToPack]:
    compressed = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(ZSTD_CHUNK)
    return [
        packfile.BlobToPack(chunk_id(RAW_CHUNK), packfile.COMPRESSION_NONE, RAW_CHUNK, len(RAW_CHUNK)),
        packfile.BlobToPack(chunk_id(ZSTD_CHUNK), packfile.COMPRESSION_ZSTD, compressed, len(ZSTD_CHUNK)),
    ]


def entries() -> list[common_pb2.FileEntry]:
    return [
        common_pb2.FileEntry(path="", type=common_pb2.ENTRY_TYPE_DIRECTORY, mode=0o755, mtime_ns=1),
        common_pb2.FileEntry(path="etc", type=common_pb2.ENTRY_TYPE_DIRECTORY, mode=0o755, mtime_ns=2),
        common_pb2.FileEntry(
            path="etc/app.conf",
            type=common_pb2.ENTRY_TYPE_FILE,
            mode=0o644,
            mtime_ns=3,
            size=len(RAW_CHUNK) + len(ZSTD_CHUNK),
            chunk_ids=[chunk_id(RAW_CHUNK), chunk_id(ZSTD_CHUNK)],
        ),
        common_pb2.FileEntry(
            path="etc/link", type=common_pb2.ENTRY_TYPE_SYMLINK, mode=0o777, mtime_ns=4, link_target="app.conf"
        ),
    ]


def segments() -> list[tuple[SegmentRef, bytes]]:
    """The fixture entries' record stream cut into manifest segments (format version 2)."""
    return list(cut_segments(CHUNK_ID_KEY, ((e.path.encode(), e.SerializeToString()) for e in entries())))


def segment_blobs() -> list[packfile.BlobToPack]:
    """The segments as blobs of a pack, zstd-compressed as every segment the gateway writes."""
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=True)
    return [
        packfile.BlobToPack(ref.segment_id, packfile.COMPRESSION_ZSTD, compressor.compress(content), len(content))
        for ref, content in segments()
    ]


def key_record(key: DataKey) -> bytes:
    master_key_id, wrapped = MasterKeyring(MasterKey(MASTER_KEY_ID, MASTER_KEY)).wrap(ACCOUNT_ID, DATA_KEY)
    row = AccountDataKey(ACCOUNT_ID, master_key_id, wrapped, WRITTEN_AT)
    return vault_format.encode_key_record(row, Account(ACCOUNT_ID, CHUNK_ID_KEY, 7), key, WRITTEN_AT)


def instance_record(key: DataKey) -> bytes:
    instance = Instance(
        INSTANCE_ID, ACCOUNT_ID, None, None, None, WRITTEN_AT, False, "db-1.lan", 1 << 40, "eu-1", "db-1"
    )
    filesystems = [
        InstanceFilesystem(INSTANCE_ID, "/srv", FILESYSTEM.SerializeToString(), True, WRITTEN_AT, WRITTEN_AT)
    ]
    return vault_format.seal_instance_record(key, instance, filesystems, WRITTEN_AT)


def point_record(key: DataKey) -> bytes:
    point = Point(
        POINT_ID,
        ACCOUNT_ID,
        INSTANCE_ID,
        "compat-job",
        "compat-version",
        "/srv",
        FILESYSTEM.SerializeToString(),
        f"manifests/{ACCOUNT_ID}/{POINT_ID}",
        3,
        1234,
        WRITTEN_AT,
        WRITTEN_AT + (WRITTEN_AT - utc(2026, 11, 5, 12, 0)),
        "compat-manifest-version",
    )
    return vault_format.seal_point_record(key, point, WRITTEN_AT)


def main() -> None:
    key = DataKey(ACCOUNT_ID, DATA_KEY)
    manifest = encode_manifest(entries())
    current = {
        f"pack-v{packfile.FORMAT_VERSION}.bin": lambda: packfile.encode_pack(blobs(), key).data,
        f"manifest-v{MANIFEST_VERSION}.bin": lambda: manifest,
        f"sealed-manifest-v{SEALED_VERSION}.bin": lambda: seal_manifest(key, POINT_ID, manifest),
        f"manifest-v{SEGMENTED_VERSION}.bin": lambda: encode_segment_list(ref for ref, _ in segments()),
        f"manifest-v{SEGMENTED_VERSION}-segments-pack.bin": lambda: packfile.encode_pack(segment_blobs(), key).data,
        f"key-record-v{vault_format.VERSION}.bin": lambda: key_record(key),
        f"instance-record-v{vault_format.VERSION}.bin": lambda: instance_record(key),
        f"point-record-v{vault_format.VERSION}.bin": lambda: point_record(key),
    }
    for name, make in current.items():
        path = FIXTURES / name
        if path.exists():
            print(f"kept    {name}")
        else:
            path.write_bytes(make())
            print(f"written {name}")


if __name__ == "__main__":
    main()
