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
from strongroom_gateway import packfile
from strongroom_gateway.crypto import DataKey
from strongroom_gateway.manifests import SEALED_VERSION, seal_manifest
from strongroom_platform.manifest import VERSION as MANIFEST_VERSION
from strongroom_platform.manifest import encode_manifest

FIXTURES = Path(__file__).parent / "fixtures"
ACCOUNT_ID = "compat-acct"
POINT_ID = "6f1c1d7e-0000-4000-8000-00000000c0de"
CHUNK_ID_KEY = bytes(range(32))
DATA_KEY = bytes(range(32, 64))
RAW_CHUNK = b"strongroom compat fixture: raw chunk\n"
ZSTD_CHUNK = b"strongroom compat fixture: zstd chunk " * 20


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


def main() -> None:
    key = DataKey(ACCOUNT_ID, DATA_KEY)
    manifest = encode_manifest(entries())
    current = {
        f"pack-v{packfile.FORMAT_VERSION}.bin": lambda: packfile.encode_pack(blobs(), key).data,
        f"manifest-v{MANIFEST_VERSION}.bin": lambda: manifest,
        f"sealed-manifest-v{SEALED_VERSION}.bin": lambda: seal_manifest(key, POINT_ID, manifest),
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
