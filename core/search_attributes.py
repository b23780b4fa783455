"""How an order appears in the Temporal UI: its custom search attributes (one definition for the
workflow, the gateway, `orders dev`, `orders temporal setup` and the tests) and its static summary
and details.

Imports only ``temporalio`` and ``core.domain`` so the workflow may use it. Search attributes are
never encrypted: they hold ids, statuses and amounts, never personal data.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, SearchAttributeUpdate, TypedSearchAttributes

from core.domain import FailureReason, OrderStatus

ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
ORDER_TOTAL = SearchAttributeKey.for_int("OrderTotal")
FAILURE_REASON = SearchAttributeKey.for_keyword("FailureReason")

ALL_KEYS = (ORDER_STATUS, CUSTOMER_ID, ORDER_TOTAL, FAILURE_REASON)

#: name -> type as the Temporal CLI writes it (``--search-attribute OrderStatus=Keyword``).
SEARCH_ATTRIBUTES: dict[str, str] = {
    key.name: {"KEYWORD": "Keyword", "INT": "Int"}[key.indexed_value_type.name] for key in ALL_KEYS
}


def order_search_attributes(
    status: OrderStatus, customer_id: str, total: int, reason: FailureReason | None = None
) -> TypedSearchAttributes:
    """The attributes of an order in one state (FailureReason is left out while there is none)."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(ORDER_STATUS, status.value),
        SearchAttributePair(CUSTOMER_ID, customer_id),
        SearchAttributePair(ORDER_TOTAL, total),
    ]
    if reason is not None:
        pairs.append(SearchAttributePair(FAILURE_REASON, reason.value))
    return TypedSearchAttributes(pairs)


def order_search_attribute_updates(
    status: OrderStatus, customer_id: str, total: int, reason: FailureReason | None = None
) -> list[SearchAttributeUpdate]:
    """The same attributes as upserts for ``workflow.upsert_search_attributes``."""
    return [pair.key.value_set(pair.value) for pair in order_search_attributes(status, customer_id, total, reason)]


def order_status_search_attribute_updates(
    status: OrderStatus, reason: FailureReason | None = None
) -> list[SearchAttributeUpdate]:
    """Only what a transition changes: the status, and the failure reason once there is one."""
    updates = [ORDER_STATUS.value_set(status.value)]
    if reason is not None:
        updates.append(FAILURE_REASON.value_set(reason.value))
    return updates


async def ensure_search_attributes(client: Client, namespace: str, *, timeout_s: float = 10.0) -> list[str]:
    """Register the attributes that are missing in ``namespace``; returns the names added.

    Idempotent. Raises ValueError if one exists with another type (that needs an operator).
    """
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
    from temporalio.service import RPCError, RPCStatusCode

    timeout = timedelta(seconds=timeout_s)
    try:
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace), timeout=timeout
        )
        have = {**existing.system_attributes, **existing.custom_attributes}
    except RPCError as error:
        if error.status != RPCStatusCode.UNIMPLEMENTED:
            raise
        have = {}  # the time-skipping test server can add but not list; adding again is harmless
    missing = {}
    for key in ALL_KEYS:
        wanted = IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{key.indexed_value_type.name}")
        if key.name not in have:
            missing[key.name] = wanted
        elif have[key.name] != wanted:
            raise ValueError(
                f"search attribute {key.name} exists as {IndexedValueType.Name(have[key.name])}, "
                f"expected {IndexedValueType.Name(wanted)}"
            )
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing), timeout=timeout
        )
    return sorted(missing)


def order_static_summary(order_id: object, customer_id: str, total: int, currency: str) -> str:
    """One line in the UI's workflow list (static summary; encrypted like every payload)."""
    return f"Order {order_id} · {customer_id} · {total} {currency}"


def order_static_details(order_id: object, customer_id: str, total: int, currency: str, lines: list) -> str:
    """Markdown on the workflow page: who ordered what for how much (no address, no payment token)."""
    rows = "\n".join(f"| {line.sku} | {line.quantity} | {line.unit_price} |" for line in lines)
    return (
        f"**Order** `{order_id}`  \n**Customer** `{customer_id}`  \n"
        f"**Total** {total} {currency} (minor units)\n\n| SKU | qty | unit price |\n|---|---|---|\n{rows}"
    )
