"""The order workflow: stock, review, payment, shipping and delivery, with saga compensation.

One workflow per order, id ``order-<uuid>``. Every transition is recorded in the view (queryable)
and projected into the read model with a local activity. Compensations are pushed as each step
succeeds and run in reverse when the order ends early.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.payment import PaymentActivities
    from activities.projection import ProjectionActivities
    from activities.shipping import ShippingActivities
    from activities.stock import StockActivities
    from core.domain import (
        ERR_INVALID_AMEND,
        ERR_INVALID_CANCEL,
        ERR_INVALID_STATE,
        ERR_OUT_OF_STOCK,
        ERR_PAYMENT_DECLINED,
        ORDER_WORKFLOW,
        QUERY_ORDER,
        SIGNAL_CARRIER_EVENT,
        UPDATE_AMEND,
        UPDATE_CANCEL,
        UPDATE_REVIEW,
        UPDATE_SHIPPING_ADDRESS,
        AddressChangeRequest,
        AmendRequest,
        AuthorizePayment,
        CancelRequest,
        CancelShipment,
        CarrierEvent,
        CarrierEventKind,
        CarrierEventSignal,
        CreateShipment,
        FailureReason,
        OrderInput,
        OrderLine,
        OrderStatus,
        OrderView,
        PaymentAction,
        ProjectOrder,
        ReduceReservation,
        RefundRecord,
        ReviewDecision,
        ReviewRecord,
        ReviewRequest,
        ShipmentStatus,
        ShipmentView,
        StatusChange,
        StockAllocation,
        StockRelease,
        StockRequest,
        VoidUnknownAuthorization,
        activity_task_queue,
        provider_key,
    )
    from core.search_attributes import (
        ORDER_TOTAL,
        order_search_attribute_updates,
        order_status_search_attribute_updates,
    )
    from workflows import policies, telemetry

# Workflows started before search attributes existed must replay without the upsert commands;
# see docs/workflow-versioning.md for when this can become deprecate_patch and then go away.
PATCH_SEARCH_ATTRIBUTES = "order-search-attributes"
# Fewer Temporal actions per order: the gateway already wrote the `received` row (seq=1) and started
# the workflow with its search attributes, so new orders neither project nor upsert `received`, and
# later upserts set only what a transition changes (status, failure reason). Orders started before
# replay the old commands (golden folders up to 2026-11-25-search-attributes).
PATCH_SKIP_RECEIVED = "order-skip-received-projection-and-upsert"
# A carrier event can reach the workflow before it has applied the create-shipment result (a
# stalled worker, then one activation holding both: signals are delivered first). Old code dropped
# such an event, and a dropped `delivered` left the order waiting for its delivery deadline; new
# runs keep it until the tracking number is known. Runs that already dropped one replay as before.
PATCH_EARLY_CARRIER_EVENTS = "order-keep-carrier-events-until-shipment-known"
# Multi-warehouse fulfilment (issue 11): reserve what is available and let the customer amend or
# cancel the rest, one shipment per warehouse with its own carrier key, capture and stock commit,
# deliveries and losses per shipment (partial refunds), cancels of the shipments that have not left.
# Runs started before replay the single-shipment path (golden folders up to 2026-11-25-skip-received).
# It implies PATCH_EARLY_CARRIER_EVENTS. It can become deprecate_patch once no order started before
# it is running (the longest order lives customer_response_timeout_s + review_timeout_s +
# delivery_deadline_s), and go with those folders after that (docs/workflow-versioning.md).
PATCH_SPLIT_SHIPMENTS = "order-split-shipments"
# Fewer Temporal actions and history events per order (issue 12, docs/workflow-versioning.md): the
# stock work (reserve, commit, release, reduce) runs as local activities on the order's own worker,
# in the same workflow task as the projection of the transition it causes (one action, no round trip
# to the inventory queue); stock is committed together with the `shipped` projection; transitions
# that follow each other in one workflow task publish once (one upsert, one projection); the delivery
# deadline is one timer for the whole wait, never cancelled. It is checked FIRST and implies
# PATCH_SKIP_RECEIVED and PATCH_SPLIT_SHIPMENTS, which new runs then never call: one patch marker
# (and one SDK-made TemporalChangeVersion upsert) per order instead of two. Runs started before
# replay their own paths unchanged (golden folders up to 2026-12-04-split-shipments); it can become
# deprecate_patch under the same rule as PATCH_SPLIT_SHIPMENTS.
PATCH_LEAN_HISTORY = "order-lean-history"


class OrderEnded(Exception):
    """Raised inside the workflow to stop the happy path and run the compensations."""

    def __init__(self, status: OrderStatus, reason: FailureReason, note: str | None = None) -> None:
        super().__init__(f"{status}/{reason}")
        self.status = status
        self.reason = reason
        self.note = note


Compensation = Callable[[], Awaitable[None]]


def _error_type(error: BaseException) -> str | None:
    cause = error.cause if isinstance(error, ActivityError) else error
    return cause.type if isinstance(cause, ApplicationError) else None


def _error_text(error: BaseException) -> str:
    # An activity's failure arrives as ActivityError with the cause inside; a local activity's
    # (the SDK's own choice, seen with temporalio 1.35) as the ApplicationError itself.
    return str(error.cause) if isinstance(error, ActivityError) else str(error)


@workflow.defn(name=ORDER_WORKFLOW)
class OrderWorkflow:
    @workflow.init
    def __init__(self, order: OrderInput) -> None:
        self._order = order
        self._view = OrderView.received(
            order_id=order.order_id,
            customer_id=order.customer_id,
            items=order.lines,
            total=order.total,
            currency=order.currency,
            shipping_address=order.shipping_address,
            at=order.created_at,
        )
        self._seq = 1
        self._cancel: CancelRequest | None = None
        self._review: ReviewRequest | None = None
        self._delivery: CarrierEventKind | None = None
        self._creating_shipment = False
        self._compensations: list[tuple[str, Compensation]] = []
        self._skip_received = False
        self._early_carrier_events: list[CarrierEventSignal] = []
        # Multi-warehouse fulfilment (PATCH_SPLIT_SHIPMENTS); the order's lines and total change
        # only when the customer amends.
        self._split = False
        self._lines = list(order.lines)
        self._total = order.total
        self._reserved: dict[str, int] = {}
        self._amend: AmendRequest | None = None
        self._cancelled_shipments: set[str] = set()
        self._shipment_changes = 0
        self._capture_closed = False
        self._deadline_passed = False
        # PATCH_LEAN_HISTORY; search-attribute updates of transitions not published yet (they
        # go out with the next published one, in the same workflow task).
        self._lean = False
        self._unpublished: list[Any] = []

    # --- the order's story ----------------------------------------------------------------------

    @workflow.run
    async def run(self, order: OrderInput) -> OrderView:
        # The newest patch first: a run that has it never asks for the ones it implies.
        self._lean = workflow.patched(PATCH_LEAN_HISTORY)
        self._skip_received = self._lean or workflow.patched(PATCH_SKIP_RECEIVED)
        if self._skip_received:
            self._step("Order is received")
        else:
            self._publish()
            await self._project()
        self._split = self._lean or workflow.patched(PATCH_SPLIT_SHIPMENTS)
        try:
            if self._split:
                await self._reserve_available_stock()
            else:
                await self._reserve_stock()
            if self._total >= order.review_threshold:
                await self._await_review()
            await self._authorize_payment()
            if self._split:
                await self._ship_each()
                status, reason, note = await self._await_deliveries()
                await self._transition(status, reason=reason, note=note)
            else:
                await self._ship()
                await self._await_delivery()
                await self._transition(OrderStatus.COMPLETED)
        except OrderEnded as ended:
            await self._compensate()
            await self._transition(ended.status, reason=ended.reason, note=ended.note)
        # Let update handlers (e.g. a cancel waiting for the outcome) return before the run closes.
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._view

    async def _reserve_stock(self) -> None:
        self._step(f"Reserving stock for {self._lines_text()}")
        try:
            await workflow.execute_activity_method(
                StockActivities.reserve_stock,
                StockRequest(order_id=self._order.order_id, lines=self._order.lines),
                task_queue=self._queue("inventory"),
                summary="reserve stock",
                **policies.STOCK.options(),
            )
        except ActivityError as error:
            if _error_type(error) == ERR_OUT_OF_STOCK:
                raise OrderEnded(OrderStatus.REJECTED, FailureReason.OUT_OF_STOCK, str(error.cause)) from error
            raise
        self._push("release stock", self._release_stock)
        self._raise_if_cancelled()
        await self._transition(OrderStatus.STOCK_RESERVED)

    async def _await_review(self) -> None:
        await self._transition(OrderStatus.AWAITING_REVIEW)
        deadline = workflow.now() + timedelta(seconds=self._order.review_timeout_s)
        self._step(
            f"Waiting for an operator's review (total {self._money()}); cancelled if none by {deadline:%Y-%m-%d %H:%M} UTC"
        )
        try:
            await workflow.wait_condition(
                lambda: self._review is not None or self._cancel is not None,
                timeout=timedelta(seconds=self._order.review_timeout_s),
                timeout_summary="review timeout",
            )
        except TimeoutError:
            raise OrderEnded(OrderStatus.CANCELLED, FailureReason.REVIEW_TIMEOUT) from None
        self._raise_if_cancelled()
        assert self._review is not None
        if self._review.decision == ReviewDecision.REJECT:
            raise OrderEnded(OrderStatus.REJECTED, FailureReason.REVIEW_REJECTED, self._review.note)

    async def _authorize_payment(self) -> None:
        key = provider_key(self._order.order_id, "authorize")
        self._step(f"Authorizing {self._money()} with the payment provider")
        try:
            authorization = await workflow.execute_activity_method(
                PaymentActivities.authorize_payment,
                AuthorizePayment(
                    order_id=self._order.order_id,
                    amount=self._total,
                    currency=self._order.currency,
                    payment_token=self._order.payment_token,
                    idempotency_key=key,
                ),
                task_queue=self._queue("payments"),
                summary=f"authorize {self._total} {self._order.currency}",
                **policies.AUTHORIZE.options(),
            )
        except ActivityError as error:
            if _error_type(error) == ERR_PAYMENT_DECLINED:
                raise OrderEnded(OrderStatus.REJECTED, FailureReason.PAYMENT_DECLINED) from error
            # The provider never gave a definitive answer: an authorization may exist. Void by key.
            self._push("void unknown authorization", self._void_unknown_authorization)
            raise OrderEnded(OrderStatus.FAILED, FailureReason.PAYMENT_UNAVAILABLE, str(error.cause)) from error
        self._authorization_id = authorization.authorization_id
        self._push("void payment", self._void_payment)
        self._raise_if_cancelled()
        await self._transition(OrderStatus.PAYMENT_AUTHORIZED)

    async def _ship(self) -> None:
        self._creating_shipment = True
        self._step("Creating the shipment with the carrier")
        try:
            shipment = await workflow.execute_activity_method(
                ShippingActivities.create_shipment,
                CreateShipment(
                    order_id=self._order.order_id,
                    shipping_address=self._view.shipping_address,
                    lines=self._order.lines,
                    idempotency_key=provider_key(self._order.order_id, "ship"),
                ),
                task_queue=self._queue("shipping"),
                summary="create shipment",
                **policies.CREATE_SHIPMENT.options(),
            )
        except ActivityError as error:
            raise OrderEnded(OrderStatus.FAILED, FailureReason.CARRIER_UNAVAILABLE, str(error.cause)) from error
        finally:
            self._creating_shipment = False
        self._view.tracking_number = shipment.tracking_number
        for early in self._early_carrier_events:
            self._record_carrier_event(early)
        self._early_carrier_events.clear()
        self._push("cancel shipment", self._cancel_shipment)
        # A cancel accepted while the shipment was being created still wins: nothing has left yet.
        self._raise_if_cancelled()
        await self._transition(OrderStatus.SHIPPED)
        # Past the point of no return: capture the money and deduct the goods.
        self._compensations.clear()
        self._step(f"Shipped ({self._view.tracking_number}); capturing {self._money()} and deducting stock")
        await workflow.execute_activity_method(
            PaymentActivities.capture_payment,
            self._payment_action("capture"),
            task_queue=self._queue("payments"),
            summary=f"capture {self._order.total} {self._order.currency}",
            **policies.SETTLEMENT.options(),
        )
        await workflow.execute_activity_method(
            StockActivities.commit_stock,
            StockRelease(order_id=self._order.order_id),
            task_queue=self._queue("inventory"),
            summary="deduct shipped stock",
            **policies.STOCK.options(),
        )
        self._push("refund payment", self._refund_payment)

    async def _await_delivery(self) -> None:
        deadline = workflow.now() + timedelta(seconds=self._order.delivery_deadline_s)
        self._step(
            f"Waiting for delivery of {self._view.tracking_number}; refunded if not delivered by {deadline:%Y-%m-%d %H:%M} UTC"
        )
        try:
            await workflow.wait_condition(
                lambda: self._delivery is not None,
                timeout=timedelta(seconds=self._order.delivery_deadline_s),
                timeout_summary="delivery deadline",
            )
        except TimeoutError:
            raise OrderEnded(OrderStatus.FAILED, FailureReason.LOST_IN_TRANSIT, "no delivery by the deadline") from None
        if self._delivery == CarrierEventKind.LOST:
            raise OrderEnded(OrderStatus.FAILED, FailureReason.LOST_IN_TRANSIT, "carrier reported the parcel lost")

    # --- split shipments (PATCH_SPLIT_SHIPMENTS) -------------------------------------------------

    async def _reserve_available_stock(self) -> None:
        self._step(f"Reserving stock for {self._lines_text()}")
        try:
            allocation = await self._stock(
                StockActivities.reserve_stock,
                StockRequest(order_id=self._order.order_id, lines=self._order.lines, allow_partial=True),
                summary="reserve stock",
            )
        except (ActivityError, ApplicationError) as error:
            # Not raised when partial reservations are allowed; an all-or-nothing worker still may.
            if _error_type(error) == ERR_OUT_OF_STOCK:
                raise OrderEnded(OrderStatus.REJECTED, FailureReason.OUT_OF_STOCK, _error_text(error)) from error
            raise
        if not allocation.lines:
            missing = ", ".join(line.sku for line in allocation.unavailable)
            raise OrderEnded(OrderStatus.REJECTED, FailureReason.OUT_OF_STOCK, f"not enough stock for {missing}")
        self._push("release stock", self._release_stock)
        if allocation.unavailable:
            allocation = await self._await_customer(allocation)
        self._raise_if_cancelled()
        self._plan_shipments(allocation)
        # A review that follows at once publishes for both: nobody could see `stock_reserved` meanwhile.
        review_follows = self._lean and self._total >= self._order.review_threshold
        await self._transition(OrderStatus.STOCK_RESERVED, publish=not review_follows)

    async def _await_customer(self, allocation: StockAllocation) -> StockAllocation:
        """Part of the order is unavailable: wait for the customer to amend (keep what is reserved)
        or cancel; no answer in time cancels the order. Returns what stays reserved."""
        for line in allocation.lines:
            self._reserved[line.sku] = self._reserved.get(line.sku, 0) + line.quantity
        timeout = timedelta(seconds=self._order.customer_response_timeout_s)
        deadline = workflow.now() + timeout
        self._view.unavailable = list(allocation.unavailable)
        self._view.customer_deadline = deadline
        await self._transition(OrderStatus.AWAITING_CUSTOMER)
        missing = ", ".join(f"{line.quantity} x {line.sku}" for line in allocation.unavailable)
        self._step(
            f"Waiting for the customer to amend or cancel ({missing} unavailable); cancelled if no answer by {deadline:%Y-%m-%d %H:%M} UTC"
        )
        try:
            await workflow.wait_condition(
                lambda: self._amend is not None or self._cancel is not None,
                timeout=timeout,
                timeout_summary="customer response timeout",
            )
        except TimeoutError:
            # An answer accepted in the same activation as the timer still counts.
            if self._amend is None and self._cancel is None:
                raise OrderEnded(
                    OrderStatus.CANCELLED, FailureReason.CUSTOMER_TIMEOUT, "no amend or cancel by the deadline"
                ) from None
        self._raise_if_cancelled()
        assert self._amend is not None
        keep = {line.sku: line.quantity for line in self._amend.lines}
        kept = await self._stock(
            StockActivities.reduce_reservation,
            ReduceReservation(order_id=self._order.order_id, keep=keep),
            summary="release what the amend dropped",
        )
        # Prices stay those of order time.
        self._lines = [
            OrderLine(sku=line.sku, quantity=keep[line.sku], unit_price=line.unit_price)
            for line in self._order.lines
            if line.sku in keep
        ]
        self._total = sum(line.quantity * line.unit_price for line in self._lines)
        self._view.items = list(self._lines)
        self._view.total = self._total
        self._view.unavailable = []
        self._view.customer_deadline = None
        if self._lean:
            self._unpublished.append(ORDER_TOTAL.value_set(self._total))  # with the next status
        else:
            workflow.upsert_search_attributes([ORDER_TOTAL.value_set(self._total)])
        return kept

    def _plan_shipments(self, allocation: StockAllocation) -> None:
        """One shipment per warehouse of the allocation, most preferred first. Every unit is priced
        at its order-time unit price, so the shipments' amounts add up to the total exactly."""
        price = {line.sku: line.unit_price for line in self._lines}
        self._view.shipments = []
        for number, warehouse in enumerate(allocation.warehouses, start=1):
            items = [
                OrderLine(sku=line.sku, quantity=line.quantity, unit_price=price[line.sku])
                for line in allocation.lines_of(warehouse)
            ]
            self._view.shipments.append(
                ShipmentView(
                    id=f"S{number}",
                    warehouse_id=warehouse,
                    items=items,
                    amount=sum(item.quantity * item.unit_price for item in items),
                )
            )

    def _nothing_shipped(self) -> bool:
        return all(s.status in (ShipmentStatus.PENDING, ShipmentStatus.CANCELLED) for s in self._view.shipments)

    async def _ship_each(self) -> None:
        for shipment in self._view.shipments:
            if shipment.id in self._cancelled_shipments:
                await self._drop_shipment(shipment, "cancelled by the customer before it left")
            else:
                await self._ship_one(shipment)
        self._early_carrier_events.clear()
        if self._nothing_shipped():
            # Every shipment was cancelled before any left: the order is cancelled, as a whole.
            raise OrderEnded(OrderStatus.CANCELLED, FailureReason.CANCELLED_BY_CUSTOMER, "every shipment cancelled")
        if not self._capture_closed:
            # The last planned shipment never left: release the part of the authorization no
            # shipment will capture (the captures already made stay).
            self._step("Releasing the uncaptured rest of the authorization")
            await self._void_payment()
            self._capture_closed = True

    async def _ship_one(self, shipment: ShipmentView) -> None:
        first = self._nothing_shipped()
        self._creating_shipment = True
        self._step(f"Creating shipment {shipment.id} from {shipment.warehouse_id} with the carrier")
        try:
            created = await workflow.execute_activity_method(
                ShippingActivities.create_shipment,
                CreateShipment(
                    order_id=self._order.order_id,
                    shipping_address=self._view.shipping_address,
                    lines=shipment.items,
                    idempotency_key=provider_key(self._order.order_id, f"ship-{shipment.warehouse_id}"),
                    warehouse_id=shipment.warehouse_id,
                ),
                task_queue=self._queue("shipping"),
                summary=f"create shipment {shipment.id} ({shipment.warehouse_id})",
                **policies.CREATE_SHIPMENT.options(),
            )
        except ActivityError as error:
            if first:
                raise OrderEnded(OrderStatus.FAILED, FailureReason.CARRIER_UNAVAILABLE, str(error.cause)) from error
            # Part of the order has left: this part is not shipped and not charged, the rest goes on.
            await self._drop_shipment(shipment, f"carrier unavailable: {error.cause}")
            return
        finally:
            self._creating_shipment = False
        shipment.tracking_number = created.tracking_number
        if shipment.id in self._cancelled_shipments:
            # A cancel of this shipment accepted while the carrier created it still wins.
            await self._cancel_shipment_at_carrier(shipment)
            await self._drop_shipment(shipment, "cancelled by the customer")
            return
        if first:
            self._push(f"cancel shipment {shipment.id}", lambda: self._cancel_shipment_at_carrier(shipment))
            # A cancel of the order accepted while the shipment was being created still wins.
            self._raise_if_cancelled()
        shipment.status = ShipmentStatus.SHIPPED
        if self._view.tracking_number is None:
            self._view.tracking_number = shipment.tracking_number
        for early in [e for e in self._early_carrier_events if e.tracking_number == shipment.tracking_number]:
            self._record_shipment_event(shipment, early)
        # The goods left: a lean run deducts them with the projection below, in one transaction.
        commit = StockRelease(order_id=self._order.order_id, warehouse_id=shipment.warehouse_id) if self._lean else None
        if first:
            await self._transition(OrderStatus.SHIPPED, commit_stock=commit)
            # Past the point of no return: from now on each part is settled on its own.
            self._compensations.clear()
        else:
            await self._project(commit_stock=commit)
        final = shipment is self._view.shipments[-1]
        self._step(
            f"Shipment {shipment.id} shipped ({shipment.tracking_number}); capturing {self._money(shipment.amount)} "
            f"and deducting its stock in {shipment.warehouse_id}"
        )
        await workflow.execute_activity_method(
            PaymentActivities.capture_payment,
            self._payment_action(f"capture-{shipment.id}", amount=shipment.amount, final_capture=final),
            task_queue=self._queue("payments"),
            summary=f"capture {shipment.amount} {self._order.currency} for {shipment.id}",
            **policies.SETTLEMENT.options(),
        )
        self._capture_closed = final
        if not self._lean:
            await workflow.execute_activity_method(
                StockActivities.commit_stock,
                StockRelease(order_id=self._order.order_id, warehouse_id=shipment.warehouse_id),
                task_queue=self._queue("inventory"),
                summary=f"deduct stock of {shipment.id} ({shipment.warehouse_id})",
                **policies.STOCK.options(),
            )

    async def _drop_shipment(self, shipment: ShipmentView, note: str) -> None:
        """A shipment that will not leave: its stock goes back, its part is never captured."""
        await self._stock(
            StockActivities.release_stock,
            StockRelease(order_id=self._order.order_id, warehouse_id=shipment.warehouse_id),
            summary=f"release stock of {shipment.id} ({shipment.warehouse_id})",
        )
        shipment.status = ShipmentStatus.CANCELLED
        self._step(f"Shipment {shipment.id} is cancelled: {note}")
        await self._project()

    async def _cancel_shipment_at_carrier(self, shipment: ShipmentView) -> None:
        assert shipment.tracking_number is not None
        await workflow.execute_activity_method(
            ShippingActivities.cancel_shipment,
            CancelShipment(
                order_id=self._order.order_id,
                tracking_number=shipment.tracking_number,
                idempotency_key=provider_key(self._order.order_id, f"cancel-shipment-{shipment.id}"),
            ),
            task_queue=self._queue("shipping"),
            summary=f"cancel shipment {shipment.id}",
            **policies.SETTLEMENT.options(),
        )

    async def _await_deliveries(self) -> tuple[OrderStatus, FailureReason | None, str | None]:
        """Wait until every shipment that left is delivered or lost (reported, or not delivered by
        the deadline); each lost one is refunded for its part. Returns how the order ends."""
        deadline = workflow.now() + timedelta(seconds=self._order.delivery_deadline_s)
        parcels = ", ".join(s.tracking_number or s.id for s in self._in_transit())
        self._step(
            f"Waiting for delivery of {parcels}; each refunded if not delivered by {deadline:%Y-%m-%d %H:%M} UTC"
        )
        await self._refund_lost()
        if self._lean and self._in_transit():
            await self._await_deliveries_until(
                asyncio.ensure_future(
                    workflow.sleep(timedelta(seconds=self._order.delivery_deadline_s), summary="delivery deadline")
                )
            )
        while self._in_transit():
            remaining = deadline - workflow.now()

            def settled_one(seen: int = self._shipment_changes) -> bool:
                return self._shipment_changes != seen

            try:
                if remaining <= timedelta(0):
                    raise TimeoutError
                await workflow.wait_condition(
                    settled_one,
                    timeout=remaining,
                    timeout_summary="delivery deadline",
                )
            except TimeoutError:
                self._deadline_passed = True
                for shipment in self._in_transit():
                    shipment.status = ShipmentStatus.LOST
            await self._refund_lost()
            if self._in_transit():
                await self._project()  # one parcel settled, others still travel
        lost = [s.id for s in self._view.shipments if s.status == ShipmentStatus.LOST]
        if any(s.status == ShipmentStatus.DELIVERED for s in self._view.shipments):
            return OrderStatus.COMPLETED, None, (f"lost and refunded: {', '.join(lost)}" if lost else None)
        note = "no delivery by the deadline" if self._deadline_passed else "carrier reported the parcel lost"
        return OrderStatus.FAILED, FailureReason.LOST_IN_TRANSIT, note

    async def _await_deliveries_until(self, deadline: asyncio.Future[None]) -> None:
        """The lean wait (PATCH_LEAN_HISTORY): one timer for the whole wait, left to lapse when every
        parcel is settled (the run ends before it fires), instead of a timer per parcel, each
        cancelled: one action and one history event instead of two of each per parcel."""
        while self._in_transit():
            seen = self._shipment_changes

            def settled_one_or_late(seen: int = seen) -> bool:
                return self._shipment_changes != seen or deadline.done()

            await workflow.wait_condition(settled_one_or_late)
            if self._shipment_changes == seen:
                self._deadline_passed = True
                for shipment in self._in_transit():
                    shipment.status = ShipmentStatus.LOST
            await self._refund_lost()
            if self._in_transit():
                await self._project()  # one parcel settled, others still travel

    def _in_transit(self) -> list[ShipmentView]:
        return [s for s in self._view.shipments if s.status == ShipmentStatus.SHIPPED]

    async def _refund_lost(self) -> None:
        refunded = {refund.shipment_id for refund in self._view.refunds}
        for shipment in self._view.shipments:
            if shipment.status != ShipmentStatus.LOST or shipment.id in refunded:
                continue
            self._step(f"Shipment {shipment.id} is lost; refunding {self._money(shipment.amount)}")
            await workflow.execute_activity_method(
                PaymentActivities.refund_payment,
                self._payment_action(f"refund-{shipment.id}", amount=shipment.amount),
                task_queue=self._queue("payments"),
                summary=f"refund {shipment.amount} {self._order.currency} for {shipment.id}",
                **policies.SETTLEMENT.options(),
            )
            self._view.refunds.append(
                RefundRecord(
                    amount=shipment.amount,
                    reason=FailureReason.LOST_IN_TRANSIT.value,
                    shipment_id=shipment.id,
                    at=workflow.now(),
                )
            )

    def _route_carrier_event(self, event: CarrierEventSignal) -> None:
        shipment = next((s for s in self._view.shipments if s.tracking_number == event.tracking_number), None)
        if shipment is None:
            if any(s.tracking_number is None and s.status == ShipmentStatus.PENDING for s in self._view.shipments):
                self._early_carrier_events.append(event)  # its shipment may still be being created
            return
        if shipment.status == ShipmentStatus.PENDING:
            self._early_carrier_events.append(event)  # created, not yet marked shipped
            return
        self._record_shipment_event(shipment, event)

    def _record_shipment_event(self, shipment: ShipmentView, event: CarrierEventSignal) -> None:
        if shipment.status == ShipmentStatus.CANCELLED:
            return
        if any(
            seen.event == event.event and seen.tracking_number == event.tracking_number
            for seen in self._view.carrier_events
        ):
            return  # carriers deliver events at least once
        self._view.carrier_events.append(
            CarrierEvent(event=event.event, occurred_at=event.occurred_at, tracking_number=event.tracking_number)
        )
        if shipment.status != ShipmentStatus.SHIPPED:
            return  # already delivered or lost: the first word stands
        if event.event == CarrierEventKind.DELIVERED:
            shipment.status = ShipmentStatus.DELIVERED
            shipment.delivered_at = event.occurred_at
            self._shipment_changes += 1
        elif event.event == CarrierEventKind.LOST:
            shipment.status = ShipmentStatus.LOST
            self._shipment_changes += 1

    # --- compensations --------------------------------------------------------------------------

    def _push(self, name: str, compensation: Compensation) -> None:
        self._compensations.append((name, compensation))

    async def _compensate(self) -> None:
        while self._compensations:
            name, compensation = self._compensations.pop()
            telemetry.compensating(name)
            self._step(f"Compensating: {name}")
            await compensation()

    async def _release_stock(self) -> None:
        await self._stock(
            StockActivities.release_stock, StockRelease(order_id=self._order.order_id), summary="release stock"
        )

    async def _void_payment(self) -> None:
        await workflow.execute_activity_method(
            PaymentActivities.void_payment,
            self._payment_action("void"),
            task_queue=self._queue("payments"),
            summary="void authorization",
            **policies.SETTLEMENT.options(),
        )

    async def _void_unknown_authorization(self) -> None:
        await workflow.execute_activity_method(
            PaymentActivities.void_unknown_authorization,
            VoidUnknownAuthorization(
                order_id=self._order.order_id,
                amount=self._total,
                currency=self._order.currency,
                payment_token=self._order.payment_token,
                authorize_idempotency_key=provider_key(self._order.order_id, "authorize"),
                idempotency_key=provider_key(self._order.order_id, "void-unknown"),
            ),
            task_queue=self._queue("payments"),
            summary="void authorization of unknown outcome",
            **policies.SETTLEMENT.options(),
        )

    async def _refund_payment(self) -> None:
        await workflow.execute_activity_method(
            PaymentActivities.refund_payment,
            self._payment_action("refund"),
            task_queue=self._queue("payments"),
            summary=f"refund {self._order.total} {self._order.currency}",
            **policies.SETTLEMENT.options(),
        )

    async def _cancel_shipment(self) -> None:
        assert self._view.tracking_number is not None
        await workflow.execute_activity_method(
            ShippingActivities.cancel_shipment,
            CancelShipment(
                order_id=self._order.order_id,
                tracking_number=self._view.tracking_number,
                idempotency_key=provider_key(self._order.order_id, "cancel-shipment"),
            ),
            task_queue=self._queue("shipping"),
            summary="cancel shipment",
            **policies.SETTLEMENT.options(),
        )

    # --- messages ---------------------------------------------------------------------------------

    @workflow.query(name=QUERY_ORDER)
    def order(self) -> OrderView:
        return self._view

    @workflow.update(name=UPDATE_CANCEL)
    async def cancel(self, request: CancelRequest) -> OrderView:
        """Cancel before shipping; answers with the order once it has reached its final state.
        With ``shipments``: cancel only those (not yet shipped); answers once they are cancelled."""
        if request.shipments is not None and self._cancel is None:
            named = set(request.shipments)
            self._cancelled_shipments |= named
            await workflow.wait_condition(
                lambda: (
                    self._view.status.is_terminal
                    or all(s.status == ShipmentStatus.CANCELLED for s in self._view.shipments if s.id in named)
                )
            )
            return self._view
        if self._cancel is None:
            self._cancel = request
            self._view.cancel_requested = True
        await workflow.wait_condition(lambda: self._view.status.is_terminal)
        return self._view

    @cancel.validator
    def _validate_cancel(self, request: CancelRequest) -> None:
        if self._cancel is not None:
            return  # a repeated cancel is answered like the first one
        if request.shipments is not None:
            self._validate_shipment_cancel(request.shipments)
            return
        shipped = [
            s for s in self._view.shipments if s.status not in (ShipmentStatus.PENDING, ShipmentStatus.CANCELLED)
        ]
        if shipped:
            pending = [s.id for s in self._view.shipments if s.status == ShipmentStatus.PENDING]
            raise ApplicationError(
                f"shipment(s) {', '.join(f'{s.id} ({s.tracking_number})' for s in shipped)} "
                "shipped and can no longer be cancelled"
                + (f"; the pending ones can be cancelled by naming them: {', '.join(pending)}" if pending else ""),
                type=ERR_INVALID_STATE,
            )
        if not self._view.status.is_cancellable:
            raise ApplicationError(
                f"order is {self._view.status.value} and can no longer be cancelled", type=ERR_INVALID_STATE
            )

    def _validate_shipment_cancel(self, ids: list[str]) -> None:
        shipments = {s.id: s for s in self._view.shipments}
        unknown = [i for i in ids if i not in shipments]
        if not ids or unknown:
            raise ApplicationError(
                f"the order has no shipment {', '.join(unknown)}" if unknown else "name at least one shipment",
                type=ERR_INVALID_CANCEL,
            )
        if self._view.status.is_terminal:
            raise ApplicationError(
                f"order is {self._view.status.value} and can no longer be cancelled", type=ERR_INVALID_STATE
            )
        gone = [i for i in ids if shipments[i].status not in (ShipmentStatus.PENDING, ShipmentStatus.CANCELLED)]
        if gone:
            raise ApplicationError(
                f"shipment(s) {', '.join(gone)} shipped and can no longer be cancelled", type=ERR_INVALID_STATE
            )

    @workflow.update(name=UPDATE_AMEND)
    async def amend(self, request: AmendRequest) -> OrderView:
        """Keep what is reserved of a partly available order; answers once the order has moved on."""
        if self._amend is None:
            self._amend = request
        await workflow.wait_condition(lambda: self._view.status != OrderStatus.AWAITING_CUSTOMER)
        return self._view

    @amend.validator
    def _validate_amend(self, request: AmendRequest) -> None:
        if self._amend is not None and self._amend == request:
            return  # the same amend again is answered like the first
        if self._view.status != OrderStatus.AWAITING_CUSTOMER or self._amend is not None or self._cancel is not None:
            raise ApplicationError(
                f"order is {self._view.status.value}, not awaiting the customer", type=ERR_INVALID_STATE
            )
        if not request.lines:
            raise ApplicationError("an amend keeps at least one line; cancel the order instead", type=ERR_INVALID_AMEND)
        ordered = {line.sku for line in self._order.lines}
        problems: list[str] = []
        seen: set[str] = set()
        for line in request.lines:
            if line.sku not in ordered:
                problems.append(f"{line.sku} is not a line of the order")
            elif line.sku in seen:
                problems.append(f"{line.sku} is named twice")
            elif not 1 <= line.quantity <= self._reserved.get(line.sku, 0):
                problems.append(
                    f"{line.sku}: quantity {line.quantity} is not between 1 and the {self._reserved.get(line.sku, 0)} reserved"
                )
            seen.add(line.sku)
        if problems:
            raise ApplicationError("; ".join(problems), type=ERR_INVALID_AMEND)

    @workflow.update(name=UPDATE_REVIEW)
    async def review(self, request: ReviewRequest) -> OrderView:
        if self._review is None:
            self._review = request
            self._view.review = ReviewRecord(
                decision=request.decision, note=request.note, reviewer=request.reviewer, at=workflow.now()
            )
            await self._project()
        return self._view

    @review.validator
    def _validate_review(self, request: ReviewRequest) -> None:
        if self._review is not None and self._review.decision == request.decision:
            return  # the same decision again changes nothing and answers the same
        if self._view.status != OrderStatus.AWAITING_REVIEW or self._review is not None or self._cancel is not None:
            raise ApplicationError(f"order is {self._view.status.value}, not awaiting review", type=ERR_INVALID_STATE)

    @workflow.update(name=UPDATE_SHIPPING_ADDRESS)
    async def change_shipping_address(self, request: AddressChangeRequest) -> OrderView:
        self._view.shipping_address = request.shipping_address
        self._view.updated_at = workflow.now()
        await self._project()
        return self._view

    @change_shipping_address.validator
    def _validate_address_change(self, request: AddressChangeRequest) -> None:
        if self._creating_shipment or not self._view.status.is_cancellable or self._cancel is not None:
            raise ApplicationError(
                f"order is {self._view.status.value}; the shipping address can no longer change",
                type=ERR_INVALID_STATE,
            )

    @workflow.signal(name=SIGNAL_CARRIER_EVENT)
    async def carrier_event(self, event: CarrierEventSignal) -> None:
        if self._view.status.is_terminal:
            return
        if self._split:
            self._route_carrier_event(event)
            return
        if self._view.tracking_number is None:
            if workflow.patched(PATCH_EARLY_CARRIER_EVENTS):
                self._early_carrier_events.append(event)  # applied when the shipment result arrives
            return
        self._record_carrier_event(event)

    def _record_carrier_event(self, event: CarrierEventSignal) -> None:
        if event.tracking_number != self._view.tracking_number:
            return
        if any(seen.event == event.event for seen in self._view.carrier_events):
            return  # carriers deliver events at least once
        self._view.carrier_events.append(CarrierEvent(event=event.event, occurred_at=event.occurred_at))
        if event.event in (CarrierEventKind.DELIVERED, CarrierEventKind.LOST) and self._delivery is None:
            self._delivery = event.event

    # --- helpers ----------------------------------------------------------------------------------

    def _raise_if_cancelled(self) -> None:
        if self._cancel is not None:
            raise OrderEnded(OrderStatus.CANCELLED, FailureReason.CANCELLED_BY_CUSTOMER, self._cancel.reason)

    async def _transition(
        self,
        status: OrderStatus,
        *,
        reason: FailureReason | None = None,
        note: str | None = None,
        publish: bool = True,
        commit_stock: StockRelease | None = None,
    ) -> None:
        """Move the order to ``status``. ``publish=False`` (lean runs only) is for a transition that
        another one follows in the same workflow task: its upsert and projection go out with that
        one (the projected history holds both), as nobody could have seen it in between."""
        now = workflow.now()
        self._view.status = status
        self._view.failure_reason = reason
        self._view.updated_at = now
        self._view.history.append(StatusChange(status=status, at=now, note=note))
        telemetry.status_changed(self._order, status, reason)
        if not publish:
            self._step(f"Order is {status.value}" + (f": {note}" if note else ""))
            return
        self._publish(note)
        await self._project(commit_stock=commit_stock)

    def _publish(self, note: str | None = None) -> None:
        """Show the transition in the Temporal UI: search attributes and the current details."""
        view = self._view
        if self._lean:
            # One upsert per workflow task: what earlier unpublished changes left goes with it.
            workflow.upsert_search_attributes(
                [*self._unpublished, *order_status_search_attribute_updates(view.status, view.failure_reason)]
            )
            self._unpublished.clear()
        elif self._skip_received:
            # Customer and total were set when the gateway started the workflow and never change.
            workflow.upsert_search_attributes(order_status_search_attribute_updates(view.status, view.failure_reason))
        elif workflow.patched(PATCH_SEARCH_ATTRIBUTES):
            workflow.upsert_search_attributes(
                order_search_attribute_updates(view.status, view.customer_id, view.total, view.failure_reason)
            )
        outcome = view.status.value + (f" ({view.failure_reason.value})" if view.failure_reason else "")
        self._step(f"Order is {outcome}" + (f": {note}" if note else ""))

    def _step(self, text: str) -> None:
        # Markdown, shown as "Current Details" in the UI (answered by a query, never in the history).
        workflow.set_current_details(
            f"**{text}**\n\n"
            f"Order `{self._order.order_id}` of customer `{self._order.customer_id}`: "
            f"{self._lines_text()}, total {self._money()}"
        )

    def _money(self, amount: int | None = None) -> str:
        return f"{self._total if amount is None else amount} {self._order.currency} (minor units)"

    def _lines_text(self) -> str:
        return ", ".join(f"{line.quantity} x {line.sku}" for line in self._lines)

    async def _project(self, commit_stock: StockRelease | None = None) -> None:
        self._seq += 1
        summary = f"project {self._view.status.value}"
        if commit_stock is not None:
            summary += f", deduct stock in {commit_stock.warehouse_id}"
        await workflow.execute_local_activity_method(
            ProjectionActivities.project_order,
            ProjectOrder(seq=self._seq, view=self._view.model_copy(deep=True), commit_stock=commit_stock),
            summary=summary,
            **policies.PROJECTION.options(),
        )

    def _payment_action(self, action: str, *, amount: int | None = None, final_capture: bool = True) -> PaymentAction:
        """Capture, void or refund of the order's authorization; ``action`` names its idempotency
        key (``capture-S1`` for one shipment's part); ``amount`` defaults to the order's total."""
        return PaymentAction(
            order_id=self._order.order_id,
            authorization_id=self._authorization_id,
            amount=self._total if amount is None else amount,
            currency=self._order.currency,
            idempotency_key=provider_key(self._order.order_id, action),
            final_capture=final_capture,
        )

    async def _stock(self, method: Callable[..., Awaitable[Any]], request: Any, *, summary: str) -> Any:
        """A stock activity: local on the order's worker in lean runs (it shares its workflow task's
        one action with the projection that follows), else on the inventory queue as before."""
        if self._lean:
            return await workflow.execute_local_activity_method(
                method, request, summary=summary, **policies.LOCAL_STOCK.options()
            )
        return await workflow.execute_activity_method(
            method, request, task_queue=self._queue("inventory"), summary=summary, **policies.STOCK.options()
        )

    def _queue(self, concern: str) -> str:
        return activity_task_queue(workflow.info().task_queue, concern)
