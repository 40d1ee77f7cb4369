"""The pack object: many chunks of one account in one object-store object (docs/formats/pack.md).

Version 2 (written), all integers little-endian, ``seal`` = nonce (12) | AES-256-GCM ciphertext | tag (16)
under the account's data key (crypto.py):

    header   magic b"SRPK" | format version u8 (= 2)
    blobs    seal(payload as uploaded), AAD binds account, version, chunk id, compression, raw length
    index    magic b"SRPX" | index version u8 (= 2) | seal(entry count u32 | entries), AAD binds account, version
             entry: chunk id (32 bytes) | compression u8 | offset u64 | length u32 | raw length u32
    trailer  index length u32 (bytes of the index section) | magic b"SRPE"

Version 1 (read only): the same without encryption (payloads and index in the clear).

The pack id is the lowercase hex SHA-256 of the whole object, so a pack can be
verified without the database. Readers refuse unknown magics and versions.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from strongroom_gateway.crypto import OVERHEAD, DataKey, DecryptionError, blob_aad, fresh_nonces, index_aad

HEADER_MAGIC = b"SRPK"
INDEX_MAGIC = b"SRPX"
TRAILER_MAGIC = b"SRPE"
# Version 1: plaintext (2026-11, before encryption at rest). Version 2: AES-256-GCM per blob and index.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = frozenset({1, 2})
ENCRYPTED_VERSIONS = frozenset({2})
HEADER_SIZE = 5
TRAILER_SIZE = 8
CHUNK_ID_SIZE = 32

# Compression codes of a blob. Codes are never reused for another meaning.
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
KNOWN_COMPRESSIONS = frozenset({COMPRESSION_NONE, COMPRESSION_ZSTD})

_ENTRY = struct.Struct("<32sBQII")
_INDEX_HEAD = struct.Struct("<4sBI")  # version 1: magic, version, count
_INDEX_MAGIC_VERSION = struct.Struct("<4sB")
_COUNT = struct.Struct("<I")
_TRAILER = struct.Struct("<I4s")


class PackFormatError(ValueError):
    """The bytes are not a pack this code can read (magic, version, structure, or failed authentication)."""


@dataclass(frozen=True, slots=True)
class PackEntry:
    """Where one chunk's stored blob lies inside a pack (``length`` includes nonce and tag in version 2)."""

    chunk_id: bytes
    compression: int
    offset: int
    length: int
    raw_length: int


@dataclass(frozen=True, slots=True)
class BlobToPack:
    chunk_id: bytes
    compression: int
    payload: bytes
    raw_length: int


@dataclass(frozen=True, slots=True)
class EncodedPack:
    pack_id: str
    data: bytes
    entries: tuple[PackEntry, ...]
    format_version: int = FORMAT_VERSION


def encode_pack(blobs: Sequence[BlobToPack], key: DataKey) -> EncodedPack:
    """Build an encrypted (version 2) pack of ``key``'s account from ``blobs``, in order.

    Pure CPU: call it off the event loop.
    """
    entries: list[PackEntry] = []
    offset = HEADER_SIZE
    for blob in blobs:
        if len(blob.chunk_id) != CHUNK_ID_SIZE:
            raise ValueError("chunk ids are 32 bytes")
        if blob.compression not in KNOWN_COMPRESSIONS:
            raise ValueError(f"unknown compression code {blob.compression}")
        entries.append(
            PackEntry(blob.chunk_id, blob.compression, offset, len(blob.payload) + OVERHEAD, blob.raw_length)
        )
        offset += len(blob.payload) + OVERHEAD
    plain_index = bytearray(_COUNT.pack(len(entries)))
    for entry in entries:
        plain_index += _ENTRY.pack(entry.chunk_id, entry.compression, entry.offset, entry.length, entry.raw_length)
    index_length = _INDEX_MAGIC_VERSION.size + len(plain_index) + OVERHEAD
    # One buffer for the whole object, blobs encrypted in place: no per-blob copies.
    buffer = bytearray(offset + index_length + TRAILER_SIZE)
    view = memoryview(buffer)
    view[:HEADER_SIZE] = HEADER_MAGIC + bytes([FORMAT_VERSION])
    # Every blob's nonce and the index's from one random draw (one system call per pack, ADR 0079).
    nonces = fresh_nonces(len(blobs) + 1)
    for blob, entry, nonce in zip(blobs, entries, nonces[:-1], strict=True):
        aad = blob_aad(key.account_id, FORMAT_VERSION, blob.chunk_id, blob.compression, blob.raw_length)
        key.seal_into(blob.payload, aad, view[entry.offset : entry.offset + entry.length], nonce)
    _INDEX_MAGIC_VERSION.pack_into(buffer, offset, INDEX_MAGIC, FORMAT_VERSION)
    key.seal_into(
        bytes(plain_index),
        index_aad(key.account_id, FORMAT_VERSION),
        view[offset + _INDEX_MAGIC_VERSION.size : offset + index_length],
        nonces[-1],
    )
    _TRAILER.pack_into(buffer, offset + index_length, index_length, TRAILER_MAGIC)
    view.release()
    data = bytes(buffer)  # one copy, here in the worker thread (the object stores copy a bytearray on the loop)
    return EncodedPack(pack_id=hashlib.sha256(data).hexdigest(), data=data, entries=tuple(entries))


def check_version(version: int | None, what: str = "pack format") -> int:
    """Return ``version`` if this code reads it; PackFormatError naming the supported set otherwise."""
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
        raise PackFormatError(
            f"unsupported {what} version {version} (this gateway reads {supported}; upgrade it to read newer packs)"
        )
    return version


def check_header(data: bytes) -> int:
    """Return the format version if ``data`` starts with a supported pack header; else PackFormatError."""
    if data[:4] != HEADER_MAGIC:
        raise PackFormatError("not a Strongroom pack (bad header magic)")
    return check_version(data[4] if len(data) >= HEADER_SIZE else None)


def open_blob(
    key: DataKey | None,
    pack_version: int,
    chunk_id: bytes,
    compression: int,
    raw_length: int,
    stored: bytes,
) -> bytes:
    """The payload (as uploaded) of a stored blob read from a pack of ``pack_version``.

    Version 2 needs the account's data key and authenticates the blob against
    the account, chunk id, compression and raw length; raises PackFormatError
    when it does not authenticate. Version 1 blobs are the payload itself.
    """
    check_version(pack_version)
    if pack_version not in ENCRYPTED_VERSIONS:
        return stored
    if key is None:
        raise PackFormatError(f"pack format version {pack_version} is encrypted and no data key was given")
    try:
        return key.open(stored, blob_aad(key.account_id, pack_version, chunk_id, compression, raw_length))
    except DecryptionError as exc:
        raise PackFormatError(f"blob of chunk {chunk_id.hex()}: {exc}") from None


def decode_index(data: bytes, key: DataKey | None = None) -> list[PackEntry]:
    """Read the index of a whole pack object; validates every entry's bounds.

    Version 2 packs need the data key of the pack's account.
    """
    return decode_index_from_tail(data[:HEADER_SIZE], data, len(data), key)


def decode_index_from_tail(header: bytes, tail: bytes, size: int, key: DataKey | None = None) -> list[PackEntry]:
    """:func:`decode_index` from the pack's first ``HEADER_SIZE`` bytes and its last ``len(tail)``
    bytes (``size`` in all), which must hold the whole index and trailer (else PackFormatError
    "index not in tail"), so that a pack's index is read without reading its blobs."""
    version = check_header(header)
    if size < HEADER_SIZE + _INDEX_MAGIC_VERSION.size + TRAILER_SIZE or len(tail) < TRAILER_SIZE:
        raise PackFormatError("pack too short")
    tail_start = size - len(tail)
    index_length, trailer_magic = _TRAILER.unpack_from(tail, len(tail) - TRAILER_SIZE)
    if trailer_magic != TRAILER_MAGIC:
        raise PackFormatError("bad pack trailer magic")
    index_start = size - TRAILER_SIZE - index_length
    if index_start < HEADER_SIZE or index_length < _INDEX_MAGIC_VERSION.size:
        raise PackFormatError("pack index length out of range")
    if index_start < tail_start:
        raise PackFormatError(f"index not in tail: it starts {index_length + TRAILER_SIZE} bytes before the end")
    magic, index_version = _INDEX_MAGIC_VERSION.unpack_from(tail, index_start - tail_start)
    if magic != INDEX_MAGIC:
        raise PackFormatError("bad pack index magic")
    check_version(index_version, "pack index")
    if index_version != version:
        raise PackFormatError(f"pack index version {index_version} does not match the header's {version}")
    body = tail[index_start - tail_start + _INDEX_MAGIC_VERSION.size : len(tail) - TRAILER_SIZE]
    if version in ENCRYPTED_VERSIONS:
        if key is None:
            raise PackFormatError(f"pack format version {version} is encrypted and no data key was given")
        try:
            body = key.open(body, index_aad(key.account_id, version))
        except DecryptionError as exc:
            raise PackFormatError(f"pack index: {exc}") from None
    if len(body) < _COUNT.size:
        raise PackFormatError("pack index too short")
    (count,) = _COUNT.unpack_from(body, 0)
    if _COUNT.size + count * _ENTRY.size != len(body):
        raise PackFormatError("pack index length does not match its entry count")
    minimum = OVERHEAD if version in ENCRYPTED_VERSIONS else 0
    entries: list[PackEntry] = []
    position = _COUNT.size
    for _ in range(count):
        chunk_id, compression, offset, length, raw_length = _ENTRY.unpack_from(body, position)
        position += _ENTRY.size
        if compression not in KNOWN_COMPRESSIONS:
            raise PackFormatError(f"unknown compression code {compression}")
        if offset < HEADER_SIZE or offset + length > index_start or length < minimum:
            raise PackFormatError("pack entry out of the blob section")
        entries.append(PackEntry(chunk_id, compression, offset, length, raw_length))
    return entries
