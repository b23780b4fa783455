"""Pure domain rules: statuses, ids, keys, addresses, cursors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from core.db.read_model import InvalidCursor, decode_cursor, encode_cursor
from core.domain import (
    Address,
    OrderStatus,
    activity_task_queue,
    order_id_for_key,
    order_id_from_workflow_id,
    order_workflow_id,
    provider_key,
)


def test_terminal_and_cancellable_statuses_partition_the_lifecycle():
    terminal = {s for s in OrderStatus if s.is_terminal}
    cancellable = {s for s in OrderStatus if s.is_cancellable}
    assert terminal == {OrderStatus.COMPLETED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.FAILED}
    assert OrderStatus.SHIPPED not in cancellable and not (terminal & cancellable)
    assert terminal | cancellable | {OrderStatus.SHIPPED} == set(OrderStatus)


def test_workflow_id_round_trips_and_rejects_foreign_ids():
    order_id = uuid.uuid4()
    assert order_workflow_id(order_id) == f"order-{order_id}"
    assert order_id_from_workflow_id(order_workflow_id(order_id)) == order_id
    with pytest.raises(ValueError):
        order_id_from_workflow_id("payment-123")


def test_order_id_is_deterministic_per_caller_and_key():
    assert order_id_for_key("alice", "k1") == order_id_for_key("alice", "k1")
    assert order_id_for_key("alice", "k1") != order_id_for_key("bob", "k1")
    assert order_id_for_key("alice", "k1") != order_id_for_key("alice", "k2")
    # The separator keeps ("a", "b:c") and ("a:b", "c") apart.
    assert order_id_for_key("a", "b:c") != order_id_for_key("a:b", "c")


def test_provider_keys_differ_per_operation():
    order_id = uuid.uuid4()
    keys = {provider_key(order_id, op) for op in ("authorize", "capture", "void", "refund", "ship")}
    assert len(keys) == 5


def test_activity_queues_derive_from_the_workflow_queue():
    assert activity_task_queue("orders", "payments") == "orders-payments"
    with pytest.raises(ValueError):
        activity_task_queue("orders", "billing")


@pytest.mark.parametrize("country", ["de", "XX", "DEU", ""])
def test_address_rejects_non_iso_countries(country):
    with pytest.raises(ValidationError):
        Address(name="A", line1="B", city="C", postal_code="1", country=country)


def test_address_rejects_unknown_fields_and_overlong_strings():
    with pytest.raises(ValidationError):
        Address(name="A", line1="B", city="C", postal_code="1", country="DE", floor=3)
    with pytest.raises(ValidationError):
        Address(name="A" * 201, line1="B", city="C", postal_code="1", country="DE")


def test_cursor_round_trips_and_rejects_garbage():
    at, order_id = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(at, order_id)) == (at, order_id)
    for garbage in ("", "!!!", "bm90IGpzb24", encode_cursor(at, order_id)[:-3]):
        with pytest.raises(InvalidCursor):
            decode_cursor(garbage)


def test_reads_merge_the_tracking_events_recorded_beside_the_projected_view():
    import uuid
    from datetime import UTC, datetime, timedelta

    from core.db.read_model import with_tracking
    from tests.support import ADDRESS

    t0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    view = {
        "id": str(uuid.uuid4()),
        "customer_id": "c",
        "status": "completed",
        "items": [{"sku": "S", "quantity": 1, "unit_price": 100}],
        "total": 100,
        "currency": "EUR",
        "shipping_address": ADDRESS.model_dump(mode="json"),
        "tracking_number": "TRK1",
        "history": [{"status": "received", "at": t0.isoformat()}],
        "created_at": t0.isoformat(),
        "updated_at": t0.isoformat(),
        "carrier_events": [{"event": "delivered", "occurred_at": (t0 + timedelta(hours=3)).isoformat()}],
    }
    tracking = {"in_transit": (t0 + timedelta(hours=2)).isoformat(), "picked_up": (t0 + timedelta(hours=1)).isoformat()}
    merged = with_tracking(view, tracking)
    assert [e.event.value for e in merged.carrier_events] == ["picked_up", "in_transit", "delivered"]
    # An order from before the change got every event as a signal: nothing is repeated.
    older = {**view, "carrier_events": [{"event": "picked_up", "occurred_at": t0.isoformat()}, *view["carrier_events"]]}
    assert [e.event.value for e in with_tracking(older, {"picked_up": tracking["picked_up"]}).carrier_events] == [
        "picked_up",
        "delivered",
    ]
    assert with_tracking(view, {}).carrier_events == with_tracking(view, None).carrier_events
