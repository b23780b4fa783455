"""Every golden history (tests/golden/<version>/<path>.json, recorded by
scripts/record_golden_histories.py from real runs) replays against the current workflow code:
an incompatible change to the workflow fails here, before it reaches a worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType

from core.config import Settings
from workers.replay import load_history_file, replay

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
PATHS = {"happy", "out_of_stock", "decline", "review_approve", "review_timeout", "cancel", "lost_parcel"}
# Paths that exist since multi-warehouse fulfilment (PATCH_SPLIT_SHIPMENTS), recorded from that version on.
SPLIT_VERSION = "2026-12-04-split-shipments"
SPLIT_PATHS = {"split", "amended", "customer_timeout", "partly_lost"}
# Versions recorded since, in the order they came (folder names sort by date, not within a day).
LATER_VERSIONS = ["2026-12-04-lean-history"]
FILES = sorted(GOLDEN.glob("*/*.json"))


def test_every_version_covers_every_path_of_the_workflow():
    versions = {path.parent.name for path in FILES}
    assert versions, "no golden histories recorded"
    assert {SPLIT_VERSION, *LATER_VERSIONS} <= versions
    for version in versions:
        expected = (
            PATHS | SPLIT_PATHS if version in {SPLIT_VERSION, *LATER_VERSIONS} or version > SPLIT_VERSION else PATHS
        )
        assert {path.stem for path in FILES if path.parent.name == version} == expected, version


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_golden_history_replays(path: Path):
    [outcome] = await replay(Settings(environment="test"), [load_history_file(path)])
    assert outcome.ok, outcome.detail


def test_golden_histories_hold_no_plain_personal_data():
    for path in FILES:
        text = path.read_text()
        for secret in ("Ada Lovelace", "Unter den Linden", "tok_ok", "tok_decline"):
            assert secret not in text, f"{path}: {secret!r} in plain text"


async def test_the_same_change_without_its_patch_is_caught(monkeypatch):
    """Upserting search attributes unconditionally would break every order started before them."""
    from temporalio import workflow

    from workflows.order import PATCH_SEARCH_ATTRIBUTES

    monkeypatch.setattr(workflow, "patched", lambda patch_id: patch_id == PATCH_SEARCH_ATTRIBUTES)
    initial = GOLDEN / "2026-11-25-initial" / "happy.json"
    [outcome] = await replay(Settings(environment="test"), [load_history_file(initial)])
    assert not outcome.ok and outcome.nondeterministic, outcome
    assert "UpsertWorkflowSearchAttributes" in outcome.detail


async def test_skipping_the_received_projection_without_its_patch_is_caught(monkeypatch):
    """Orders started before the change projected and upserted `received`; they must keep doing so."""
    from temporalio import workflow

    from workflows.order import PATCH_LEAN_HISTORY

    # Every patch but the newest, which implies this one and would change far more than it.
    monkeypatch.setattr(workflow, "patched", lambda patch_id: patch_id != PATCH_LEAN_HISTORY)
    before = GOLDEN / "2026-11-25-search-attributes" / "happy.json"
    [outcome] = await replay(Settings(environment="test"), [load_history_file(before)])
    assert not outcome.ok and outcome.nondeterministic, outcome


async def test_split_shipments_without_their_patch_are_caught(monkeypatch):
    """Orders started with split shipments must keep that path when a worker replays them."""
    from temporalio import workflow

    from workflows.order import PATCH_SPLIT_SHIPMENTS

    real_patched = workflow.patched
    monkeypatch.setattr(
        workflow, "patched", lambda patch_id: patch_id != PATCH_SPLIT_SHIPMENTS and real_patched(patch_id)
    )
    split = GOLDEN / SPLIT_VERSION / "split.json"
    [outcome] = await replay(Settings(environment="test"), [load_history_file(split)])
    assert not outcome.ok and outcome.nondeterministic, outcome


@pytest.mark.parametrize("path", ["happy", "split", "amended", "review_approve", "cancel"])
async def test_the_lean_history_without_its_patch_is_caught(monkeypatch, path):
    """Orders started with the lean history (stock as local activities, one patch marker) must keep
    that path when a worker replays them; and orders from before must keep theirs (the folders above
    replay with the real `patched`)."""
    from temporalio import workflow

    from workflows.order import PATCH_LEAN_HISTORY

    real_patched = workflow.patched
    monkeypatch.setattr(workflow, "patched", lambda patch_id: patch_id != PATCH_LEAN_HISTORY and real_patched(patch_id))
    lean = GOLDEN / LATER_VERSIONS[0] / f"{path}.json"
    [outcome] = await replay(Settings(environment="test"), [load_history_file(lean)])
    # The SDK matches a local-activity marker by its sequence number, so the old code may meet the
    # reservation's recorded result where it expects a projection's and fail decoding it, rather
    # than name the mismatch: either way the workflow task fails and the order would stall.
    assert not outcome.ok, outcome


async def test_the_lean_history_records_one_patch_marker_and_no_stock_activity():
    """What the patch buys, read from the recorded happy path: one patch marker (the older patches
    it implies are never asked for), no activity on the inventory queue, no cancelled timer."""
    history = load_history_file(GOLDEN / LATER_VERSIONS[0] / "happy.json")
    markers = [
        e.marker_recorded_event_attributes.marker_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert markers.count("core_patch") == 1
    # The reservation, and one projection per transition (the `shipped` one commits the stock).
    assert markers.count("core_local_activity") == 5
    assert [a.activity_type.name for a in scheduled] == ["authorize_payment", "create_shipment", "capture_payment"]
    assert not any(e.event_type == EventType.EVENT_TYPE_TIMER_CANCELED for e in history.events)
