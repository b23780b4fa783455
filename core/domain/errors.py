"""Errors the order service raises; the gateway maps each to one HTTP problem type."""

from __future__ import annotations


class OrderError(Exception):
    """Base of the errors callers may see. ``str(error)`` is safe to show to the caller."""


class OrderNotFound(OrderError):
    pass


class InvalidOrderState(OrderError):
    """The order's state does not allow the action (cancel after shipping, review when not awaiting)."""


class InvalidAmend(OrderError):
    """The order refused an amend on its merits (an SKU it does not have, more units than were
    reserved, no line left); the message names what is wrong. Retrying the same amend cannot help."""


class InvalidCancel(OrderError):
    """The order refused a cancel of shipments on its merits (a shipment id it does not have); the
    message names it. Retrying the same cancel cannot help."""


class UnknownSkus(OrderError):
    def __init__(self, skus: list[str]) -> None:
        super().__init__(f"unknown SKU(s): {', '.join(skus)}")
        self.skus = skus


class MixedCurrencies(OrderError):
    pass


class IdempotencyKeyReused(OrderError):
    """The same Idempotency-Key came with a different request body."""


class UnstorableValue(OrderError):
    """The database refused a value of the request itself (SQLSTATE class 22, e.g. NUL in text).
    No retry can fix it, so it is the caller's error, never an outage. Input validation should
    have refused the value first; this is the backstop."""


class DependencyUnavailable(OrderError):
    """Temporal or the database did not answer in time; the caller should retry later."""

    def __init__(self, dependency: str, retry_after_s: int = 2) -> None:
        super().__init__(f"{dependency} is unavailable, retry later")
        self.dependency = dependency
        self.retry_after_s = retry_after_s


class TooManyWaiters(OrderError):
    """This gateway process already holds its maximum of waiting reads (long-polls); the caller
    retries after ``retry_after_s`` (possibly reaching another process) or reads without waiting."""

    def __init__(self, max_waiters: int, retry_after_s: int = 1) -> None:
        super().__init__(f"this gateway already holds {max_waiters} waiting reads; retry, or read without wait")
        self.retry_after_s = retry_after_s


class UnknownStockLocation(OrderError):
    """No such warehouse, or no such SKU in the catalogue."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key} not found")
        self.kind = kind
        self.key = key


class StockBelowReserved(OrderError):
    """On hand may not drop below what orders hold reserved in that warehouse."""

    def __init__(self, warehouse_id: str, sku: str, on_hand: int, reserved: int) -> None:
        super().__init__(
            f"{warehouse_id} holds {reserved} of {sku} reserved for orders; on_hand cannot be set to {on_hand}"
        )
        self.reserved = reserved
