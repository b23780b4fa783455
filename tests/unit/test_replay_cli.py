"""`orders replay --file`: per-workflow verdicts, the mismatch, and the exit code."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cli.main import main
from workers.replay import default_failed_query

INITIAL = Path(__file__).resolve().parents[1] / "golden" / "2026-11-25-initial"


def test_replaying_compatible_histories_exits_zero(capsys):
    assert main(["replay", "--file", str(INITIAL)]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok ") == 7 and "7 ok, 0 not ok" in out


def test_a_nondeterministic_history_is_named_with_its_mismatch_and_exits_one(capsys, monkeypatch):
    from temporalio import workflow

    from workflows.order import PATCH_SEARCH_ATTRIBUTES

    # As if the search-attributes patch were forgotten (the later patches stay off for this history).
    monkeypatch.setattr(workflow, "patched", lambda patch_id: patch_id == PATCH_SEARCH_ATTRIBUTES)
    assert main(["replay", "--file", str(INITIAL / "happy.json")]) == 1
    out = capsys.readouterr().out
    assert "NONDETERMINISTIC" in out and "UpsertWorkflowSearchAttributes" in out and "0 ok, 1 not ok" in out


def test_missing_files_are_a_one_line_error(capsys):
    assert main(["replay", "--file", "/nonexistent/history.json"]) == 2
    assert capsys.readouterr().err.strip() == "orders: error: no such history file or folder: /nonexistent/history.json"


def test_the_default_query_takes_failed_and_terminated_orders_of_the_last_week():
    query = default_failed_query(7, now=datetime(2026, 11, 25, 12, tzinfo=UTC))
    assert query == (
        "WorkflowType = 'OrderWorkflow' AND ExecutionStatus IN ('Failed', 'Terminated') "
        "AND CloseTime > '2026-11-18T12:00:00Z'"
    )
