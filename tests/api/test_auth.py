"""Broken authentication (OWASP API2) and roles: HS256 for development, JWKS (RS256/ES256) for
production, with a real JWKS endpoint served over loopback HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.api.conftest import assert_problem, hs_token

ADDRESS = {"name": "Ada", "line1": "Street 1", "line2": None, "city": "Berlin", "postal_code": "10117", "country": "DE"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict, claims: dict, signature: bytes = b"") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(signature)}"


def _claims(settings, **overrides) -> dict:
    now = int(time.time())
    claims = {
        "sub": "alice",
        "role": "customer",
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return claims


def _assert_401(response):
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    return body


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "garbage",
        "not-bearer",
        "alg-none",
        "expired",
        "nbf-future",
        "wrong-aud",
        "wrong-iss",
        "no-sub",
        "no-exp",
        "wrong-secret",
        "unknown-role",
        "hs512-not-allowed",
    ],
)
async def test_broken_tokens_get_401_with_a_bearer_challenge(case, gateway_client, settings):
    now = int(time.time())
    tokens = {
        "missing": None,
        "garbage": "Bearer not.a.jwt",
        "not-bearer": "Basic YWxpY2U6c2VjcmV0",
        "alg-none": "Bearer " + _unsigned({"alg": "none", "typ": "JWT"}, _claims(settings)),
        "expired": "Bearer " + hs_token(settings, exp=now - 60, iat=now - 700, nbf=now - 700),
        "nbf-future": "Bearer " + hs_token(settings, nbf=now + 120),
        "wrong-aud": "Bearer " + hs_token(settings, aud="someone-else"),
        "wrong-iss": "Bearer " + hs_token(settings, iss="https://evil.example"),
        "no-sub": "Bearer " + hs_token(settings, sub=None),
        "no-exp": "Bearer " + hs_token(settings, exp=None),
        "wrong-secret": "Bearer " + hs_token(settings, secret="another-secret-that-is-long-enough-0123"),
        "unknown-role": "Bearer " + hs_token(settings, role="admin"),
        "hs512-not-allowed": "Bearer " + hs_token(settings, secret="x" * 64, algorithm="HS512"),
    }
    headers = {"Authorization": tokens[case]} if tokens[case] else {}
    async with gateway_client() as http:
        _assert_401(await http.get("/v1/orders", headers=headers))


async def test_wrong_role_gets_403(gateway_client, bearer):
    order = {"items": [{"sku": "X", "quantity": 1}], "shipping_address": ADDRESS, "payment_token": "tok_ok"}
    async with gateway_client() as http:
        checks = [
            await http.post("/v1/orders", json=order, headers={**bearer(role="operator"), "Idempotency-Key": "k1"}),
            await http.post("/v1/orders", json=order, headers={**bearer(role="carrier"), "Idempotency-Key": "k1"}),
            await http.get("/v1/orders", headers=bearer(role="carrier")),
            await http.post(
                "/v1/orders/00000000-0000-0000-0000-000000000001/review", json={"decision": "approve"}, headers=bearer()
            ),
            await http.post("/v1/carrier/events", json={}, headers=bearer()),
            await http.get("/v1/orders", params={"customer_id": "bob"}, headers=bearer()),
        ]
    for response in checks:
        assert_problem(response, 403)


async def test_customer_id_comes_from_the_token_not_the_body(gateway_client, bearer):
    order = {
        "items": [{"sku": "X", "quantity": 1}],
        "shipping_address": ADDRESS,
        "payment_token": "tok_ok",
        "customer_id": "bob",
    }
    async with gateway_client() as http:
        response = await http.post("/v1/orders", json=order, headers={**bearer(), "Idempotency-Key": "k2"})
    body = assert_problem(response, 422)
    assert ["body", "customer_id"] in [e["loc"] for e in body["errors"]]


# --- JWKS (production) ----------------------------------------------------------------------------


class JwksServer:
    """A real JWKS endpoint on loopback; counts fetches and can be switched off."""

    def __init__(self) -> None:
        self.keys: list[dict] = []
        self.fetches = 0
        self.available = True
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.fetches += 1
                if not outer.available:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, kid: str, private_key, alg: str) -> None:
        algorithm = jwt.get_algorithm_by_name(alg)
        jwk = json.loads(algorithm.to_jwk(private_key.public_key()))
        self.keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def keys():
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "other-rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


@pytest.fixture
def jwks(keys):
    server = JwksServer()
    server.publish("rsa-1", keys["rsa"], "RS256")
    server.publish("ec-1", keys["ec"], "ES256")
    yield server
    server.close()


def _jwks_settings(jwks_server) -> dict:
    return {
        "jwt_jwks_url": jwks_server.url,
        "jwt_algorithms": ["RS256", "ES256"],
        "jwt_secret": "unused-in-production-0123456789abcdef",
    }


def _signed(settings, key, alg: str, kid: str | None, **claims) -> str:
    return jwt.encode(_claims(settings, **claims), key, algorithm=alg, headers={"kid": kid} if kid else None)


async def test_jwks_tokens_rs256_and_es256_are_accepted_and_keys_are_cached(gateway_client, settings, jwks, keys):
    async with gateway_client(**_jwks_settings(jwks)) as http:
        for key, alg, kid in ((keys["rsa"], "RS256", "rsa-1"), (keys["ec"], "ES256", "ec-1")):
            for _ in range(3):
                response = await http.get(
                    "/v1/orders", headers={"Authorization": f"Bearer {_signed(settings, key, alg, kid)}"}
                )
                assert response.status_code == 200, response.text
    assert jwks.fetches == 1  # one fetch, then the cache


async def test_jwks_rejects_forgeries_and_confusion(gateway_client, settings, jwks, keys):
    public_pem = (
        keys["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims(settings)).encode())}"
    confused = f"{signing_input}.{_b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())}"
    cases = {
        "hs256 signed with the public key": confused,
        "hs256 with the dev secret": hs_token(settings),
        "alg none": _unsigned({"alg": "none", "kid": "rsa-1"}, _claims(settings)),
        "unknown kid": _signed(settings, keys["other-rsa"], "RS256", "rsa-9"),
        "right kid, wrong key": _signed(settings, keys["other-rsa"], "RS256", "rsa-1"),
        "kid of the EC key with RS256": _signed(settings, keys["rsa"], "RS256", "ec-1"),
        "no kid with two published keys": _signed(settings, keys["rsa"], "RS256", None),
        "expired": _signed(settings, keys["rsa"], "RS256", "rsa-1", exp=int(time.time()) - 60),
        "wrong audience": _signed(settings, keys["ec"], "ES256", "ec-1", aud="other-api"),
        "wrong issuer": _signed(settings, keys["ec"], "ES256", "ec-1", iss="https://evil.example"),
        "no sub": jwt.encode(
            {k: v for k, v in _claims(settings).items() if k != "sub"},
            keys["ec"],
            algorithm="ES256",
            headers={"kid": "ec-1"},
        ),
    }
    async with gateway_client(**_jwks_settings(jwks)) as http:
        for name, token in cases.items():
            response = await http.get("/v1/orders", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, (name, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer"), name


async def test_jwks_unreachable_is_503_not_401_or_500(gateway_client, settings, jwks, keys):
    jwks.available = False
    async with gateway_client(**_jwks_settings(jwks)) as http:
        response = await http.get(
            "/v1/orders", headers={"Authorization": f"Bearer {_signed(settings, keys['rsa'], 'RS256', 'rsa-1')}"}
        )
    assert_problem(response, 503)
    assert int(response.headers["retry-after"]) >= 1


def test_settings_refuse_algorithm_confusion_by_configuration():
    from core.config import Settings

    with pytest.raises(ValueError):
        Settings(jwt_jwks_url="http://127.0.0.1:1/jwks", jwt_algorithms=["RS256", "HS256"])
    with pytest.raises(ValueError):
        Settings(jwt_algorithms=["RS256"])
    assert Settings(jwt_jwks_url="http://127.0.0.1:1/jwks").jwt_algorithms == ["RS256", "ES256"]
