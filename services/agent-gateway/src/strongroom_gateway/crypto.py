"""Encryption at rest: AES-256-GCM with per-account data keys (docs/formats/pack.md, sealed-manifest.md).

Every sealed value is ``nonce (12 random bytes) | ciphertext | tag (16 bytes)``.
The associated data (AAD) of every seal starts with the magic of the object
kind (``SRPK`` pack blob, ``SRPX`` pack index, ``SRME`` manifest, ``SRDK``
wrapped data key, ``SRAS``/``SRIR``/``SRPR`` vault records) and the format version, followed by the account id and the
identity of the value (chunk id, point id...). A value therefore opens only
under the key, kind, version, account and identity it was sealed for: a blob
moved to another account, swapped with another chunk's blob, or a manifest
presented as a blob, fails authentication instead of yielding wrong bytes.

Pure CPU, no I/O: callers run these in worker threads (AES-GCM releases the GIL).
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
# Bytes a seal adds to its plaintext.
OVERHEAD = NONCE_SIZE + TAG_SIZE

_ACCOUNT_ID_MAX = 255


class DecryptionError(ValueError):
    """Authentication failed: tampered bytes, a value moved to another account/id/kind, or the wrong key."""


def _account_field(account_id: str) -> bytes:
    raw = account_id.encode()
    if not raw or len(raw) > _ACCOUNT_ID_MAX:
        raise ValueError("account ids are 1 to 255 bytes")
    return bytes([len(raw)]) + raw


def blob_aad(account_id: str, pack_version: int, chunk_id: bytes, compression: int, raw_length: int) -> bytes:
    """AAD of one pack blob.

    ``SRPK | version u8 | len u8 | account id | chunk id (32) | compression u8 | raw length u32``.
    """
    return (
        b"SRPK"
        + bytes([pack_version])
        + _account_field(account_id)
        + chunk_id
        + struct.pack("<BI", compression, raw_length)
    )


def index_aad(account_id: str, pack_version: int) -> bytes:
    """AAD of a pack index: ``SRPX | version u8 | len u8 | account id``."""
    return b"SRPX" + bytes([pack_version]) + _account_field(account_id)


def manifest_aad(account_id: str, envelope_version: int, point_id: str) -> bytes:
    """AAD of a sealed manifest: ``SRME | version u8 | len u8 | account id | len u8 | point id``."""
    return b"SRME" + bytes([envelope_version]) + _account_field(account_id) + _account_field(point_id)


def wrap_aad(account_id: str, master_key_id: str) -> bytes:
    """AAD of a wrapped data key: ``SRDK | version u8 (1) | len u8 | account id | len u8 | master key id``."""
    return b"SRDK\x01" + _account_field(account_id) + _account_field(master_key_id)


def record_aad(magic: bytes, version: int, account_id: str, record_id: str | None = None) -> bytes:
    """AAD of a vault record (docs/formats/vault-records.md): ``magic | version u8 | len8 account id``
    and, for per-instance and per-point records, ``| len8 record id``."""
    if len(magic) != 4:
        raise ValueError("magics are 4 bytes")
    aad = magic + bytes([version]) + _account_field(account_id)
    return aad if record_id is None else aad + _account_field(record_id)


def seal(key: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    """``nonce | AES-256-GCM(plaintext) | tag`` with a fresh random nonce."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + key.encrypt(nonce, plaintext, aad)


def fresh_nonces(count: int) -> list[bytes]:
    """``count`` random nonces from one ``os.urandom`` call: distinct slices of one draw.

    One draw per pack rather than one per blob: each ``os.urandom`` is a ``getrandom``
    system call that lets go of the GIL, and a pack of small chunks has thousands of
    blobs (ADR 0079). Random 96-bit nonces either way; every nonce is used for one seal.
    """
    pool = os.urandom(NONCE_SIZE * count)
    return [pool[i : i + NONCE_SIZE] for i in range(0, len(pool), NONCE_SIZE)]


def seal_into(key: AESGCM, plaintext: bytes, aad: bytes, out: memoryview, nonce: bytes | None = None) -> None:
    """Write ``seal(key, plaintext, aad)`` into ``out`` (exactly ``len(plaintext) + OVERHEAD`` bytes).

    ``nonce``: a fresh random nonce (``fresh_nonces``) never used for another seal; None draws one.
    Encrypting in place avoids allocating and copying a buffer per blob, which
    costs more than AES-GCM itself on large chunks.
    """
    if len(out) != len(plaintext) + OVERHEAD:
        raise ValueError("output buffer must be the plaintext length plus nonce and tag")
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    elif len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonces are {NONCE_SIZE} bytes")
    out[:NONCE_SIZE] = nonce
    key.encrypt_into(nonce, plaintext, aad, out[NONCE_SIZE:])


def open_sealed(key: AESGCM, sealed: bytes | memoryview, aad: bytes) -> bytes:
    """The plaintext of a ``seal`` output; DecryptionError unless key, AAD and bytes all match."""
    if len(sealed) < OVERHEAD:
        raise DecryptionError("sealed value is shorter than its nonce and tag")
    view = memoryview(sealed)
    try:
        return key.decrypt(bytes(view[:NONCE_SIZE]), view[NONCE_SIZE:], aad)
    except InvalidTag:
        raise DecryptionError(
            "authentication failed (the stored bytes were altered, belong to another account or id,"
            " or the key is wrong)"
        ) from None


class DataKey:
    """An account's unwrapped 256-bit data key, bound to that account's id."""

    __slots__ = ("_aead", "account_id")

    def __init__(self, account_id: str, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"data keys are {KEY_SIZE} bytes")
        _account_field(account_id)
        self.account_id = account_id
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return seal(self._aead, plaintext, aad)

    def seal_into(self, plaintext: bytes, aad: bytes, out: memoryview, nonce: bytes | None = None) -> None:
        seal_into(self._aead, plaintext, aad, out, nonce)

    def open(self, sealed: bytes | memoryview, aad: bytes) -> bytes:
        return open_sealed(self._aead, sealed, aad)

    def __repr__(self) -> str:  # never print key material
        return f"DataKey(account_id={self.account_id!r})"
