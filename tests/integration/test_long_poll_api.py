"""The long-poll and the 202 of a slow action against real orders: Temporal, a worker, the sandbox
providers and the gateway. Each long-poll is answered by a real workflow transition reaching the
read model (the projection's NOTIFY), not by the end of its wait."""

from __future__ import annotations

import time
import uuid
from contextlib import asynccontextmanager

import httpx
from asgi_lifespan import LifespanManager

from api.app import create_app
from tests.integration.conftest import auth
from tests.integration.test_order_api import order_body, submit
from tests.support import new_sku

ENDED = "until=completed&until=cancelled&until=rejected&until=failed"


@asynccontextmanager
async def _gateway(settings, engine, temporal_client, **overrides):
    app = create_app(settings.model_copy(update=overrides), engine=engine, client=temporal_client)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=60) as http:
            yield http


async def test_a_long_poll_follows_an_order_through_review_to_its_end(api, token, engine, workers):
    sku = await new_sku(engine, price=200_000, on_hand=3)  # at or above the review threshold: parks
    dora, olga = token(f"dora-{uuid.uuid4().hex[:6]}"), token("olga", role="operator")
    order = (await submit(api, dora, order_body(sku))).json()
    path = f"/v1/orders/{order['id']}"

    started = time.monotonic()
    waiting = await api.get(f"{path}?wait=25&until=awaiting_review", headers=auth(dora))
    assert waiting.status_code == 200 and waiting.json()["status"] == "awaiting_review", waiting.text
    assert time.monotonic() - started < 25  # answered by the transition, not the timeout
    etag = waiting.headers["ETag"]

    # Nothing changes while it waits for the operator: the wait ends with 304 and the same ETag.
    unchanged = await api.get(f"{path}?wait=1", headers={**auth(dora), "If-None-Match": etag})
    assert (unchanged.status_code, unchanged.headers["ETag"]) == (304, etag)

    approved = await api.post(f"{path}/review", json={"decision": "approve"}, headers=auth(olga))
    assert approved.status_code in (200, 202), approved.text
    # Any change ends an If-None-Match wait: the decision recorded, or the next status.
    moved = await api.get(f"{path}?wait=25", headers={**auth(dora), "If-None-Match": etag})
    assert moved.status_code == 200 and moved.headers["ETag"] != etag
    assert moved.json()["review"]["decision"] == "approve" or moved.json()["status"] != "awaiting_review"

    ended = await api.get(f"{path}?wait=25&{ENDED}", headers=auth(dora))
    assert ended.status_code == 200 and ended.json()["status"] == "completed", ended.text

    # Another customer learns nothing, waiting or not.
    other = await api.get(f"{path}?wait=5&{ENDED}", headers=auth(token("mallory")))
    assert other.status_code == 404


async def test_a_cancel_that_outlasts_the_update_wait_is_202_and_the_long_poll_sees_it_end(
    it_settings, engine, temporal_client, workers, token
):
    """tok_slow holds the authorization for 6 s: a cancel accepted meanwhile cannot finish within
    the gateway's 1 s update wait, so it is answered 202 with the order as it is, and the caller
    follows the order to `cancelled` with the long-poll instead of holding its connection."""
    sku = await new_sku(engine, on_hand=5)
    erin = token(f"erin-{uuid.uuid4().hex[:6]}")
    async with _gateway(it_settings, engine, temporal_client, update_wait_s=1.0) as http:
        order = (await submit(http, erin, order_body(sku, token="tok_slow"))).json()
        path = f"/v1/orders/{order['id']}"
        reserved = await http.get(f"{path}?wait=25&until=stock_reserved&{ENDED}", headers=auth(erin))
        assert reserved.json()["status"] == "stock_reserved", reserved.text

        cancelled = await http.post(f"{path}/cancel", json={"reason": "too slow"}, headers=auth(erin))
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["cancel_requested"] is True
        assert cancelled.json()["status"] not in ("cancelled", "completed")

        ended = await http.get(f"{path}?wait=25&{ENDED}", headers=auth(erin))
        assert (ended.json()["status"], ended.json()["failure_reason"]) == ("cancelled", "cancelled_by_customer")
        # The same cancel again, now that it is done: 200 with the final state.
        again = await http.post(f"{path}/cancel", json={"reason": "too slow"}, headers=auth(erin))
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
