"""Operators and developers on the dev server: ciphertext-only histories, search attributes,
`orders temporal setup`, `orders replay`, `orders history export` and `orders retry`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from core.domain import OrderStatus
from devstack.binaries import temporal_cli_path
from tests.harness import ROOT, random_ref, settings_env, wait_for
from tests.integration.conftest import auth
from tests.integration.test_order_api import final_state, order_body, submit
from tests.support import new_sku

PLAIN_SECRETS = ("Ada Lovelace", "Unter den Linden", "Berlin", "10117", "tok_ok", "tok_decline")
ENCRYPTED = "YmluYXJ5L2VuY3J5cHRlZA=="  # base64 of the encoding "binary/encrypted"


def temporal(address: str, *args: str) -> str:
    """The Temporal CLI *without* our codec: what anyone reading the server sees."""
    result = subprocess.run(
        [str(temporal_cli_path()), *args, "--address", address], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def orders(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**settings_env(settings), "PATH": "/usr/bin:/bin"}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_history_holds_ciphertext_only_and_search_attributes_find_the_orders(
    api, token, engine, workers, temporal_server, temporal_client
):
    sku = await new_sku(engine, price=1_500)
    customer = random_ref("ada")
    bearer = token(customer)
    completed = (await submit(api, bearer, order_body(sku))).json()
    declined = (await submit(api, bearer, order_body(sku, token="tok_decline"))).json()
    assert (await final_state(api, bearer, completed["id"]))["status"] == "completed"
    assert (await final_state(api, bearer, declined["id"]))["status"] == "rejected"

    for order in (completed, declined):
        raw = temporal(
            temporal_server.address, "workflow", "show", "--workflow-id", f"order-{order['id']}", "--output", "json"
        )
        for secret in PLAIN_SECRETS:
            assert secret not in raw, f"{secret!r} in plain text in the history of {order['id']}"
        assert ENCRYPTED in raw
    declined_raw = temporal(
        temporal_server.address, "workflow", "show", "--workflow-id", f"order-{declined['id']}", "--output", "json"
    )
    assert "Encoded failure" in declined_raw  # the provider's message is inside the encrypted attributes

    async def listed(query: str) -> set[str]:
        return {w.id async for w in temporal_client.list_workflows(query)}

    everything = await wait_for(
        lambda: _at_least(listed, f'CustomerId="{customer}"', 2), what="both orders by customer"
    )
    assert everything == {f"order-{completed['id']}", f"order-{declined['id']}"}
    assert await listed(f'CustomerId="{customer}" AND OrderStatus="completed" AND OrderTotal=1500') == {
        f"order-{completed['id']}"
    }
    assert await listed(f'CustomerId="{customer}" AND FailureReason="payment_declined"') == {f"order-{declined['id']}"}
    cli_list = json.loads(
        temporal(temporal_server.address, "workflow", "list", "--query", f'CustomerId="{customer}"', "--output", "json")
        or "[]"
    )
    assert len(cli_list) == 2


async def _at_least(listed, query: str, n: int):
    found = await listed(query)
    return found if len(found) >= n else None


async def test_temporal_setup_is_idempotent(it_settings):
    first = await orders(it_settings, "temporal", "setup")
    assert first.returncode == 0, first.stderr
    again = await orders(it_settings, "temporal", "setup")
    assert again.returncode == 0 and "already registered" in again.stdout


async def test_retry_brings_back_a_terminated_order_and_refuses_a_finished_one(
    api, token, engine, workers, temporal_client, it_settings, tmp_path
):
    sku = await new_sku(engine, price=300_000, on_hand=2)  # above the review threshold: the order parks
    customer, operator = token(random_ref("grace")), token("olga", "operator")
    order = (await submit(api, customer, order_body(sku))).json()
    workflow_id = f"order-{order['id']}"

    async def awaiting_review():
        return (await api.get(f"/v1/orders/{order['id']}", headers=auth(customer))).json()[
            "status"
        ] == "awaiting_review"

    await wait_for(awaiting_review, what="awaiting_review")
    await temporal_client.get_workflow_handle(workflow_id).terminate("operator pressed the wrong button")

    replayed = await orders(it_settings, "replay", workflow_id)
    assert replayed.returncode == 0 and "1 ok, 0 not ok" in replayed.stdout, replayed.stdout + replayed.stderr
    exported = await orders(it_settings, "history", "export", workflow_id, "--out", str(tmp_path))
    assert exported.returncode == 0, exported.stderr
    from_file = await orders(it_settings, "replay", "--file", str(tmp_path))
    assert from_file.returncode == 0 and "1 ok" in from_file.stdout

    retried = await orders(it_settings, "retry", order["id"])
    assert retried.returncode == 0, retried.stderr
    assert "new run" in retried.stdout
    # The new run carries on where the order was: still waiting for the operator, stock still held.
    approved = await api.post(f"/v1/orders/{order['id']}/review", json={"decision": "approve"}, headers=auth(operator))
    assert approved.status_code == 200, approved.text
    final = await final_state(api, customer, order["id"])
    assert final["status"] == OrderStatus.COMPLETED

    refused = await orders(it_settings, "retry", order["id"])
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert refused.stderr.startswith("orders: error: ") and "ended as completed" in refused.stderr
    unknown = await orders(it_settings, "retry", "not-a-uuid")
    assert unknown.returncode == 2 and unknown.stderr.startswith("orders: error: not an order id")


async def test_chaos_report_says_what_an_unfinished_order_waits_on(api, token, engine, workers, temporal_client):
    import uuid

    from bench.chaos import diagnose_unfinished

    sku = await new_sku(engine, price=300_000, on_hand=1)  # above the review threshold: the order parks
    customer = token(random_ref("ursula"))
    order = (await submit(api, customer, order_body(sku))).json()

    async def awaiting_review():
        return (await api.get(f"/v1/orders/{order['id']}", headers=auth(customer))).json()[
            "status"
        ] == "awaiting_review"

    await wait_for(awaiting_review, what="awaiting_review")
    missing = str(uuid.uuid4())
    parked, unknown = await diagnose_unfinished(temporal_client, [order["id"], missing])
    assert parked.startswith(f"  order-{order['id']}: RUNNING, ") and "pending activities: none" in parked
    assert unknown.startswith(f"  order-{missing}: describe failed")
    await temporal_client.get_workflow_handle(f"order-{order['id']}").terminate("test done")
