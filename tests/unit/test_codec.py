"""The AES-256-GCM payload codec, its settings, and the gateway's remote codec endpoint."""

from __future__ import annotations

import base64
import os

import httpx
import pytest
from pydantic import ValidationError
from temporalio.api.common.v1 import Payload

from api.app import create_app
from core.codec import CodecKeyError, EncryptionCodec, new_key_spec, parse_keys
from core.config import DEV_CODEC_KEYS, Settings
from core.tokens import mint_token

PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=b'{"name":"Ada Lovelace","payment_token":"tok_ok"}')


def key() -> bytes:
    return os.urandom(32)


async def test_round_trip_hides_the_data_and_names_the_key():
    codec = EncryptionCodec({"k1": key()}, "k1")
    [sealed] = await codec.encode([PLAIN])
    assert b"Ada" not in sealed.SerializeToString()
    assert sealed.metadata["encoding"] == b"binary/encrypted" and sealed.metadata["encryption-key-id"] == b"k1"
    assert await codec.decode([sealed]) == [PLAIN]


async def test_rotation_new_payloads_use_the_active_key_old_ones_still_decrypt():
    old, new = key(), key()
    [sealed_old] = await EncryptionCodec({"old": old}, "old").encode([PLAIN])
    rotated = EncryptionCodec({"old": old, "new": new}, "new")
    [sealed_new] = await rotated.encode([PLAIN])
    assert sealed_new.metadata["encryption-key-id"] == b"new"
    assert await rotated.decode([sealed_old, sealed_new]) == [PLAIN, PLAIN]
    with pytest.raises(CodecKeyError, match="'old'"):
        await EncryptionCodec({"new": new}, "new").decode([sealed_old])


async def test_tampering_and_relabelling_are_detected():
    from cryptography.exceptions import InvalidTag

    a, b = key(), key()
    codec = EncryptionCodec({"a": a, "b": b}, "a")
    [sealed] = await codec.encode([PLAIN])
    relabelled = Payload(metadata={**sealed.metadata, "encryption-key-id": b"b"}, data=sealed.data)
    flipped = Payload(metadata=sealed.metadata, data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1]))
    for bad in (relabelled, flipped):
        with pytest.raises(InvalidTag):
            await codec.decode([bad])


async def test_unencrypted_payloads_pass_through():
    assert await EncryptionCodec({"k": key()}, "k").decode([PLAIN]) == [PLAIN]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "at least one"),
        ("nokid", "kid:base64"),
        ("k:!!!", "base64"),
        (f"k:{base64.b64encode(b'short').decode()}", "32 bytes"),
    ],
)
def test_malformed_keys_are_refused_clearly(spec, message):
    with pytest.raises(CodecKeyError, match=message):
        parse_keys(spec)


def test_settings_refuse_an_unknown_active_key_and_the_dev_key_in_production():
    with pytest.raises(ValidationError, match="ORDERS_CODEC_ACTIVE_KEY"):
        Settings(environment="test", codec_keys=new_key_spec("a"), codec_active_key="b")
    production = dict(environment="production", jwt_secret="x" * 40, carrier_webhook_secret="y" * 40)
    with pytest.raises(ValidationError, match="development key"):
        Settings(**production, codec_keys=f"{DEV_CODEC_KEYS},{new_key_spec('p1')}", codec_active_key="p1")
    Settings(**production, codec_keys=new_key_spec("p1"), codec_active_key="p1")


# --- the gateway's codec endpoint (no lifespan needed: it uses only settings and the verifier) ---

UI = "http://127.0.0.1:8233"


def gateway(settings: Settings, client=("127.0.0.1", 50000)) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings), client=client), base_url="http://api"
    )


def as_json(payload: Payload) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(payload)


async def test_decode_and_encode_speak_temporals_remote_codec_protocol():
    settings = Settings(environment="test")
    async with gateway(settings) as api:
        encoded = await api.post(
            "/codec/encode", json={"payloads": [as_json(PLAIN)]}, headers={"Origin": UI, "X-Namespace": "default"}
        )
        assert encoded.status_code == 200
        assert encoded.headers["access-control-allow-origin"] == UI
        [sealed] = encoded.json()["payloads"]
        assert "Ada" not in str(sealed)
        decoded = await api.post("/codec/decode", json={"payloads": [sealed]}, headers={"Origin": UI})
        assert decoded.json()["payloads"] == [as_json(PLAIN)]
        preflight = await api.options("/codec/decode", headers={"Origin": UI, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 204 and "X-Namespace" in preflight.headers["access-control-allow-headers"]
        foreign = await api.options("/codec/decode", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in foreign.headers
        assert (await api.post("/codec/decode", json={"nope": 1})).status_code in (200, 400)
        assert (
            await api.post("/codec/decode", content=b"not json", headers={"content-type": "application/json"})
        ).status_code == 400


async def test_codec_needs_an_operator_except_anonymous_loopback_in_development():
    settings = Settings(environment="test")
    operator = mint_token(settings, "olga", "operator")
    customer = mint_token(settings, "alice", "customer")
    body = {"payloads": [as_json(PLAIN)]}
    async with gateway(settings, client=("10.1.2.3", 50000)) as remote:
        assert (await remote.post("/codec/decode", json=body)).status_code == 401
        assert (
            await remote.post("/codec/decode", json=body, headers={"Authorization": f"Bearer {customer}"})
        ).status_code == 403
        assert (
            await remote.post("/codec/decode", json=body, headers={"Authorization": f"Bearer {operator}"})
        ).status_code == 200
        assert (
            await remote.post("/codec/decode", json=body, headers={"Authorization": "Bearer junk"})
        ).status_code == 401
    closed = settings.model_copy(update={"codec_allow_local_anonymous": False})
    async with gateway(closed) as local:
        assert (await local.post("/codec/decode", json=body)).status_code == 401
