"""The sweep's and the read path's arithmetic (no servers): where a curve bends and why, the
order size of a sized catalogue, and what a py-spy profile says."""

from __future__ import annotations

import random

import pytest

from bench.loadgen import Catalogue
from bench.reads import summarize_profile
from bench.sweep import find_bend, parse_levels, saturated_resource


def _point(concurrency: int, throughput: float, p99_ms: float, cores: dict[str, float], busy: float, everyone: float):
    return {
        "concurrency": concurrency,
        "throughput_ended_per_s": throughput,
        "submit_ms": {"p50": p99_ms / 4, "p99": p99_ms},
        "submit_to_completed_ms": {"p50": 1000.0, "p99": 1000.0 + p99_ms},
        "cores_busy": cores,
        "machine_busy": busy,
        "machine_busy_all": everyone,
    }


def test_the_bend_is_where_throughput_stops_rising_while_p99_climbs():
    series = [
        _point(8, 5.0, 100, {"worker-1": 0.5, "temporal": 0.4}, 0.5, 0.55),
        _point(16, 9.0, 140, {"worker-1": 0.7, "temporal": 0.6}, 0.7, 0.72),
        _point(32, 9.4, 600, {"worker-1": 0.95, "temporal": 0.8, "api": 0.2}, 0.97, 0.99),
        _point(64, 9.3, 2000, {"worker-1": 0.95, "temporal": 0.8, "api": 0.2}, 0.97, 0.99),
    ]
    bend = find_bend(series)
    assert (bend["at_concurrency"], bend["after_concurrency"]) == (32, 16)
    assert "machine's CPU is saturated" in bend["saturated"] and "worker-1 0.95" in bend["saturated"]
    # Still rising everywhere: no bend, and the last point's resource is named.
    rising = find_bend([_point(8, 5.0, 100, {"api": 0.1}, 0.2, 0.3), _point(16, 9.0, 120, {"api": 0.2}, 0.3, 0.4)])
    assert rising["at_concurrency"] is None and "no CPU is saturated" in rising["text"]


def test_the_saturated_resource_is_named_from_the_cores_each_process_kept_busy():
    one_core = _point(32, 9.0, 600, {"api": 0.97, "temporal": 0.3}, 0.65, 0.7)
    assert saturated_resource(one_core).startswith("api is at one core")
    others = _point(32, 9.0, 600, {"api": 0.3, "temporal": 0.3}, 0.3, 0.95)
    assert "CPU not charged to those processes" in saturated_resource(others)


def test_levels_are_parsed_sorted_and_bounded():
    assert parse_levels("32, 8,16,8", "--x", upper=100) == (8, 16, 32)
    for bad in ("", "0", "8,101", "eight"):
        with pytest.raises(ValueError, match="--x"):
            parse_levels(bad, "--x", upper=100)


def test_a_sized_catalogue_names_each_of_its_skus_once_per_order():
    catalogue = Catalogue("A", "B", plain_skus=tuple(f"S{n}" for n in range(50)), lines_per_order=50)
    lines = catalogue.lines("ok", random.Random(1))
    assert len(lines) == 50 and len({line["sku"] for line in lines}) == 50
    assert Catalogue("A", "B").lines("ok", random.Random(1))[0]["sku"] == "A"
    with pytest.raises(ValueError, match="need as many SKUs"):
        Catalogue("A", "B", plain_skus=("A",), lines_per_order=2).lines("ok", random.Random(1))


def test_a_profile_is_summarised_as_own_and_inclusive_shares_per_function():
    collapsed = "\n".join(
        [
            "main (cli/main.py:10);get (core/db/read_model.py:5);model_validate (pydantic/main.py:700) 6",
            "main (cli/main.py:10);get (core/db/read_model.py:7) 2",
            "main (cli/main.py:10);dump (api/schemas.py:3) 2",
        ]
    )
    summary = summarize_profile(collapsed)
    assert summary["samples"] == 10
    assert summary["top_self"][0] == ("model_validate (pydantic/main.py)", 0.6)
    assert dict(summary["top_inclusive"])["get (db/read_model.py)"] == 0.8
    assert summarize_profile("") == {"samples": 0, "top_self": [], "top_inclusive": []}
