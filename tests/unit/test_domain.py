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
