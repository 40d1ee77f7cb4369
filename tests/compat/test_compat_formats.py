"""Stored objects written by earlier releases stay readable; versions nobody wrote yet are refused.

The fixtures are committed bytes (``fixtures/``, written by ``make_fixtures.py`` with the writer of
their time) and are never regenerated: their hashes are pinned below.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from make_fixtures import (
    ACCOUNT_ID,
    CHUNK_ID_KEY,
    DATA_KEY,
    INSTANCE_ID,
    MASTER_KEY,
    MASTER_KEY_ID,
    POINT_ID,
    RAW_CHUNK,
    ZSTD_CHUNK,
    chunk_id,
)
from strongroom_gateway import packfile, vault_format
from strongroom_gateway.chunks import ChunkRejected, verify_stored
from strongroom_gateway.crypto import DataKey
from strongroom_gateway.keys import MasterKey, MasterKeyring
from strongroom_gateway.manifests import SUPPORTED_SEALED_VERSIONS, open_manifest
from strongroom_platform import manifest as manifest_format
from strongroom_platform.manifest import (
    ManifestFormatError,
    decode_manifest,
    decode_segment_list,
    manifest_from_segments,
    manifest_version,
)

FIXTURES = Path(__file__).parent / "fixtures"
KEY = DataKey(ACCOUNT_ID, DATA_KEY)
PINNED = {
    "pack-v1.bin": "3853c40a61b8c7748561c042d39d24d789756b9adb892f89818ff0579f21a1ae",
    "pack-v2.bin": "cae315d5304b194f704d619b59db82e65adc92087bcd03d8f07e64a6962666af",
    "manifest-v1.bin": "8ae340854135e17ee6f36cb64084c5d3eb1cc39fb513df4ba77cdbdb574ad47a",
    "sealed-manifest-v1.bin": "278d159b201843fae4ec1ec58c7761e45941e0980957f85b90f9b6890f42690d",
    "manifest-v2.bin": "37e87b3f26e823d001fc9d10513f68b49bcf6b40e51d1830a9e7b36efe36ab07",
    "manifest-v2-segments-pack.bin": "4e1d3558dbaf9cc1b5640c41098526383ad5b8fdace35908a84ecbabbf1d3763",
    "key-record-v1.bin": "a421bd4969592d866d24c6ad2341c5b92eeeed455bad5b03f9dadd97f78e0ebd",
    "instance-record-v1.bin": "254d10f43b987caaea312e6b76af0298f222314a935b58bca2d82daaeb385a8b",
    "point-record-v1.bin": "dc2b55d4c12ca17739fe5dd5ff989a268413bcea9ca2bd112e9eb510728f60f0",
}
PATHS = ["", "etc", "etc/app.conf", "etc/link"]


def fixture(name: str) -> bytes:
    data = (FIXTURES / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == PINNED[name], f"{name} was rewritten; fixtures are immutable"
    return data


def test_every_fixture_is_pinned() -> None:
    assert {p.name for p in FIXTURES.iterdir()} == set(PINNED)


def test_every_supported_pack_version_has_a_fixture() -> None:
    assert {f"pack-v{v}.bin" for v in packfile.SUPPORTED_VERSIONS} <= set(PINNED)
    assert {f"sealed-manifest-v{v}.bin" for v in SUPPORTED_SEALED_VERSIONS} <= set(PINNED)
    assert {f"manifest-v{v}.bin" for v in manifest_format.READABLE_VERSIONS} <= set(PINNED)
    for kind in ("key", "instance", "point"):
        assert {f"{kind}-record-v{v}.bin" for v in vault_format.SUPPORTED_VERSIONS} <= set(PINNED)


@pytest.mark.parametrize(("name", "version"), [("pack-v1.bin", 1), ("pack-v2.bin", 2)])
def test_pack_fixture_reads_back_its_chunks(name: str, version: int) -> None:
    data = fixture(name)
    assert packfile.check_header(data) == version
    entries = packfile.decode_index(data, KEY if version in packfile.ENCRYPTED_VERSIONS else None)
    assert [e.chunk_id for e in entries] == [chunk_id(RAW_CHUNK), chunk_id(ZSTD_CHUNK)]
    assert [e.compression for e in entries] == [packfile.COMPRESSION_NONE, packfile.COMPRESSION_ZSTD]
    contents = [
        verify_stored(
            CHUNK_ID_KEY,
            KEY,
            version,
            e.chunk_id,
            data[e.offset : e.offset + e.length],
            e.compression,
            e.raw_length,
        )
        for e in entries
    ]
    assert contents == [RAW_CHUNK, ZSTD_CHUNK]


def test_encrypted_pack_fixture_does_not_open_for_another_account() -> None:
    data = fixture("pack-v2.bin")
    [first, _] = packfile.decode_index(data, KEY)
    other = DataKey("another-account", DATA_KEY)
    with pytest.raises(ChunkRejected, match="authentication failed"):
        verify_stored(CHUNK_ID_KEY, other, 2, first.chunk_id, data[first.offset : first.offset + first.length], 0, 37)


def test_manifest_fixtures_read_back() -> None:
    assert [e.path for e in decode_manifest(fixture("manifest-v1.bin"))] == PATHS
    opened = open_manifest(KEY, POINT_ID, fixture("sealed-manifest-v1.bin"))
    assert [e.path for e in decode_manifest(opened)] == PATHS
    # A plaintext manifest written before encryption is accepted as it is.
    assert open_manifest(KEY, POINT_ID, fixture("manifest-v1.bin")) == fixture("manifest-v1.bin")
    with pytest.raises(ManifestFormatError, match="authentication failed"):
        open_manifest(KEY, "another-point", fixture("sealed-manifest-v1.bin"))


def test_segmented_manifest_fixture_reads_back_as_the_version_1_stream() -> None:
    refs = decode_segment_list(fixture("manifest-v2.bin"))
    pack = fixture("manifest-v2-segments-pack.bin")
    stored = {e.chunk_id: e for e in packfile.decode_index(pack, KEY)}
    contents = [
        verify_stored(
            CHUNK_ID_KEY,
            KEY,
            packfile.check_header(pack),
            ref.segment_id,
            pack[stored[ref.segment_id].offset : stored[ref.segment_id].offset + stored[ref.segment_id].length],
            stored[ref.segment_id].compression,
            stored[ref.segment_id].raw_length,
        )
        for ref in refs
    ]
    assert sum(r.entry_count for r in refs) == len(PATHS)
    assert [e.path for e in decode_manifest(manifest_from_segments(refs, contents))] == PATHS
    with pytest.raises(ManifestFormatError, match="lists segments"):
        list(decode_manifest(fixture("manifest-v2.bin")))


def _future(supported: frozenset[int]) -> int:
    return max(supported) + 1


def test_future_pack_version_is_refused_clearly() -> None:
    future = _future(packfile.SUPPORTED_VERSIONS)
    data = bytearray(fixture("pack-v2.bin"))
    data[4] = future
    with pytest.raises(packfile.PackFormatError, match=f"unsupported pack format version {future}.*upgrade"):
        packfile.decode_index(bytes(data), KEY)
    with pytest.raises(ChunkRejected, match=f"unsupported pack format version {future}"):
        verify_stored(CHUNK_ID_KEY, KEY, future, bytes(32), b"", 0, 0)


def test_future_manifest_versions_are_refused_clearly() -> None:
    sealed = bytearray(fixture("sealed-manifest-v1.bin"))
    sealed[4] = _future(SUPPORTED_SEALED_VERSIONS)
    with pytest.raises(ManifestFormatError, match="unsupported sealed manifest version"):
        open_manifest(KEY, POINT_ID, bytes(sealed))
    plain = bytearray(fixture("manifest-v1.bin"))
    plain[4] = _future(manifest_format.READABLE_VERSIONS)
    with pytest.raises(ManifestFormatError, match="version"):
        list(decode_manifest(bytes(plain)))
    with pytest.raises(ManifestFormatError, match=f"unsupported manifest format version {plain[4]} .*upgrade"):
        manifest_version(bytes(plain))


def test_unknown_magic_is_refused() -> None:
    with pytest.raises(packfile.PackFormatError, match="bad header magic"):
        packfile.decode_index(b"XXXX" + fixture("pack-v1.bin")[4:])
    with pytest.raises(ManifestFormatError, match="bad magic"):
        open_manifest(KEY, POINT_ID, b"SRXX\x01" + bytes(40))


def test_vault_record_fixtures_read_back() -> None:
    record = vault_format.decode_key_record(fixture("key-record-v1.bin"))
    ring = MasterKeyring(MasterKey(MASTER_KEY_ID, MASTER_KEY))
    assert ring.unwrap(record.account_id, record.master_key_id, bytes(record.wrapped_key)) == DATA_KEY
    account = vault_format.open_account_secrets(record, KEY)
    assert account is not None and (account.chunk_id_key, account.chunker_seed) == (CHUNK_ID_KEY, 7)
    instance = vault_format.open_instance_record(KEY, INSTANCE_ID, fixture("instance-record-v1.bin"))
    assert (instance.account_id, instance.region, instance.name, instance.hostname) == (
        ACCOUNT_ID,
        "eu-1",
        "db-1",
        "db-1.lan",
    )
    assert [(f.filesystem.mount_point, f.approved) for f in instance.filesystems] == [("/srv", True)]
    point = vault_format.point_row(vault_format.open_point_record(KEY, POINT_ID, fixture("point-record-v1.bin")))
    assert (point.instance_id, point.mount_point, point.manifest_version_id) == (
        INSTANCE_ID,
        "/srv",
        "compat-manifest-version",
    )
    with pytest.raises(vault_format.VaultFormatError, match="authentication failed"):
        vault_format.open_point_record(KEY, "another-point", fixture("point-record-v1.bin"))


def test_future_vault_record_versions_are_refused_clearly() -> None:
    future = _future(vault_format.SUPPORTED_VERSIONS)
    for name, read in (
        ("key-record-v1.bin", vault_format.decode_key_record),
        ("instance-record-v1.bin", lambda data: vault_format.open_instance_record(KEY, INSTANCE_ID, data)),
        ("point-record-v1.bin", lambda data: vault_format.open_point_record(KEY, POINT_ID, data)),
    ):
        data = bytearray(fixture(name))
        data[4] = future
        with pytest.raises(vault_format.VaultFormatError, match=f"unsupported .* version {future}"):
            read(bytes(data))
        with pytest.raises(vault_format.VaultFormatError, match="bad magic"):
            read(b"SRXX" + fixture(name)[4:])
