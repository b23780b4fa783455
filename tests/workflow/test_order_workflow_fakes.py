"""The order workflow with fake activities on the time-skipping server: no PostgreSQL, no sandbox.

As in temporalio/samples-python's tests, each fake is registered under the real activity's name
(``@activity.defn(name=...)``) and on the real activity's task queue, both taken from
``workers.registry``: a renamed or moved activity fails these tests instead of silently running
against a fake nobody calls. The fakes record every attempt, so the tests assert on the order of the
calls, which is what the saga promises: compensations in reverse, each exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.config import Settings
from core.domain import (
    ERR_INVALID_AMEND,
    ERR_INVALID_CANCEL,
    ERR_INVALID_STATE,
    ERR_OUT_OF_STOCK,
    ERR_PAYMENT_DECLINED,
    ERR_PROVIDER_REJECTED,
    ORDER_WORKFLOW,
    QUERY_ORDER,
    SIGNAL_CARRIER_EVENT,
    UPDATE_AMEND,
    UPDATE_CANCEL,
    UPDATE_REVIEW,
    AllocationLine,
    AmendLine,
    AmendRequest,
    AuthorizePayment,
    CancelRequest,
    CancelShipment,
    CarrierEventKind,
    CarrierEventSignal,
    CreateShipment,
    FailureReason,
    OrderInput,
    OrderLine,
    OrderStatus,
    OrderView,
    PaymentAction,
    PaymentAuthorization,
    ProjectOrder,
    ReduceReservation,
    ReviewDecision,
    ReviewRequest,
    Shipment,
    ShipmentStatus,
    StockAllocation,
    StockRelease,
    StockRequest,
    UnavailableLine,
    VoidUnknownAuthorization,
    order_workflow_id,
    provider_key,
)
from core.search_attributes import ensure_search_attributes
from core.temporal import data_converter
from devstack.binaries import temporal_test_server_path
from tests.harness import wait_for
from tests.support import order_input
from workers.registry import queue_specs

# Each test takes well under a second; a regression that leaves an order waiting (time skipping is
# locked outside ``result()``) must fail here, not hold the suite for the global timeout.
pytestmark = pytest.mark.timeout(60)

# Stock is committed as the shipment leaves, with the `shipped` projection, then the money captured
# (PATCH_LEAN_HISTORY: both stock steps are local activities of the order's own worker).
HAPPY = ["reserve_stock", "authorize_payment", "create_shipment", "commit_stock", "capture_payment"]


class FakeOrderActivities:
    """Every activity of the order workflow, under its real name, recording each attempt in ``calls``.

    ``errors[name]`` makes every attempt of that activity raise a fresh error; ``shipment_gate``, when
    set, holds create_shipment until the test opens it (``shipment_started`` tells it is held);
    ``hold_projection_of`` holds the projection of that status the same way (``projection_gate``).
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.requests: dict[str, list[Any]] = defaultdict(list)
        self.projected: list[ProjectOrder] = []
        self.errors: dict[str, Callable[[], BaseException]] = {}
        self.shipment_gate: asyncio.Event | None = None
        self.shipment_started = asyncio.Event()
        self.hold_projection_of: OrderStatus | None = None
        self.projection_gate = asyncio.Event()
        self.projection_held = asyncio.Event()
        # Where reserve_stock finds each SKU: {sku: [(warehouse, units), ...]} in preference order;
        # a SKU not listed is available in full in HOME.
        self.stock: dict[str, list[tuple[str, int]]] = {}
        self.allocation = StockAllocation()
        self.gate_warehouse: str | None = None  # hold only the shipment from this warehouse

    def _record(self, name: str, request: Any) -> None:
        self.calls.append(name)
        self.requests[name].append(request)
        if name in self.errors:
            raise self.errors[name]()

    @activity.defn(name="reserve_stock")
    async def reserve_stock(self, request: StockRequest) -> StockAllocation:
        self._record("reserve_stock", request)
        lines, unavailable = [], []
        for line in request.lines:
            wanted = line.quantity
            for warehouse, units in self.stock.get(line.sku, [(HOME, line.quantity)]):
                if take := min(units, wanted):
                    lines.append(AllocationLine(warehouse_id=warehouse, sku=line.sku, quantity=take))
                    wanted -= take
            if wanted:
                unavailable.append(UnavailableLine(sku=line.sku, quantity=wanted))
        lines.sort(key=lambda part: [w for w, _ in self.stock.get(part.sku, [(HOME, 0)])].index(part.warehouse_id))
        self.allocation = StockAllocation(lines=lines, unavailable=unavailable)
        return self.allocation

    @activity.defn(name="reduce_reservation")
    async def reduce_reservation(self, request: ReduceReservation) -> StockAllocation:
        """Keeps ``keep`` of the last allocation, giving back from its last warehouse first."""
        self._record("reduce_reservation", request)
        surplus = defaultdict(int)
        for line in self.allocation.lines:
            surplus[line.sku] += line.quantity
        for sku in surplus:
            surplus[sku] -= request.keep.get(sku, 0)
        kept = []
        for line in reversed(self.allocation.lines):
            take = min(line.quantity, surplus[line.sku])
            surplus[line.sku] -= take
            if line.quantity - take:
                kept.insert(0, line.model_copy(update={"quantity": line.quantity - take}))
        self.allocation = StockAllocation(lines=kept)
        return self.allocation

    @activity.defn(name="release_stock")
    async def release_stock(self, request: StockRelease) -> None:
        self._record("release_stock", request)

    @activity.defn(name="commit_stock")
    async def commit_stock(self, request: StockRelease) -> None:
        self._record("commit_stock", request)

    @activity.defn(name="authorize_payment")
    async def authorize_payment(self, request: AuthorizePayment) -> PaymentAuthorization:
        self._record("authorize_payment", request)
        return PaymentAuthorization(authorization_id=f"auth-{request.order_id.hex[:12]}", status="authorized")

    @activity.defn(name="capture_payment")
    async def capture_payment(self, request: PaymentAction) -> None:
        self._record("capture_payment", request)

    @activity.defn(name="void_payment")
    async def void_payment(self, request: PaymentAction) -> None:
        self._record("void_payment", request)

    @activity.defn(name="refund_payment")
    async def refund_payment(self, request: PaymentAction) -> None:
        self._record("refund_payment", request)

    @activity.defn(name="void_unknown_authorization")
    async def void_unknown_authorization(self, request: VoidUnknownAuthorization) -> str:
        self._record("void_unknown_authorization", request)
        return "voided"

    @activity.defn(name="create_shipment")
    async def create_shipment(self, request: CreateShipment) -> Shipment:
        self._record("create_shipment", request)
        if self.gate_warehouse in (None, request.warehouse_id):
            self.shipment_started.set()
            if self.shipment_gate is not None:
                await self.shipment_gate.wait()
        return Shipment(tracking_number=tracking_number(request.order_id, request.warehouse_id))

    @activity.defn(name="cancel_shipment")
    async def cancel_shipment(self, request: CancelShipment) -> None:
        self._record("cancel_shipment", request)

    @activity.defn(name="project_order")
    async def project_order(self, request: ProjectOrder) -> None:
        # The local projection activity: recorded apart, the tests look at it on its own; the stock
        # commit a lean run's `shipped` projection carries is recorded as the commit it is.
        self.projected.append(request)
        if request.commit_stock is not None:
            self._record("commit_stock", request.commit_stock)
        if request.view.status == self.hold_projection_of:
            self.projection_held.set()
            await self.projection_gate.wait()

    def by_name(self) -> dict[str, Callable]:
        methods = [getattr(self, name) for name in dir(self) if callable(getattr(self, name))]
        return {name: method for method in methods if (name := activity_name(method))}


def activity_name(fn: Callable) -> str | None:
    """The name ``@activity.defn`` registered ``fn`` under (None for anything else). The SDK offers
    no public reader; the worker reads the same definition."""
    definition = activity._Definition.from_callable(fn)
    return definition.name if definition else None


HOME = "WH-A"  # the warehouse of every SKU the test does not place elsewhere


def tracking_number(order_id: uuid.UUID, warehouse: str | None = HOME) -> str:
    """The fake carrier's tracking number of the order's parcel from ``warehouse``."""
    base = f"TRK-{order_id.hex[:12].upper()}"
    return base if warehouse in (None, HOME) else f"{base}-{warehouse}"


def declined() -> ApplicationError:
    return ApplicationError("card_declined", type=ERR_PAYMENT_DECLINED, non_retryable=True)


def provider_rejected() -> ApplicationError:
    return ApplicationError("invalid_request", type=ERR_PROVIDER_REJECTED, non_retryable=True)


def provider_down() -> RuntimeError:
    return RuntimeError("provider answered 503")  # what activities/http.py raises on 5xx: retryable


@pytest.fixture(scope="module")
async def fake_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server of these tests' own, with the platform's data converter.

    Not the shared ``ts_env``: its clock is global, and workflows other tests leave running with no
    worker (test_review_is_refused_when_not_awaiting_review leaves one waiting for delivery) were
    seen to stop time skipping there, so these tests hung when run after them. Nor does this need
    ``settings``, which would start PostgreSQL.
    """
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(Settings(environment="test")),
        test_server_existing_path=str(temporal_test_server_path()),
    )
    # The workflow upserts these; the test server rejects unregistered ones as a real cluster does.
    await ensure_search_attributes(env.client, env.client.namespace)
    yield env
    await env.shutdown()


@pytest.fixture
def fakes() -> FakeOrderActivities:
    return FakeOrderActivities()


@pytest.fixture
def fake_workers(fake_env: WorkflowEnvironment, task_queue: str, fakes: FakeOrderActivities):
    """``async with fake_workers(): ...`` runs every queue of the registry with the fakes in place of
    the real activities, matched by activity name."""

    @asynccontextmanager
    async def _run() -> AsyncIterator[None]:
        # The real activity classes only keep their dependencies here; nothing of them is called.
        specs = queue_specs(Settings(environment="test"), None, None, task_queue)
        fake_by_name = fakes.by_name()
        async with AsyncExitStack() as stack:
            for spec in specs.values():
                names = [activity_name(real) for real in spec.activities]
                await stack.enter_async_context(
                    Worker(
                        fake_env.client,
                        task_queue=spec.task_queue,
                        workflows=list(spec.workflows),
                        activities=[fake_by_name[name] for name in names],
                    )
                )
            try:
                yield
            finally:
                # Never leave a worker waiting on a held activity.
                fakes.projection_gate.set()
                if fakes.shipment_gate is not None:
                    fakes.shipment_gate.set()

    return _run


@pytest.fixture
async def start(fake_env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[Callable[..., Any]]:
    """``await start(order)`` starts the order's workflow as the gateway does. Orders a failing test
    leaves running are terminated: the test server's clock is shared, and a workflow whose timers
    fire with no worker left would stop time skipping for every later test."""
    handles: list[WorkflowHandle] = []

    async def _start(order: OrderInput, **options: Any) -> WorkflowHandle:
        handle = await fake_env.client.start_workflow(
            ORDER_WORKFLOW,
            order,
            id=order_workflow_id(order.order_id),
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            result_type=OrderView,
            **options,
        )
        handles.append(handle)
        return handle

    yield _start
    for handle in handles:
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("the test ended with the order still running")


# --- helpers ------------------------------------------------------------------------------------------


async def view_of(handle: WorkflowHandle) -> OrderView:
    return await handle.query(QUERY_ORDER, result_type=OrderView)


async def reach(handle: WorkflowHandle, status: OrderStatus) -> OrderView:
    async def reached() -> OrderView | None:
        view = await view_of(handle)
        return view if view.status == status else None

    return await wait_for(reached, timeout=15, interval=0.05, what=f"status {status}")


async def carrier_event(handle: WorkflowHandle, tracking: str, event: CarrierEventKind) -> None:
    await handle.signal(
        SIGNAL_CARRIER_EVENT,
        CarrierEventSignal(tracking_number=tracking, event=event, occurred_at=datetime.now(UTC)),
    )


async def events_of(handle: WorkflowHandle, event_type: EventType.ValueType) -> list:
    return [event async for event in handle.fetch_history_events() if event.event_type == event_type]


def statuses(view: OrderView) -> list[str]:
    return [change.status.value for change in view.history]


def outcome(view: OrderView) -> tuple[OrderStatus, FailureReason | None]:
    return view.status, view.failure_reason


def big_order(**overrides: Any) -> OrderInput:
    """An order over the review threshold: it waits for an operator after the stock is reserved."""
    return order_input("SKU-BIG", price=300_000, review_threshold=100_000, **overrides)


# --- the happy path and the projection --------------------------------------------------------------


async def test_happy_path_calls_each_activity_once_with_keys_derived_from_the_order(start, fake_workers, fakes):
    order = order_input("SKU-1", quantity=2, price=1_250)
    async with fake_workers():
        handle = await start(order)
        shipped = await reach(handle, OrderStatus.SHIPPED)
        assert shipped.tracking_number == tracking_number(order.order_id)
        await carrier_event(handle, shipped.tracking_number, CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert outcome(final) == (OrderStatus.COMPLETED, None)
    assert fakes.calls == HAPPY
    assert statuses(final) == ["received", "stock_reserved", "payment_authorized", "shipped", "completed"]
    [authorize] = fakes.requests["authorize_payment"]
    assert (authorize.amount, authorize.idempotency_key) == (2_500, provider_key(order.order_id, "authorize"))
    [capture] = fakes.requests["capture_payment"]
    assert capture.authorization_id == f"auth-{order.order_id.hex[:12]}"
    # One shipment from the one warehouse: its own carrier key, its capture closes the authorization.
    assert (capture.idempotency_key, capture.amount, capture.final_capture) == (
        provider_key(order.order_id, "capture-S1"),
        2_500,
        True,
    )
    [create] = fakes.requests["create_shipment"]
    assert (create.idempotency_key, create.warehouse_id) == (provider_key(order.order_id, f"ship-{HOME}"), HOME)
    [commit] = fakes.requests["commit_stock"]
    assert commit.warehouse_id == HOME
    assert [(s.id, s.status, s.amount) for s in final.shipments] == [("S1", ShipmentStatus.DELIVERED, 2_500)]
    # The local projection activity: every transition after `received` (the gateway wrote that row),
    # with a sequence number that only grows, ending on the final view.
    assert [p.view.status.value for p in fakes.projected] == statuses(final)[1:]
    assert [p.seq for p in fakes.projected] == list(range(2, 2 + len(fakes.projected)))
    assert fakes.projected[-1].view == final


# --- (a) compensation order ---------------------------------------------------------------------------


async def test_out_of_stock_is_rejected_and_compensates_nothing(start, fake_workers, fakes):
    fakes.errors["reserve_stock"] = lambda: ApplicationError("no stock", type=ERR_OUT_OF_STOCK, non_retryable=True)
    async with fake_workers():
        final = await (await start(order_input("SKU-1"))).result()
    assert outcome(final) == (OrderStatus.REJECTED, FailureReason.OUT_OF_STOCK)
    assert fakes.calls == ["reserve_stock"]


async def test_decline_after_stock_reserved_releases_stock_and_nothing_else(start, fake_workers, fakes):
    fakes.errors["authorize_payment"] = declined
    async with fake_workers():
        final = await (await start(order_input("SKU-1"))).result()
    assert outcome(final) == (OrderStatus.REJECTED, FailureReason.PAYMENT_DECLINED)
    assert fakes.calls == ["reserve_stock", "authorize_payment", "release_stock"]


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        (provider_down, 5),  # transient: CREATE_SHIPMENT's five attempts, the backoff skipped
        (provider_rejected, 1),  # a 4xx from the carrier: not retried
    ],
)
async def test_carrier_unavailable_after_authorize_voids_then_releases(start, fake_workers, fakes, error, attempts):
    fakes.errors["create_shipment"] = error
    order = order_input("SKU-1")
    async with fake_workers():
        final = await (await start(order)).result()
    assert outcome(final) == (OrderStatus.FAILED, FailureReason.CARRIER_UNAVAILABLE)
    assert fakes.calls == ["reserve_stock", "authorize_payment"] + ["create_shipment"] * attempts + [
        "void_payment",
        "release_stock",
    ]
    [void] = fakes.requests["void_payment"]
    assert void.idempotency_key == provider_key(order.order_id, "void")


@pytest.mark.parametrize("error", [provider_down, provider_rejected])
async def test_authorization_without_a_definitive_answer_is_voided_by_key_then_stock_released(
    start, fake_workers, fakes, error
):
    """Neither approved nor declined: an authorization may exist at the provider, so it is voided by
    the authorize call's key (a 4xx other than a decline takes the same path)."""
    fakes.errors["authorize_payment"] = error
    order = order_input("SKU-1")
    async with fake_workers():
        final = await (await start(order)).result()
    assert outcome(final) == (OrderStatus.FAILED, FailureReason.PAYMENT_UNAVAILABLE)
    authorize_attempts = fakes.calls.count("authorize_payment")
    assert authorize_attempts > 1 if error is provider_down else authorize_attempts == 1
    assert fakes.calls == ["reserve_stock"] + ["authorize_payment"] * authorize_attempts + [
        "void_unknown_authorization",
        "release_stock",
    ]
    [void] = fakes.requests["void_unknown_authorization"]
    assert void.authorize_idempotency_key == provider_key(order.order_id, "authorize")


async def test_lost_parcel_after_capture_is_refunded_and_the_stock_stays_deducted(start, fake_workers, fakes):
    order = order_input("SKU-1", price=990)
    async with fake_workers():
        handle = await start(order)
        shipped = await reach(handle, OrderStatus.SHIPPED)
        await carrier_event(handle, shipped.tracking_number, CarrierEventKind.LOST)
        final = await handle.result()
    assert outcome(final) == (OrderStatus.FAILED, FailureReason.LOST_IN_TRANSIT)
    assert fakes.calls == [*HAPPY, "refund_payment"]
    [refund] = fakes.requests["refund_payment"]
    assert (refund.amount, refund.idempotency_key) == (990, provider_key(order.order_id, "refund-S1"))
    assert [(r.amount, r.shipment_id) for r in final.refunds] == [(990, "S1")]


async def test_an_event_for_another_parcel_is_ignored(start, fake_workers, fakes):
    async with fake_workers():
        handle = await start(order_input("SKU-1"))
        shipped = await reach(handle, OrderStatus.SHIPPED)
        await carrier_event(handle, "TRK-SOMEONE-ELSE", CarrierEventKind.LOST)
        await carrier_event(handle, shipped.tracking_number, CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert outcome(final) == (OrderStatus.COMPLETED, None)
    assert [event.event for event in final.carrier_events] == [CarrierEventKind.DELIVERED]
    assert fakes.calls == HAPPY


# --- (b) cancel races ---------------------------------------------------------------------------------


async def test_cancel_accepted_while_the_shipment_is_created_wins_and_undoes_everything(start, fake_workers, fakes):
    fakes.shipment_gate = asyncio.Event()
    order = order_input("SKU-1")
    async with fake_workers():
        handle = await start(order)
        await asyncio.wait_for(fakes.shipment_started.wait(), timeout=15)
        cancel = await handle.start_update(
            UPDATE_CANCEL,
            CancelRequest(reason="too slow"),
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=OrderView,
        )
        assert (await view_of(handle)).cancel_requested
        fakes.shipment_gate.set()  # the carrier answers after the cancel was accepted
        cancelled = await asyncio.wait_for(cancel.result(), timeout=15)
        final = await handle.result()
    assert outcome(cancelled) == outcome(final) == (OrderStatus.CANCELLED, FailureReason.CANCELLED_BY_CUSTOMER)
    assert fakes.calls == [
        "reserve_stock",
        "authorize_payment",
        "create_shipment",
        "cancel_shipment",
        "void_payment",
        "release_stock",
    ]
    assert fakes.requests["cancel_shipment"][0].tracking_number == tracking_number(order.order_id)
    assert "shipped" not in statuses(final) and final.history[-1].note == "too slow"


async def test_a_repeated_cancel_answers_like_the_first_and_compensates_once(start, fake_workers, fakes):
    fakes.shipment_gate = asyncio.Event()
    async with fake_workers():
        handle = await start(order_input("SKU-1"))
        await asyncio.wait_for(fakes.shipment_started.wait(), timeout=15)
        first, second = [
            await handle.start_update(
                UPDATE_CANCEL,
                CancelRequest(reason=reason),
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                result_type=OrderView,
            )
            for reason in ("first", "second")
        ]
        fakes.shipment_gate.set()
        answers = [await asyncio.wait_for(update.result(), timeout=15) for update in (first, second)]
        final = await handle.result()
    assert answers == [final, final]
    assert outcome(final) == (OrderStatus.CANCELLED, FailureReason.CANCELLED_BY_CUSTOMER)
    assert final.history[-1].note == "first"  # the repeat changes nothing
    for compensation in ("cancel_shipment", "void_payment", "release_stock"):
        assert fakes.calls.count(compensation) == 1, fakes.calls


async def test_a_cancel_repeated_after_the_order_ended_answers_with_the_final_state(start, fake_workers, fakes):
    """The one moment a repeated cancel meets a status that is no longer cancellable while the workflow
    still runs: the final projection. It must be answered like the first, not refused."""
    fakes.hold_projection_of = OrderStatus.CANCELLED
    async with fake_workers():
        # A short workflow task timeout: the worker then completes the task that waits on the held
        # projection after a second, which lets the updates through before the projection ends.
        handle = await start(big_order(), task_timeout=timedelta(seconds=1))
        await reach(handle, OrderStatus.AWAITING_REVIEW)
        first = await asyncio.wait_for(
            handle.execute_update(UPDATE_CANCEL, CancelRequest(reason="first"), result_type=OrderView), timeout=15
        )
        assert fakes.projection_held.is_set() and not fakes.projection_gate.is_set()
        again = await asyncio.wait_for(
            handle.execute_update(UPDATE_CANCEL, CancelRequest(reason="again"), result_type=OrderView), timeout=15
        )
        assert not fakes.projection_gate.is_set()  # answered while the order was still finishing
        fakes.projection_gate.set()
        final = await handle.result()
    assert outcome(first) == (OrderStatus.CANCELLED, FailureReason.CANCELLED_BY_CUSTOMER)
    assert first == again == final
    assert fakes.calls == ["reserve_stock", "release_stock"]


async def test_cancel_after_shipping_is_refused_with_invalid_state_and_the_order_goes_on(start, fake_workers, fakes):
    async with fake_workers():
        handle = await start(order_input("SKU-1"))
        shipped = await reach(handle, OrderStatus.SHIPPED)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(UPDATE_CANCEL, CancelRequest(reason="too late"))
        cause = refused.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == ERR_INVALID_STATE
        assert "shipped and can no longer be cancelled" in cause.message
        assert not (await view_of(handle)).cancel_requested
        await carrier_event(handle, shipped.tracking_number, CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert outcome(final) == (OrderStatus.COMPLETED, None)
    assert fakes.calls == HAPPY
    # A refused update is never written to the history: nothing to replay.
    assert await events_of(handle, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED) == []


async def test_cancel_during_review_releases_stock_and_takes_no_payment(start, fake_workers, fakes):
    async with fake_workers():
        handle = await start(big_order())
        await reach(handle, OrderStatus.AWAITING_REVIEW)
        cancelled = await handle.execute_update(
            UPDATE_CANCEL, CancelRequest(reason="changed my mind"), result_type=OrderView
        )
        final = await handle.result()
    assert outcome(cancelled) == outcome(final) == (OrderStatus.CANCELLED, FailureReason.CANCELLED_BY_CUSTOMER)
    assert fakes.calls == ["reserve_stock", "release_stock"]
    assert final.review is None


async def test_review_rejected_releases_stock(start, fake_workers, fakes):
    async with fake_workers():
        handle = await start(big_order())
        await reach(handle, OrderStatus.AWAITING_REVIEW)
        await handle.execute_update(
            UPDATE_REVIEW, ReviewRequest(decision=ReviewDecision.REJECT, note="fraud", reviewer="op")
        )
        final = await handle.result()
    assert outcome(final) == (OrderStatus.REJECTED, FailureReason.REVIEW_REJECTED)
    assert fakes.calls == ["reserve_stock", "release_stock"]
    assert final.review is not None and final.review.note == "fraud"


# --- (c) early carrier events -------------------------------------------------------------------------


async def test_delivered_before_the_shipment_result_is_applied_completes_the_order(start, fake_workers, fakes):
    """A `delivered` handled before the create-shipment result: kept until the tracking number is
    known, so the order completes instead of failing at its delivery deadline (which time skipping
    would reach at once while ``result()`` waits)."""
    fakes.shipment_gate = asyncio.Event()
    order = order_input("SKU-1")
    tracking = tracking_number(order.order_id)
    async with fake_workers():
        handle = await start(order)
        await asyncio.wait_for(fakes.shipment_started.wait(), timeout=15)
        await carrier_event(handle, tracking, CarrierEventKind.DELIVERED)

        async def signal_handled() -> bool:
            # A workflow task completed after the signal: the handler ran while the shipment was held.
            history = [event.event_type async for event in handle.fetch_history_events()]
            signalled = history.index(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
            return EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in history[signalled:]

        await wait_for(signal_handled, timeout=15, interval=0.05, what="the signal handled")
        assert (await view_of(handle)).tracking_number is None
        fakes.shipment_gate.set()
        final = await handle.result()
    assert outcome(final) == (OrderStatus.COMPLETED, None), statuses(final)
    assert final.tracking_number == tracking
    assert [event.event for event in final.carrier_events] == [CarrierEventKind.DELIVERED]
    assert fakes.calls == HAPPY
    assert await events_of(handle, EventType.EVENT_TYPE_TIMER_FIRED) == []


async def test_an_early_event_for_another_parcel_does_not_complete_the_order(start, fake_workers, fakes):
    fakes.shipment_gate = asyncio.Event()
    order = order_input("SKU-1", delivery_deadline_s=3600)
    async with fake_workers():
        handle = await start(order)
        await asyncio.wait_for(fakes.shipment_started.wait(), timeout=15)
        await carrier_event(handle, "TRK-SOMEONE-ELSE", CarrierEventKind.DELIVERED)
        fakes.shipment_gate.set()
        final = await handle.result()  # the deadline passes: the event was not this order's
    assert outcome(final) == (OrderStatus.FAILED, FailureReason.LOST_IN_TRANSIT)
    assert final.carrier_events == []
    assert fakes.calls == [*HAPPY, "refund_payment"]


# --- (d) timers ---------------------------------------------------------------------------------------


async def test_review_timeout_fires_once_and_releases_stock(fake_env, start, fake_workers, fakes):
    order = big_order(review_timeout_s=24 * 3600)
    async with fake_workers():
        handle = await start(order)
        before = await fake_env.get_current_time()
        final = await handle.result()  # time skipping: the day passes at once
        after = await fake_env.get_current_time()
    assert outcome(final) == (OrderStatus.CANCELLED, FailureReason.REVIEW_TIMEOUT)
    assert fakes.calls == ["reserve_stock", "release_stock"]
    assert after - before >= timedelta(hours=24)
    [started] = await events_of(handle, EventType.EVENT_TYPE_TIMER_STARTED)
    assert started.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta() == timedelta(hours=24)
    assert len(await events_of(handle, EventType.EVENT_TYPE_TIMER_FIRED)) == 1


async def test_delivery_deadline_fires_once_and_refunds(start, fake_workers, fakes):
    order = order_input("SKU-1", price=500, delivery_deadline_s=3 * 24 * 3600)
    async with fake_workers():
        handle = await start(order)
        final = await handle.result()  # the three days pass at once
    assert outcome(final) == (OrderStatus.FAILED, FailureReason.LOST_IN_TRANSIT)
    assert final.history[-1].note == "no delivery by the deadline"
    assert fakes.calls == [*HAPPY, "refund_payment"]
    [started] = await events_of(handle, EventType.EVENT_TYPE_TIMER_STARTED)
    assert started.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta() == timedelta(days=3)
    assert len(await events_of(handle, EventType.EVENT_TYPE_TIMER_FIRED)) == 1


# --- (e) several warehouses: split shipments, partial availability, partial refunds -------------------

OTHER = "WH-B"


def two_line_order(**overrides: Any) -> OrderInput:
    """2 mugs at 1 250 and 1 lamp at 4 000: total 6 500."""
    timeout = overrides.pop("customer_response_timeout_s", 24 * 3600)
    order = order_input("MUG", quantity=2, price=1_250, **overrides)
    lines = [*order.lines, OrderLine(sku="LAMP", quantity=1, unit_price=4_000)]
    return order.model_copy(update={"lines": lines, "total": 6_500, "customer_response_timeout_s": timeout})


def split_stock(fakes: FakeOrderActivities) -> None:
    fakes.stock = {"MUG": [(HOME, 5)], "LAMP": [(HOME, 0), (OTHER, 3)]}


async def invalid(update: Any) -> ApplicationError:
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await update
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def test_an_order_split_over_two_warehouses_ships_captures_and_commits_each_part(start, fake_workers, fakes):
    split_stock(fakes)
    order = two_line_order()
    async with fake_workers():
        handle = await start(order)
        shipped = await reach(handle, OrderStatus.SHIPPED)
        assert shipped.tracking_number == tracking_number(order.order_id)  # the first shipment's
        await carrier_event(handle, tracking_number(order.order_id), CarrierEventKind.DELIVERED)
        await carrier_event(handle, tracking_number(order.order_id, OTHER), CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert outcome(final) == (OrderStatus.COMPLETED, None)
    assert statuses(final) == ["received", "stock_reserved", "payment_authorized", "shipped", "completed"]
    assert fakes.calls == [
        "reserve_stock",
        "authorize_payment",
        *["create_shipment", "commit_stock", "capture_payment"] * 2,
    ]
    assert [(s.id, s.warehouse_id, s.amount, s.status) for s in final.shipments] == [
        ("S1", HOME, 2_500, ShipmentStatus.DELIVERED),
        ("S2", OTHER, 4_000, ShipmentStatus.DELIVERED),
    ]
    assert sum(s.amount for s in final.shipments) == final.total == 6_500
    creates = fakes.requests["create_shipment"]
    assert [(c.warehouse_id, c.idempotency_key, [line.sku for line in c.lines]) for c in creates] == [
        (HOME, provider_key(order.order_id, f"ship-{HOME}"), ["MUG"]),
        (OTHER, provider_key(order.order_id, f"ship-{OTHER}"), ["LAMP"]),
    ]
    captures = fakes.requests["capture_payment"]
    assert [(c.amount, c.idempotency_key, c.final_capture) for c in captures] == [
        (2_500, provider_key(order.order_id, "capture-S1"), False),
        (4_000, provider_key(order.order_id, "capture-S2"), True),
    ]
    assert [c.warehouse_id for c in fakes.requests["commit_stock"]] == [HOME, OTHER]
    assert [fakes.requests["reserve_stock"][0].allow_partial] == [True]
    assert final.refunds == [] and len(final.carrier_events) == 2


async def test_one_of_two_shipments_lost_is_refunded_for_its_part_and_the_order_completes(start, fake_workers, fakes):
    split_stock(fakes)
    order = two_line_order()
    async with fake_workers():
        handle = await start(order)
        await reach(handle, OrderStatus.SHIPPED)
        await carrier_event(handle, tracking_number(order.order_id, OTHER), CarrierEventKind.LOST)
        await carrier_event(handle, tracking_number(order.order_id), CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert outcome(final) == (OrderStatus.COMPLETED, None)
    assert final.history[-1].note == "lost and refunded: S2"
    [refund] = fakes.requests["refund_payment"]
    assert (refund.amount, refund.idempotency_key) == (4_000, provider_key(order.order_id, "refund-S2"))
    assert [(r.amount, r.reason, r.shipment_id) for r in final.refunds] == [(4_000, "lost_in_transit", "S2")]
    assert [s.status for s in final.shipments] == [ShipmentStatus.DELIVERED, ShipmentStatus.LOST]
    assert final.shipments[0].delivered_at is not None
    assert "void_payment" not in fakes.calls and "release_stock" not in fakes.calls


async def test_every_shipment_lost_by_the_deadline_fails_the_order_and_refunds_each(start, fake_workers, fakes):
    split_stock(fakes)
    order = two_line_order(delivery_deadline_s=3 * 24 * 3600)
    async with fake_workers():
        handle = await start(order)
        final = await handle.result()  # the three days pass at once
    assert outcome(final) == (OrderStatus.FAILED, FailureReason.LOST_IN_TRANSIT)
    assert final.history[-1].note == "no delivery by the deadline"
    assert [(r.amount, r.shipment_id) for r in final.refunds] == [(2_500, "S1"), (4_000, "S2")]
    assert [r.idempotency_key for r in fakes.requests["refund_payment"]] == [
        provider_key(order.order_id, "refund-S1"),
        provider_key(order.order_id, "refund-S2"),
    ]
    assert len(await events_of(handle, EventType.EVENT_TYPE_TIMER_FIRED)) == 1


async def test_nothing_reservable_is_rejected_out_of_stock(start, fake_workers, fakes):
    fakes.stock = {"MUG": [], "LAMP": [(OTHER, 0)]}
    async with fake_workers():
        final = await (await start(two_line_order())).result()
    assert outcome(final) == (OrderStatus.REJECTED, FailureReason.OUT_OF_STOCK)
    assert final.history[-1].note == "not enough stock for MUG, LAMP"
    assert fakes.calls == ["reserve_stock"]


def partly_available(fakes: FakeOrderActivities) -> None:
    """One of the two mugs in HOME, the lamp in OTHER: one mug is missing."""
    fakes.stock = {"MUG": [(HOME, 1)], "LAMP": [(OTHER, 3)]}


async def test_a_partly_available_order_amended_ships_what_is_kept_at_order_time_prices(start, fake_workers, fakes):
    partly_available(fakes)
    order = two_line_order(review_threshold=5_000)  # 6 500 would be reviewed; the amended 5 250 too
    async with fake_workers():
        handle = await start(order)
        waiting = await reach(handle, OrderStatus.AWAITING_CUSTOMER)
        assert [(u.sku, u.quantity) for u in waiting.unavailable] == [("MUG", 1)]
        assert waiting.customer_deadline == waiting.updated_at + timedelta(hours=24)
        amended = await handle.execute_update(
            UPDATE_AMEND,
            AmendRequest(lines=[AmendLine(sku="MUG", quantity=1), AmendLine(sku="LAMP", quantity=1)]),
            result_type=OrderView,
        )
        # Answered once the order moved on, with the amended lines and total.
        assert amended.status != OrderStatus.AWAITING_CUSTOMER and amended.total == 5_250
        await reach(handle, OrderStatus.AWAITING_REVIEW)
        await handle.execute_update(UPDATE_REVIEW, ReviewRequest(decision=ReviewDecision.APPROVE, reviewer="op"))
        await reach(handle, OrderStatus.SHIPPED)
        for warehouse in (HOME, OTHER):
            await carrier_event(handle, tracking_number(order.order_id, warehouse), CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert outcome(final) == (OrderStatus.COMPLETED, None)
    assert statuses(final) == [
        "received",
        "awaiting_customer",
        "stock_reserved",
        "awaiting_review",
        "payment_authorized",
        "shipped",
        "completed",
    ]
    [reduce] = fakes.requests["reduce_reservation"]
    assert reduce.keep == {"MUG": 1, "LAMP": 1}
    assert [(i.sku, i.quantity, i.unit_price) for i in final.items] == [("MUG", 1, 1_250), ("LAMP", 1, 4_000)]
    assert final.total == 5_250 and final.unavailable == [] and final.customer_deadline is None
    assert fakes.requests["authorize_payment"][0].amount == 5_250
    assert [c.amount for c in fakes.requests["capture_payment"]] == [1_250, 4_000]


async def test_a_partly_available_order_cancelled_by_the_customer_releases_everything(start, fake_workers, fakes):
    partly_available(fakes)
    async with fake_workers():
        handle = await start(two_line_order())
        await reach(handle, OrderStatus.AWAITING_CUSTOMER)
        cancelled = await handle.execute_update(UPDATE_CANCEL, CancelRequest(reason="no"), result_type=OrderView)
        final = await handle.result()
    assert outcome(cancelled) == outcome(final) == (OrderStatus.CANCELLED, FailureReason.CANCELLED_BY_CUSTOMER)
    assert fakes.calls == ["reserve_stock", "release_stock"]
    assert fakes.requests["release_stock"][0].warehouse_id is None  # every warehouse


async def test_no_answer_from_the_customer_cancels_with_customer_timeout(fake_env, start, fake_workers, fakes):
    partly_available(fakes)
    order = two_line_order(customer_response_timeout_s=6 * 3600)
    async with fake_workers():
        handle = await start(order)
        before = await fake_env.get_current_time()
        final = await handle.result()
        after = await fake_env.get_current_time()
    assert outcome(final) == (OrderStatus.CANCELLED, FailureReason.CUSTOMER_TIMEOUT)
    assert fakes.calls == ["reserve_stock", "release_stock"]
    assert after - before >= timedelta(hours=6)
    [started] = await events_of(handle, EventType.EVENT_TYPE_TIMER_STARTED)
    assert started.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta() == timedelta(hours=6)
    # An amend after this reaches no validator: the run is closed, and the gateway answers from the
    # read model (a cancelled order is not awaiting the customer).


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "at least one line"),
        ([("SOCK", 1)], "SOCK is not a line of the order"),
        ([("MUG", 2)], "MUG: quantity 2 is not between 1 and the 1 reserved"),
        ([("MUG", 0)], "MUG: quantity 0 is not between 1"),
        ([("LAMP", -1)], "LAMP: quantity -1"),
        ([("MUG", 1), ("MUG", 1)], "MUG is named twice"),
    ],
)
async def test_a_bad_amend_is_refused_and_changes_nothing(start, fake_workers, fakes, lines, message):
    partly_available(fakes)
    async with fake_workers():
        handle = await start(two_line_order())
        await reach(handle, OrderStatus.AWAITING_CUSTOMER)
        request = AmendRequest(lines=[AmendLine(sku=sku, quantity=q) for sku, q in lines])
        cause = await invalid(handle.execute_update(UPDATE_AMEND, request))
        assert cause.type == ERR_INVALID_AMEND and message in cause.message
        after = await view_of(handle)
        await handle.execute_update(UPDATE_CANCEL, CancelRequest())
    assert after.status == OrderStatus.AWAITING_CUSTOMER and after.total == 6_500
    assert "reduce_reservation" not in fakes.calls
    assert await events_of(handle, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED) != []  # the cancel only


async def test_an_amend_of_an_order_not_awaiting_the_customer_is_invalid_state(start, fake_workers, fakes):
    async with fake_workers():
        handle = await start(big_order())
        await reach(handle, OrderStatus.AWAITING_REVIEW)
        cause = await invalid(
            handle.execute_update(UPDATE_AMEND, AmendRequest(lines=[AmendLine(sku="SKU-BIG", quantity=1)]))
        )
        await handle.execute_update(UPDATE_CANCEL, CancelRequest())
    assert cause.type == ERR_INVALID_STATE and "not awaiting the customer" in cause.message


async def test_a_cancel_racing_the_second_shipment_wins_for_it_and_the_shipped_part_goes_on(start, fake_workers, fakes):
    split_stock(fakes)
    fakes.shipment_gate, fakes.gate_warehouse = asyncio.Event(), OTHER
    order = two_line_order()
    async with fake_workers():
        handle = await start(order)
        await asyncio.wait_for(fakes.shipment_started.wait(), timeout=15)  # S1 shipped, S2 being created
        # The whole order can no longer be cancelled: the refusal names what left and what may go.
        cause = await invalid(handle.execute_update(UPDATE_CANCEL, CancelRequest(reason="all")))
        assert cause.type == ERR_INVALID_STATE
        assert f"S1 ({tracking_number(order.order_id)}) shipped and can no longer be cancelled" in cause.message
        assert "can be cancelled by naming them: S2" in cause.message
        cancel = await handle.start_update(
            UPDATE_CANCEL,
            CancelRequest(reason="lamp", shipments=["S2"]),
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=OrderView,
        )
        fakes.shipment_gate.set()  # the carrier answers after the cancel was accepted
        answered = await asyncio.wait_for(cancel.result(), timeout=15)
        assert [s.status for s in answered.shipments] == [ShipmentStatus.SHIPPED, ShipmentStatus.CANCELLED]
        refused = await invalid(handle.execute_update(UPDATE_CANCEL, CancelRequest(shipments=["S1"])))
        assert refused.type == ERR_INVALID_STATE and "S1 shipped" in refused.message
        unknown = await invalid(handle.execute_update(UPDATE_CANCEL, CancelRequest(shipments=["S9"])))
        assert unknown.type == ERR_INVALID_CANCEL
        await carrier_event(handle, tracking_number(order.order_id), CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert outcome(final) == (OrderStatus.COMPLETED, None)
    assert fakes.calls == [
        "reserve_stock",
        "authorize_payment",
        "create_shipment",
        "commit_stock",
        "capture_payment",
        "create_shipment",
        "cancel_shipment",
        "release_stock",
        "void_payment",
    ]
    assert fakes.requests["cancel_shipment"][0].tracking_number == tracking_number(order.order_id, OTHER)
    assert fakes.requests["cancel_shipment"][0].idempotency_key == provider_key(order.order_id, "cancel-shipment-S2")
    assert fakes.requests["release_stock"][0].warehouse_id == OTHER
    assert [c.final_capture for c in fakes.requests["capture_payment"]] == [False]
    assert final.refunds == [] and not final.cancel_requested


async def test_a_cancel_naming_a_pending_shipment_drops_it_before_it_leaves(start, fake_workers, fakes):
    split_stock(fakes)
    order = two_line_order(review_threshold=1_000)
    async with fake_workers():
        handle = await start(order)
        reviewing = await reach(handle, OrderStatus.AWAITING_REVIEW)
        assert [s.id for s in reviewing.shipments] == ["S1", "S2"]
        cancel = await handle.start_update(
            UPDATE_CANCEL,
            CancelRequest(shipments=["S1"]),
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=OrderView,
        )
        await handle.execute_update(UPDATE_REVIEW, ReviewRequest(decision=ReviewDecision.APPROVE, reviewer="op"))
        answered = await asyncio.wait_for(cancel.result(), timeout=15)
        assert answered.shipments[0].status == ShipmentStatus.CANCELLED
        await carrier_event(handle, tracking_number(order.order_id, OTHER), CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert outcome(final) == (OrderStatus.COMPLETED, None)
    assert final.tracking_number == tracking_number(order.order_id, OTHER)  # the first that left
    assert fakes.calls == [
        "reserve_stock",
        "authorize_payment",
        "release_stock",
        "create_shipment",
        "commit_stock",
        "capture_payment",
    ]
    assert fakes.requests["release_stock"][0].warehouse_id == HOME
    [capture] = fakes.requests["capture_payment"]
    assert (capture.amount, capture.final_capture) == (4_000, True)  # S1's 2 500 is never captured


async def test_an_early_delivery_of_the_second_shipment_is_kept_until_it_is_known(start, fake_workers, fakes):
    split_stock(fakes)
    fakes.shipment_gate, fakes.gate_warehouse = asyncio.Event(), OTHER
    order = two_line_order()
    async with fake_workers():
        handle = await start(order)
        await asyncio.wait_for(fakes.shipment_started.wait(), timeout=15)
        await carrier_event(handle, tracking_number(order.order_id, OTHER), CarrierEventKind.DELIVERED)
        await carrier_event(handle, tracking_number(order.order_id), CarrierEventKind.DELIVERED)
        fakes.shipment_gate.set()
        final = await handle.result()
    assert outcome(final) == (OrderStatus.COMPLETED, None)
    assert [s.status for s in final.shipments] == [ShipmentStatus.DELIVERED, ShipmentStatus.DELIVERED]
    assert await events_of(handle, EventType.EVENT_TYPE_TIMER_FIRED) == []


# --- the lean history (PATCH_LEAN_HISTORY): what operators see stays, the history shrinks -----------


def upserts_per_workflow_task(events: list) -> dict[int, list[set[str]]]:
    """The search attributes each workflow task upserted (the SDK's TemporalChangeVersion left out)."""
    per_task: dict[int, list[set[str]]] = defaultdict(list)
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            attributes = event.upsert_workflow_search_attributes_event_attributes
            names = set(attributes.search_attributes.indexed_fields) - {"TemporalChangeVersion"}
            if names:
                per_task[attributes.workflow_task_completed_event_id].append(names)
    return per_task


async def test_stock_work_runs_locally_and_no_activity_goes_to_the_inventory_queue(start, fake_workers, fakes):
    async with fake_workers():
        handle = await start(order_input("SKU-1"))
        shipped = await reach(handle, OrderStatus.SHIPPED)
        await carrier_event(handle, shipped.tracking_number, CarrierEventKind.DELIVERED)
        await handle.result()
    scheduled = await events_of(handle, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    assert [e.activity_task_scheduled_event_attributes.activity_type.name for e in scheduled] == [
        "authorize_payment",
        "create_shipment",
        "capture_payment",
    ]
    patches = [
        e
        for e in await events_of(handle, EventType.EVENT_TYPE_MARKER_RECORDED)
        if e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]
    assert len(patches) == 1
    assert await events_of(handle, EventType.EVENT_TYPE_TIMER_CANCELED) == []
    # The commit went with the `shipped` projection, in one local activity.
    assert [p.view.status for p in fakes.projected if p.commit_stock is not None] == [OrderStatus.SHIPPED]


async def test_a_review_right_after_the_reservation_publishes_once_and_keeps_the_history(start, fake_workers, fakes):
    async with fake_workers():
        handle = await start(big_order())
        await reach(handle, OrderStatus.AWAITING_REVIEW)
        await handle.execute_update(UPDATE_REVIEW, ReviewRequest(decision=ReviewDecision.APPROVE, reviewer="op"))
        shipped = await reach(handle, OrderStatus.SHIPPED)
        await carrier_event(handle, shipped.tracking_number, CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert statuses(final) == [
        "received",
        "stock_reserved",
        "awaiting_review",
        "payment_authorized",
        "shipped",
        "completed",
    ]
    # `stock_reserved` and `awaiting_review` happened in one workflow task: one projection (its
    # history holds both) and one upsert; every status an operator can see is still upserted.
    first = next(p for p in fakes.projected if p.view.status == OrderStatus.AWAITING_REVIEW)
    assert [change.status for change in first.view.history][:3] == [
        OrderStatus.RECEIVED,
        OrderStatus.STOCK_RESERVED,
        OrderStatus.AWAITING_REVIEW,
    ]
    assert OrderStatus.STOCK_RESERVED not in {p.view.status for p in fakes.projected}
    upserts = upserts_per_workflow_task([event async for event in handle.fetch_history_events()])
    assert all(len(names) == 1 for names in upserts.values()), upserts
    assert sum(len(names) for names in upserts.values()) == 4  # awaiting_review, payment_authorized, shipped, completed


async def test_an_amend_upserts_the_new_total_with_the_status_it_leads_to(start, fake_workers, fakes):
    fakes.stock = {"MUG": [(HOME, 1)], "LAMP": [(OTHER, 3)]}
    order = two_line_order()
    async with fake_workers():
        handle = await start(order)
        await reach(handle, OrderStatus.AWAITING_CUSTOMER)
        await handle.execute_update(
            UPDATE_AMEND, AmendRequest(lines=[AmendLine(sku="MUG", quantity=1), AmendLine(sku="LAMP", quantity=1)])
        )
        await reach(handle, OrderStatus.SHIPPED)
        events = [event async for event in handle.fetch_history_events()]
    upserts = upserts_per_workflow_task(events)
    assert all(len(names) == 1 for names in upserts.values()), upserts
    assert {"OrderStatus", "OrderTotal"} in [names for per_task in upserts.values() for names in per_task]


async def test_one_delivery_timer_for_every_parcel_never_cancelled(start, fake_workers, fakes):
    split_stock(fakes)
    order = two_line_order()
    async with fake_workers():
        handle = await start(order)
        await reach(handle, OrderStatus.SHIPPED)

        async def all_left() -> bool:
            return all(s.status == ShipmentStatus.SHIPPED for s in (await view_of(handle)).shipments)

        await wait_for(all_left, timeout=15, interval=0.05, what="both shipments shipped")
        await carrier_event(handle, tracking_number(order.order_id), CarrierEventKind.DELIVERED)
        await carrier_event(handle, tracking_number(order.order_id, OTHER), CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert outcome(final) == (OrderStatus.COMPLETED, None)
    assert len(await events_of(handle, EventType.EVENT_TYPE_TIMER_STARTED)) == 1
    assert await events_of(handle, EventType.EVENT_TYPE_TIMER_CANCELED) == []
