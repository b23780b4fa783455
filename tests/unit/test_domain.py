"""Pure domain rules: statuses, ids, keys, addresses, cursors, the first view and its public body."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from core.db.read_model import InvalidCursor, decode_cursor, encode_cursor
from core.domain import (
    Address,
    CarrierEvent,
    CarrierEventKind,
    OrderLine,
    OrderStatus,
    OrderView,
    ReviewDecision,
    ReviewRecord,
    StatusChange,
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


def _received(at: datetime) -> OrderView:
    from tests.support import ADDRESS

    return OrderView.received(
        order_id=uuid.UUID("3f0a8a4e-5b8e-5c55-9a61-7f5f2f0f8a11"),
        customer_id="alice",
        items=[OrderLine(sku="MUG-WHT", quantity=2, unit_price=1299)],
        total=2598,
        currency="EUR",
        shipping_address=ADDRESS,
        at=at,
    )


def test_a_received_order_starts_with_one_history_entry_at_the_given_time():
    at = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)
    view = _received(at)
    assert view.status == OrderStatus.RECEIVED and view.failure_reason is None
    assert view.history == [StatusChange(status=OrderStatus.RECEIVED, at=at)]
    assert view.created_at == view.updated_at == at
    assert (view.tracking_number, view.review, view.carrier_events, view.cancel_requested) == (None, None, [], False)
    # Pure: the workflow builds its first state with it, so the same input gives the same view.
    assert _received(at) == view and _received(at).history is not view.history


def test_the_public_order_is_byte_for_byte_what_clients_got_before_the_split():
    """The 202 body stored for Idempotency-Key replays is the domain view's JSON (as it was before
    the API had a model of its own): it must still read back and answer the same bytes."""
    from api.schemas import OrderView as PublicOrder

    view = _received(datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC))
    view.review = ReviewRecord(decision=ReviewDecision.APPROVE, reviewer="olga", at=view.created_at)
    view.carrier_events = [CarrierEvent(event=CarrierEventKind.PICKED_UP, occurred_at=view.created_at)]
    stored = view.model_dump(mode="json")  # what the idempotency table and the read model hold
    replayed = OrderView.model_validate(stored)
    published = set(PublicOrder.model_fields)
    assert PublicOrder.of(replayed).model_dump_json() == view.model_dump_json(include=published)
    assert list(PublicOrder.model_fields) == [name for name in OrderView.model_fields if name in published]


def test_the_public_order_publishes_only_its_own_fields():
    """A field the workflow adds to its view (at any depth) stays out of the API's answers."""
    from api.schemas import OrderView as PublicOrder

    class InternalLine(OrderLine):
        warehouse: str = "B-12"

    class InternalView(OrderView):
        fraud_score: float = 0.93

    view = _received(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    internal = InternalView(**{**dict(view), "items": [InternalLine(**dict(line)) for line in view.items]})
    body = PublicOrder.of(internal).model_dump(mode="json")
    assert "fraud_score" not in body and "warehouse" not in body["items"][0]
    published = set(PublicOrder.model_fields)
    assert body == PublicOrder.of(view).model_dump(mode="json") == view.model_dump(mode="json", include=published)


def test_every_domain_model_is_complete_at_import():
    """A model referring to one defined further down stays incomplete until first use outside the
    workflow sandbox, and fails inside it (PydanticUserError on every workflow task)."""
    import pydantic

    import core.domain

    models = [v for v in vars(core.domain).values() if isinstance(v, type) and issubclass(v, pydantic.BaseModel)]
    assert models
    assert [m.__name__ for m in models if not m.__pydantic_complete__] == []
