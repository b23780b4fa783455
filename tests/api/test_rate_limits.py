"""Per-caller rate limits with the IETF RateLimit headers, in memory and in Redis."""

from __future__ import annotations

import re
import socket
import uuid

import pytest

from devstack.processes import free_port
from tests.api.conftest import assert_problem

RATELIMIT = re.compile(r'^"(?P<name>\w+)";r=(?P<r>\d+);t=(?P<t>\d+)$')
REDIS = ("127.0.0.1", 6379)


def _remaining(response) -> tuple[str, int, int]:
    match = RATELIMIT.match(response.headers["ratelimit"])
    assert match, response.headers.get("ratelimit")
    return match["name"], int(match["r"]), int(match["t"])


def _assert_429(response, name: str) -> None:
    body = assert_problem(response, 429)
    assert body["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    _, left, reset = _remaining(response)
    assert left == 0 and int(response.headers["retry-after"]) >= reset >= 1
    assert response.headers["ratelimit-policy"].startswith(f'"{name}";q=')


async def test_each_caller_has_its_own_budget_and_every_response_carries_the_headers(gateway_client, bearer):
    alice, bob = bearer(), bearer()
    async with gateway_client(rate_limit_read="3/minute") as http:
        answers = [
            await http.get(path, headers=alice) for path in ("/v1/orders", "/v1/products", f"/v1/orders/{uuid.uuid4()}")
        ]
        assert [a.status_code for a in answers] == [200, 200, 404]  # error answers count and carry headers too
        assert [_remaining(a)[:2] for a in answers] == [("read", 2), ("read", 1), ("read", 0)]
        assert all(a.headers["ratelimit-policy"] == '"read";q=3;w=60' for a in answers)
        _assert_429(await http.get("/v1/orders", headers=alice), "read")
        assert (await http.get("/v1/orders", headers=bob)).status_code == 200
        assert "ratelimit" not in (await http.get("/healthz")).headers  # only /v1/ routes are limited


async def test_route_classes_have_separate_budgets(gateway_client, bearer):
    alice = bearer()
    order = {"items": [{"sku": "NOPE", "quantity": 1}], "shipping_address": {}, "payment_token": "tok_ok"}
    async with gateway_client(
        rate_limit_submit="2/minute", rate_limit_read="5/minute", rate_limit_webhook="1/minute"
    ) as http:
        for _ in range(2):
            response = await http.post("/v1/orders", json=order, headers={**alice, "Idempotency-Key": uuid.uuid4().hex})
            assert response.status_code == 422 and _remaining(response)[0] == "submit"
        _assert_429(await http.post("/v1/orders", json=order, headers={**alice, "Idempotency-Key": "x"}), "submit")
        assert _remaining(await http.get("/v1/orders", headers=alice))[:2] == ("read", 4)
        carrier = bearer("carrier-1", "carrier")
        assert (await http.post("/v1/carrier/events", json={}, headers=carrier)).status_code == 401  # unsigned
        _assert_429(await http.post("/v1/carrier/events", json={}, headers=carrier), "webhook")


async def test_without_a_token_the_peer_ip_counts_and_forwarded_for_only_from_trusted_proxies(gateway_client):
    async with gateway_client(rate_limit_read="2/minute", peer=("198.51.100.1", 1)) as http:
        for forwarded in ("192.0.2.1", "192.0.2.2"):
            assert (await http.get("/v1/products", headers={"X-Forwarded-For": forwarded})).status_code == 401
        # An untrusted peer cannot escape its budget by inventing X-Forwarded-For.
        _assert_429(await http.get("/v1/products", headers={"X-Forwarded-For": "192.0.2.3"}), "read")
    async with gateway_client(rate_limit_read="2/minute", peer=("10.0.0.5", 1), trusted_proxies=["10.0.0.0/8"]) as http:
        for _ in range(2):
            assert (
                await http.get("/v1/products", headers={"X-Forwarded-For": "192.0.2.1, 10.0.0.9"})
            ).status_code == 401
        _assert_429(await http.get("/v1/products", headers={"X-Forwarded-For": "192.0.2.1"}), "read")
        # Behind the trusted proxy, another client address has its own budget.
        assert _remaining(await http.get("/v1/products", headers={"X-Forwarded-For": "192.0.2.2"}))[1] == 1


async def test_an_invalid_token_counts_against_the_ip_not_the_claimed_subject(gateway_client, bearer):
    async with gateway_client(rate_limit_read="1/minute") as http:
        assert (await http.get("/v1/orders", headers={"Authorization": "Bearer forged"})).status_code == 401
        _assert_429(await http.get("/v1/orders", headers={"Authorization": "Bearer forged-again"}), "read")
        assert (await http.get("/v1/orders", headers=bearer())).status_code == 200


def _redis_reachable() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=0.5):
            return True
    except OSError:
        return False


async def test_replicas_share_one_budget_in_redis(gateway_client, bearer):
    if not _redis_reachable():
        pytest.skip("no Redis reachable at 127.0.0.1:6379, so the Redis rate-limit storage was NOT tested")
    alice = bearer()
    storage = {"rate_limit_storage": "redis://127.0.0.1:6379/0", "rate_limit_read": "4/minute"}
    async with gateway_client(**storage) as replica_a, gateway_client(**storage) as replica_b:
        answers = [await (replica_a if i % 2 else replica_b).get("/v1/orders", headers=alice) for i in range(4)]
        assert [a.status_code for a in answers] == [200] * 4
        assert [_remaining(a)[1] for a in answers] == [3, 2, 1, 0]
        _assert_429(await replica_a.get("/v1/orders", headers=alice), "read")
        _assert_429(await replica_b.get("/v1/orders", headers=alice), "read")


async def test_unreachable_storage_fails_open_without_500(gateway_client, bearer):
    async with gateway_client(
        rate_limit_storage=f"redis://127.0.0.1:{free_port()}/0", rate_limit_read="1/minute"
    ) as http:
        answers = [await http.get("/v1/orders", headers=bearer("same-caller")) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all("ratelimit" not in a.headers for a in answers)
