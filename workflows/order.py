"""The order workflow: stock, review, payment, shipping and delivery, with saga compensation.

One workflow per order, id ``order-<uuid>``. Every transition is recorded in the view (queryable)
and projected into the read model with a local activity. Compensations are pushed as each step
succeeds and run in reverse when the order ends early.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.payment import PaymentActivities
    from activities.projection import ProjectionActivities
    from activities.shipping import ShippingActivities
    from activities.stock import StockActivities
    from core.domain import (
        ERR_INVALID_STATE,
        ERR_OUT_OF_STOCK,
        ERR_PAYMENT_DECLINED,
        ORDER_WORKFLOW,
        QUERY_ORDER,
        SIGNAL_CARRIER_EVENT,
        UPDATE_CANCEL,
        UPDATE_REVIEW,
        UPDATE_SHIPPING_ADDRESS,
        AddressChangeRequest,
        AuthorizePayment,
        CancelRequest,
        CancelShipment,
        CarrierEvent,
        CarrierEventKind,
        CarrierEventSignal,
        CreateShipment,
        FailureReason,
        OrderInput,
        OrderStatus,
        OrderView,
        PaymentAction,
        ProjectOrder,
        ReviewDecision,
        ReviewRecord,
        ReviewRequest,
        StatusChange,
        StockRelease,
        StockRequest,
        VoidUnknownAuthorization,
        activity_task_queue,
        provider_key,
    )
    from core.search_attributes import order_search_attribute_updates, order_status_search_attribute_updates
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

    # --- the order's story ----------------------------------------------------------------------

    @workflow.run
    async def run(self, order: OrderInput) -> OrderView:
        self._skip_received = workflow.patched(PATCH_SKIP_RECEIVED)
        if self._skip_received:
            self._step("Order is received")
        else:
            self._publish()
            await self._project()
        try:
            await self._reserve_stock()
            if order.total >= order.review_threshold:
                await self._await_review()
            await self._authorize_payment()
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
                    amount=self._order.total,
                    currency=self._order.currency,
                    payment_token=self._order.payment_token,
                    idempotency_key=key,
                ),
                task_queue=self._queue("payments"),
                summary=f"authorize {self._order.total} {self._order.currency}",
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
        await workflow.execute_activity_method(
            StockActivities.release_stock,
            StockRelease(order_id=self._order.order_id),
            task_queue=self._queue("inventory"),
            summary="release stock",
            **policies.STOCK.options(),
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
                amount=self._order.total,
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
        """Cancel before shipping; answers with the order once it has reached its final state."""
        if self._cancel is None:
            self._cancel = request
            self._view.cancel_requested = True
        await workflow.wait_condition(lambda: self._view.status.is_terminal)
        return self._view

    @cancel.validator
    def _validate_cancel(self, request: CancelRequest) -> None:
        if self._cancel is not None:
            return  # a repeated cancel is answered like the first one
        if not self._view.status.is_cancellable:
            raise ApplicationError(
                f"order is {self._view.status.value} and can no longer be cancelled", type=ERR_INVALID_STATE
            )

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
        self, status: OrderStatus, *, reason: FailureReason | None = None, note: str | None = None
    ) -> None:
        now = workflow.now()
        self._view.status = status
        self._view.failure_reason = reason
        self._view.updated_at = now
        self._view.history.append(StatusChange(status=status, at=now, note=note))
        telemetry.status_changed(self._order, status, reason)
        self._publish(note)
        await self._project()

    def _publish(self, note: str | None = None) -> None:
        """Show the transition in the Temporal UI: search attributes and the current details."""
        view = self._view
        if self._skip_received:
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

    def _money(self) -> str:
        return f"{self._order.total} {self._order.currency} (minor units)"

    def _lines_text(self) -> str:
        return ", ".join(f"{line.quantity} x {line.sku}" for line in self._order.lines)

    async def _project(self) -> None:
        self._seq += 1
        await workflow.execute_local_activity_method(
            ProjectionActivities.project_order,
            ProjectOrder(seq=self._seq, view=self._view.model_copy(deep=True)),
            summary=f"project {self._view.status.value}",
            **policies.PROJECTION.options(),
        )

    def _payment_action(self, action: str) -> PaymentAction:
        return PaymentAction(
            order_id=self._order.order_id,
            authorization_id=self._authorization_id,
            amount=self._order.total,
            currency=self._order.currency,
            idempotency_key=provider_key(self._order.order_id, action),
        )

    def _queue(self, concern: str) -> str:
        return activity_task_queue(workflow.info().task_queue, concern)
