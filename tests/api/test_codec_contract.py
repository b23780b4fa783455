"""The codec endpoint answers only what its OpenAPI entry documents: 200 with payloads, 400 for a
body that is not a codec body (protobuf's JSON parser alone would take a list or a string as an
empty message), 422 for a payload it cannot decrypt, never 500."""

from __future__ import annotations

import base64

import pytest

from tests.api.conftest import assert_problem


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


SEALED_BY_US = {"encoding": b64(b"binary/encrypted"), "encryption-key-id": b64(b"dev-2026")}


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'"payloads"',
        b"null",
        b'{"payloads": null}',
        b'{"payloads": {}}',
        b'{"payloads": [null]}',
        b'{"payloads": [{"data": 5}]}',
        b'{"payloads": [{"data": "!!"}]}',
        b'{"payloads": [{"metadata": {"encoding": null}}]}',
        b'{"payloads": [{"metadata": []}]}',
        b"\xff\xfe not utf-8",
    ],
)
@pytest.mark.parametrize("operation", ["encode", "decode"])
async def test_a_body_that_is_not_a_codec_body_is_400(operation, body, gateway_client, bearer):
    async with gateway_client() as http:
        response = await http.post(
            f"/codec/{operation}",
            content=body,
            headers={**bearer(role="operator"), "Content-Type": "application/json"},
        )
    problem = assert_problem(response, 400)
    assert problem["type"].endswith("/bad-request"), problem


async def test_an_empty_list_may_be_left_out_as_protobuf_json_does(gateway_client, bearer):
    async with gateway_client() as http:
        response = await http.post("/codec/decode", json={}, headers=bearer(role="operator"))
    assert response.status_code == 200 and response.json() == {"payloads": []}


@pytest.mark.parametrize(
    "payload",
    [
        {"metadata": SEALED_BY_US, "data": b64(b"\x01")},  # shorter than a nonce
        {"metadata": {**SEALED_BY_US, "encryption-key-id": b64(b"\xff\xfe")}, "data": b64(bytes(40))},  # not UTF-8
        {"metadata": SEALED_BY_US, "data": b64(bytes(40))},  # right shape, wrong tag
    ],
    ids=["short", "key-id-not-utf8", "tampered"],
)
async def test_a_payload_that_does_not_decrypt_is_422_not_500(payload, gateway_client, bearer):
    async with gateway_client() as http:
        response = await http.post("/codec/decode", json={"payloads": [payload]}, headers=bearer(role="operator"))
    problem = assert_problem(response, 422)
    assert problem["type"].endswith("/codec-undecryptable"), problem
