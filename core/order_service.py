"""What the gateway does with orders: submit (idempotently), read, cancel (whole or some shipments),
amend (when part of it was unavailable), review, change address, and forward carrier events. Talks only to Temporal (by the names in core.domain) and the read model.

Every call to Temporal or the database is bounded in time; failures to reach them become
:class:`DependencyUnavailable`, which the gateway answers with 503 and Retry-After. A value the
database refuses itself is :class:`UnstorableValue` instead: retrying cannot help.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.config import Settings
from core.db.catalog import Catalog
from core.db.idempotency import IdempotencyStore
from core.db.order_changes import OrderChanges
from core.db.read_model import OrderPage, OrderReadModel, VersionedView
from core.domain import (
    ERR_INVALID_AMEND,
    ERR_INVALID_CANCEL,
    ERR_INVALID_STATE,
    ORDER_WORKFLOW,
    SIGNAL_CARRIER_EVENT,
    UPDATE_AMEND,
    UPDATE_CANCEL,
    UPDATE_REVIEW,
    UPDATE_SHIPPING_ADDRESS,
    Address,
    AddressChangeRequest,
    AmendLine,
    AmendRequest,
    CancelRequest,
    CarrierEvent,
    CarrierEventKind,
    CarrierEventSignal,
    DependencyUnavailable,
    IdempotencyKeyReused,
    InvalidAmend,
    InvalidCancel,
    InvalidOrderState,
    MixedCurrencies,
    OrderInput,
    OrderLine,
    OrderNotFound,
    OrderStatus,
    OrderView,
    ReviewRequest,
    ShipmentStatus,
    UnknownSkus,
    UnstorableValue,
    order_id_for_key,
    order_workflow_id,
)
from core.search_attributes import order_search_attributes, order_static_details, order_static_summary
from core.temporal import TemporalConnection

log = structlog.get_logger(__name__)

SUBMIT_ROUTE = "POST /v1/orders"
# Carrier events the order workflow decides nothing on: recorded in the read model, not signalled
# (two Temporal actions and workflow tasks fewer per order). delivered and lost are signals.
TRACKING_ONLY = frozenset({CarrierEventKind.PICKED_UP, CarrierEventKind.IN_TRANSIT})
# Refusals of a request itself (ApplicationError.type of the workflow's validator) -> the error the
# gateway answers with 422; every other refusal is about the order's state (409).
_REFUSED_ON_ITS_MERITS: dict[str | None, type[InvalidAmend | InvalidCancel]] = {
    ERR_INVALID_AMEND: InvalidAmend,
    ERR_INVALID_CANCEL: InvalidCancel,
}
DB_ERRORS = (OperationalError, DBAPIError, PoolTimeout, OSError, asyncio.TimeoutError)


def database_error(error: Exception) -> UnstorableValue | DependencyUnavailable:
    """What one of DB_ERRORS means to the caller. A data exception (SQLSTATE class 22, such as NUL
    in text, 22021, or an untranslatable character, 22P05) or an argument the driver cannot encode
    is the request's fault and would fail again on every retry; anything else is an outage."""
    if isinstance(error, DBAPIError):
        sqlstate = getattr(error.orig, "sqlstate", None)
        # asyncpg refuses an argument it cannot encode (an unpaired surrogate) with a ValueError.
        if (isinstance(sqlstate, str) and sqlstate.startswith("22")) or isinstance(
            getattr(error.orig, "__cause__", None), ValueError
        ):
            return UnstorableValue("a value in the request cannot be stored (for example one holding NUL, \\u0000)")
    return DependencyUnavailable("database")


def _digest(value: object) -> str:
    """A short stable digest of a JSON-able value (for update ids)."""
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's subject and role."""

    subject: str
    role: str

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


@dataclass(frozen=True)
class NewOrder:
    items: list[tuple[str, int]]  # (sku, quantity)
    shipping_address: Address
    payment_token: str

    def canonical_hash(self) -> str:
        body = {
            "items": [[sku, quantity] for sku, quantity in self.items],
            "shipping_address": self.shipping_address.model_dump(mode="json"),
            "payment_token": self.payment_token,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Submission:
    view: OrderView
    replayed: bool


@dataclass(frozen=True)
class ActionOutcome:
    """What a cancel, amend, review or address change did: the order after it (``finished``), or,
    when the order accepted the change but has not finished it within ``update_wait_s``, the order
    as it is now (the change will happen; the gateway answers 202)."""

    view: OrderView
    finished: bool = True


@asynccontextmanager
async def _not_parked(_wait_s: float):
    yield


class OrderService:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        temporal: TemporalConnection,
        changes: OrderChanges | None = None,
    ) -> None:
        self._settings = settings
        self._changes = changes
        self._engine = engine
        self._temporal_connection = temporal
        self._catalog = Catalog(engine)
        self._read_model = OrderReadModel(engine, region=settings.region)
        self._rpc_timeout = timedelta(seconds=settings.temporal_rpc_timeout_s)

    # --- submission ---------------------------------------------------------------------------

    async def submit(self, caller: Caller, idempotency_key: str, order: NewOrder) -> Submission:
        """Accept an order exactly once per (caller, Idempotency-Key) and start its workflow.

        Duplicates (concurrent or later) get the same order; a different body with the same key
        raises IdempotencyKeyReused. The workflow is started on every attempt with a conflict
        policy that attaches to the running one, so a gateway crash between accepting and starting
        is healed by the client's retry.
        """
        request_hash = order.canonical_hash()
        now = datetime.now(UTC)
        lines, currency = await self._price(order)
        try:
            async with self._engine.begin() as conn:
                store = IdempotencyStore(conn, caller.subject, SUBMIT_ROUTE)
                claimed, order_id = await store.claim(
                    idempotency_key,
                    request_hash,
                    order_id_for_key(caller.subject, idempotency_key),
                    now,
                    timedelta(seconds=self._settings.idempotency_retention_s),
                )
                if claimed:
                    view = OrderView.received(
                        order_id=order_id,
                        customer_id=caller.subject,
                        items=lines,
                        total=sum(line.quantity * line.unit_price for line in lines),
                        currency=currency,
                        shipping_address=order.shipping_address,
                        at=now,
                    )
                    # The view as the domain has it: a replay rebuilds it to restart the workflow,
                    # and the gateway maps it to its public body every time, the first one too.
                    await store.save_response(idempotency_key, 202, view.model_dump(mode="json"))
                    await self._read_model.insert_received(conn, view, region=self._settings.region)
                else:
                    record = await store.load(idempotency_key)
                    assert record is not None  # claim() found it under the same transaction
                    if record.request_hash != request_hash:
                        raise IdempotencyKeyReused(
                            "this Idempotency-Key was already used with a different request body"
                        )
                    view = OrderView.model_validate(record.response_body)
        except DB_ERRORS as error:
            raise database_error(error) from error

        try:
            await self._start_workflow(view, order.payment_token)
        except DependencyUnavailable:
            if claimed:
                # Nothing was started (as far as we know): forget the claim so the retry starts over.
                await self._forget(caller, idempotency_key, view.id)
            raise
        log.info("order accepted", order_id=str(view.id), replayed=not claimed)
        return Submission(view=view, replayed=not claimed)

    async def _price(self, order: NewOrder) -> tuple[list[OrderLine], str]:
        """The order's lines at today's catalogue prices, and their one currency."""
        skus = [sku for sku, _ in order.items]
        try:
            prices = await self._catalog.prices(skus)
        except DB_ERRORS as error:
            raise database_error(error) from error
        unknown = [sku for sku in skus if sku not in prices]
        if unknown:
            raise UnknownSkus(unknown)
        currencies = {currency for _, currency in prices.values()}
        if len(currencies) != 1:
            raise MixedCurrencies("all items of one order must be priced in the same currency")
        lines = [OrderLine(sku=sku, quantity=quantity, unit_price=prices[sku][0]) for sku, quantity in order.items]
        return lines, currencies.pop()

    async def _start_workflow(self, view: OrderView, payment_token: str) -> None:
        settings = self._settings
        order_input = OrderInput(
            order_id=view.id,
            customer_id=view.customer_id,
            lines=view.items,
            currency=view.currency,
            total=view.total,
            shipping_address=view.shipping_address,
            payment_token=payment_token,
            created_at=view.created_at,
            review_threshold=settings.review_threshold_minor,
            review_timeout_s=settings.review_timeout_s,
            delivery_deadline_s=settings.delivery_deadline_s,
            customer_response_timeout_s=settings.customer_response_timeout_s,
        )
        client = await self._client()
        try:
            await self._temporal(
                client.start_workflow(
                    ORDER_WORKFLOW,
                    order_input,
                    id=order_workflow_id(view.id),
                    task_queue=settings.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    static_summary=order_static_summary(view.id, view.customer_id, view.total, view.currency),
                    static_details=order_static_details(
                        view.id, view.customer_id, view.total, view.currency, view.items
                    ),
                    # Searchable from the first moment; the workflow upserts them at every transition.
                    search_attributes=order_search_attributes(view.status, view.customer_id, view.total),
                    rpc_timeout=self._rpc_timeout,
                )
            )
        except WorkflowAlreadyStartedError:
            pass  # the order's workflow already ran to its end: nothing to start
        except RPCError as error:
            raise DependencyUnavailable("workflow service") from error

    async def _forget(self, caller: Caller, idempotency_key: str, order_id: uuid.UUID) -> None:
        try:
            async with self._engine.begin() as conn:
                await IdempotencyStore(conn, caller.subject, SUBMIT_ROUTE).forget(idempotency_key)
                await self._read_model.forget_received(conn, order_id)
        except DB_ERRORS:
            log.warning("could not forget an unstarted submission", order_id=str(order_id))

    # --- reads --------------------------------------------------------------------------------

    async def get(self, caller: Caller, order_id: uuid.UUID) -> OrderView:
        """The order from the read model; another customer's order is reported as not found."""
        return (await self.get_versioned(caller, order_id)).view

    async def get_versioned(self, caller: Caller, order_id: uuid.UUID) -> VersionedView:
        """:meth:`get`, with the version of the read (the gateway's ETag)."""
        try:
            versioned = await self._read_model.get_versioned(order_id)
        except DB_ERRORS as error:
            raise database_error(error) from error
        if versioned is None or (not caller.is_operator and versioned.view.customer_id != caller.subject):
            raise OrderNotFound(f"order {order_id} not found")
        return versioned

    async def watch(
        self,
        caller: Caller,
        order_id: uuid.UUID,
        *,
        wait_s: float,
        seen: Collection[str] = (),
        until: Collection[OrderStatus] = (),
        parked: Callable[[float], AbstractAsyncContextManager[None]] | None = None,
    ) -> VersionedView:
        """The order as :meth:`get_versioned` reads it, once it is ready or ``wait_s`` has passed.

        Ready: its status is one of ``until`` when that is given, otherwise its version is none of
        ``seen`` (what the caller already has). Without either there is nothing to wait for and the
        order is read at once. The wait is capped by ``api_max_wait_s`` and ends early when the
        gateway shuts down; either way the answer is the order as it is then. Waiting holds no
        database connection: changes come from :class:`OrderChanges`. ``parked`` wraps the wait
        (the gateway's load shedding does not count a parked request as work in flight).
        Raises TooManyWaiters when this process already holds its maximum of waiters."""
        wait_s = min(wait_s, self._settings.api_max_wait_s)
        if wait_s <= 0 or not (seen or until) or self._changes is None:
            return await self.get_versioned(caller, order_id)

        def ready(version: str, status: str) -> bool:
            return status in until if until else version not in seen

        loop = asyncio.get_running_loop()
        # Registered before the read, so a change committed in between is not missed.
        async with self._changes.watching(order_id) as watch:
            current = await self.get_versioned(caller, order_id)
            if ready(current.version, current.view.status):
                return current
            known = current.version
            deadline = loop.time() + wait_s
            async with (parked or _not_parked)(wait_s):
                while (change := await watch.next_change(known, deadline - loop.time())) is not None:
                    known = change.version
                    if ready(change.version, change.status):
                        break
        return current if known == current.version else await self.get_versioned(caller, order_id)

    async def list(
        self, caller: Caller, *, limit: int, cursor: str | None, status: OrderStatus | None, customer_id: str | None
    ) -> OrderPage:
        owner = customer_id if caller.is_operator else caller.subject
        try:
            return await self._read_model.list(limit=limit, cursor=cursor, customer_id=owner, status=status)
        except DB_ERRORS as error:
            raise database_error(error) from error

    # --- actions on an order ----------------------------------------------------------------------

    async def cancel(
        self, caller: Caller, order_id: uuid.UUID, reason: str | None, shipments: Sequence[str] | None = None
    ) -> ActionOutcome:
        """Cancel the whole order (``shipments`` None) or only the named shipments, which must not
        have left yet; the workflow refuses (409) naming any that did."""
        view = await self.get(caller, order_id)
        request = CancelRequest(
            reason=reason, requested_by=caller.subject, shipments=list(shipments) if shipments is not None else None
        )
        # One update id per distinct request, so a retry counts once and another request is its own.
        update_id = "cancel" if shipments is None else "cancel-shipments-" + _digest(sorted(set(shipments)))
        result = await self._update(view, UPDATE_CANCEL, request, update_id=update_id)
        if result is None:  # the workflow has ended: answer from its final state
            final = await self.get(caller, order_id)
            if final.status == OrderStatus.CANCELLED:
                return ActionOutcome(final)
            if shipments is not None:
                cancelled = {s.id for s in final.shipments if s.status == ShipmentStatus.CANCELLED}
                if set(shipments) <= cancelled:
                    return ActionOutcome(final)
            raise InvalidOrderState(f"order is {final.status.value} and can no longer be cancelled")
        return result

    async def amend(self, caller: Caller, order_id: uuid.UUID, lines: Sequence[tuple[str, int]]) -> ActionOutcome:
        """Keep only these lines of an order awaiting the customer (drop or reduce what was not
        available); the workflow checks them against what it reserved and recomputes the total."""
        view = await self.get(caller, order_id)
        request = AmendRequest(
            lines=[AmendLine(sku=sku, quantity=quantity) for sku, quantity in lines], requested_by=caller.subject
        )
        update_id = "amend-" + _digest(sorted(lines))
        result = await self._update(view, UPDATE_AMEND, request, update_id=update_id)
        if result is None:
            # Ended since: a retry of an amend that went through finds the order with exactly these lines.
            final = await self.get(caller, order_id)
            if sorted((line.sku, line.quantity) for line in final.items) == sorted(lines):
                return ActionOutcome(final)
            raise InvalidOrderState(f"order is {final.status.value}, not awaiting the customer")
        return result

    async def review(self, caller: Caller, order_id: uuid.UUID, decision: str, note: str | None) -> ActionOutcome:
        view = await self.get(caller, order_id)
        request = ReviewRequest(decision=decision, note=note, reviewer=caller.subject)
        result = await self._update(view, UPDATE_REVIEW, request, update_id=f"review-{decision}")
        if result is None:
            final = await self.get(caller, order_id)
            if final.review is not None and final.review.decision == decision:
                return ActionOutcome(final)
            raise InvalidOrderState(f"order is {final.status.value}, not awaiting review")
        return result

    async def change_shipping_address(self, caller: Caller, order_id: uuid.UUID, address: Address) -> ActionOutcome:
        view = await self.get(caller, order_id)
        result = await self._update(view, UPDATE_SHIPPING_ADDRESS, AddressChangeRequest(shipping_address=address))
        if result is None:
            raise InvalidOrderState(f"order is {view.status.value}; the shipping address can no longer change")
        return result

    async def carrier_event(self, signal: CarrierEventSignal) -> None:
        try:
            if signal.event in TRACKING_ONLY:
                event = CarrierEvent(
                    event=signal.event, occurred_at=signal.occurred_at, tracking_number=signal.tracking_number
                )
                if await self._read_model.record_tracking(signal.tracking_number, event) is None:
                    raise OrderNotFound(f"unknown tracking number {signal.tracking_number}")
                return
            view = await self._read_model.find_by_tracking_number(signal.tracking_number)
        except DB_ERRORS as error:
            raise database_error(error) from error
        if view is None:
            raise OrderNotFound(f"unknown tracking number {signal.tracking_number}")
        handle = (await self._client()).get_workflow_handle(order_workflow_id(view.id))
        try:
            await self._temporal(handle.signal(SIGNAL_CARRIER_EVENT, signal, rpc_timeout=self._rpc_timeout))
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return  # the order already ended; a late or repeated event changes nothing
            raise DependencyUnavailable("workflow service") from error

    async def _client(self) -> Client:
        """The connected Temporal client; DependencyUnavailable when it cannot connect now."""
        return await self._temporal_connection.client()

    async def _temporal(self, call):
        """Await one call to Temporal within a hard deadline (so no request hangs, whatever the
        client's own retries do); a call that does not finish in time becomes DependencyUnavailable."""
        try:
            return await asyncio.wait_for(call, self._settings.temporal_rpc_timeout_s + 1.0)
        except TimeoutError as error:
            raise DependencyUnavailable("workflow service") from error

    async def _update(self, view: OrderView, name: str, request, update_id: str | None = None) -> ActionOutcome | None:
        """Run an update within ``update_wait_s`` in all; None when the workflow has already ended.

        Not accepted by the order within that time: DependencyUnavailable (503; the caller's retry
        carries the same update id, so it counts once). Accepted but not finished: the order as the
        read model has it now, not finished (202): the caller follows the order instead of holding a
        connection until the workflow has moved on, which under load can take many seconds.
        Refusals by the validator or the handler -> InvalidAmend / InvalidCancel for a request
        that can never be right for this order (422), InvalidOrderState for anything else (409: not
        now, in this state)."""
        if view.status.is_terminal:
            return None
        handle = (await self._client()).get_workflow_handle(order_workflow_id(view.id))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.update_wait_s
        try:
            try:
                update = await asyncio.wait_for(
                    handle.start_update(
                        name,
                        request,
                        id=update_id,
                        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                        result_type=OrderView,
                        rpc_timeout=self._rpc_timeout,
                    ),
                    self._settings.update_wait_s,
                )
            except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as error:
                # Not known to be accepted (no worker took the workflow task in time): never answer
                # as if it were. The caller retries; the same update id makes a retry count once.
                raise DependencyUnavailable("workflow service") from error
            try:
                return ActionOutcome(
                    await asyncio.wait_for(
                        update.result(rpc_timeout=self._rpc_timeout), max(0.0, deadline - loop.time())
                    )
                )
            except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
                # Accepted but not finished in time (e.g. compensations still running): it will
                # happen, so show where the order is now.
                try:
                    current = await self._read_model.get(view.id)
                except DB_ERRORS as error:
                    raise database_error(error) from error
                if current is None:
                    raise DependencyUnavailable("workflow service") from None
                # Only a cancel of the whole order shows as one in progress.
                whole_cancel = name == UPDATE_CANCEL and getattr(request, "shipments", None) is None
                current.cancel_requested = current.cancel_requested or whole_cancel
                return ActionOutcome(current, finished=False)
        except WorkflowUpdateFailedError as error:  # refused by the validator or the handler
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.type in _REFUSED_ON_ITS_MERITS:
                raise _REFUSED_ON_ITS_MERITS[cause.type](cause.message) from error
            if isinstance(cause, ApplicationError) and cause.type == ERR_INVALID_STATE:
                raise InvalidOrderState(cause.message) from error
            # Anything else is not written for callers (e.g. a worker still on a version without
            # this update names the handlers it has): refuse without the internals.
            log.warning("update refused", update=name, order_id=str(view.id), cause=repr(cause))
            raise InvalidOrderState("the order refused this change") from error
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return None
            raise DependencyUnavailable("workflow service") from error
