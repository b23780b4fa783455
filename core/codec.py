"""Payload encryption for everything the platform stores in Temporal (AES-256-GCM).

Each payload is serialised whole (metadata and data) and sealed with the *active* key; the result
carries ``encoding: binary/encrypted`` and the key id in ``encryption-key-id``. Decryption accepts
any configured key, so keys rotate by adding a new one, making it active, and removing the old one
only once no retained history still needs it. Payloads that are not encrypted pass through, so
histories written before encryption stay readable.

Keys come from settings: ``ORDERS_CODEC_KEYS`` = ``kid:base64key[,kid:base64key...]`` (32-byte keys)
and ``ORDERS_CODEC_ACTIVE_KEY`` = the kid used for new payloads.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12


class CodecKeyError(ValueError):
    """The configured keys are malformed, or a payload names a key this process does not have."""


def parse_keys(spec: str) -> dict[str, bytes]:
    """``kid:base64[,kid:base64...]`` -> {kid: 32-byte key}. Raises CodecKeyError with a clear message."""
    keys: dict[str, bytes] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        kid, sep, encoded = item.partition(":")
        if not sep or not kid:
            raise CodecKeyError("codec keys must be written kid:base64key, separated by commas")
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise CodecKeyError(f"codec key {kid!r} is not valid base64") from None
        if len(key) != 32:
            raise CodecKeyError(f"codec key {kid!r} must be 32 bytes (AES-256), got {len(key)}")
        if kid in keys:
            raise CodecKeyError(f"codec key id {kid!r} appears twice")
        keys[kid] = key
    if not keys:
        raise CodecKeyError("at least one codec key is required")
    return keys


def new_key_spec(kid: str) -> str:
    """A fresh ``kid:base64`` entry for ORDERS_CODEC_KEYS (used by `orders codec new-key`)."""
    return f"{kid}:{base64.b64encode(os.urandom(32)).decode()}"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM with the key id bound as associated data (a payload cannot be re-labelled)."""

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str) -> None:
        if active_key_id not in keys:
            raise CodecKeyError(f"the active codec key {active_key_id!r} is not among the configured keys")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self._active = active_key_id

    @property
    def active_key_id(self) -> str:
        return self._active

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        kid = self._active
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(nonce, payload.SerializeToString(), kid.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: kid.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # written before encryption, or not ours: leave as is
        kid = payload.metadata.get(KEY_ID_METADATA, b"").decode()
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise CodecKeyError(f"payload encrypted with key {kid!r}, which is not configured (ORDERS_CODEC_KEYS)")
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        plain = Payload()
        plain.ParseFromString(cipher.decrypt(nonce, sealed, kid.encode()))
        return plain
