"""The warehouse allocation rule (core.domain.allocation), against its promises and a brute force."""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.domain import StockAllocation, allocate

WAREHOUSES = ["WH-A", "WH-B", "WH-C", "WH-D", "WH-E"]
SKUS = ["S1", "S2", "S3", "S4"]

wanted_st = st.dictionaries(st.sampled_from(SKUS), st.integers(1, 12), min_size=1, max_size=len(SKUS))
available_st = st.dictionaries(
    st.tuples(st.sampled_from(WAREHOUSES), st.sampled_from(SKUS)), st.integers(0, 12), max_size=20
)
preference_st = st.permutations(WAREHOUSES)


def allocated(plan: StockAllocation) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = defaultdict(int)
    for line in plan.lines:
        out[(line.warehouse_id, line.sku)] += line.quantity
    return out


def per_sku(plan: StockAllocation) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for line in plan.lines:
        out[line.sku] += line.quantity
    return out


def feasible(wanted, available, chosen) -> bool:
    return all(sum(available.get((w, sku), 0) for w in chosen) >= q for sku, q in wanted.items())


def brute_force_minimum(wanted, available) -> int | None:
    for size in range(1, len(WAREHOUSES) + 1):
        if any(feasible(wanted, available, chosen) for chosen in combinations(WAREHOUSES, size)):
            return size
    return None


@given(wanted_st, available_st, preference_st)
def test_never_allocates_more_than_available_or_wanted(wanted, available, preference):
    plan = allocate(wanted, available, preference)
    for key, quantity in allocated(plan).items():
        assert 0 < quantity <= available.get(key, 0)
    unavailable = {line.sku: line.quantity for line in plan.unavailable}
    for sku, quantity in wanted.items():
        # Everything wanted is either allocated or reported, never both more nor less.
        assert per_sku(plan).get(sku, 0) + unavailable.get(sku, 0) == quantity
    assert set(per_sku(plan)) <= set(wanted)


@given(wanted_st, available_st, preference_st)
def test_allocates_exactly_what_is_wanted_from_the_fewest_warehouses_when_feasible(wanted, available, preference):
    plan = allocate(wanted, available, preference)
    minimum = brute_force_minimum(wanted, available)
    if minimum is None:
        assert not plan.complete
        # The partial plan still takes every available unit up to what is wanted.
        for sku, quantity in wanted.items():
            total = sum(available.get((w, sku), 0) for w in WAREHOUSES)
            assert per_sku(plan).get(sku, 0) == min(quantity, total)
        return
    assert plan.complete and dict(per_sku(plan)) == wanted
    assert len(plan.warehouses) == minimum


@given(wanted_st, available_st, preference_st)
def test_among_the_smallest_sets_the_most_preferred_wins(wanted, available, preference):
    plan = allocate(wanted, available, preference)
    minimum = brute_force_minimum(wanted, available)
    if minimum is None:
        return
    rank = {w: i for i, w in enumerate(preference)}
    best = min(
        sorted(rank[w] for w in chosen)
        for chosen in combinations(WAREHOUSES, minimum)
        if feasible(wanted, available, chosen)
    )
    assert sorted(rank[w] for w in plan.warehouses) == best
    # A line is split only when no single warehouse of the chosen set could ship all of it.
    for sku, quantity in wanted.items():
        sources = [line.warehouse_id for line in plan.lines if line.sku == sku]
        whole = [w for w in sorted(plan.warehouses, key=rank.__getitem__) if available.get((w, sku), 0) >= quantity]
        if whole:
            assert sources == [whole[0]]


@given(wanted_st, available_st, preference_st)
def test_deterministic_whatever_the_order_of_the_inputs(wanted, available, preference):
    plan = allocate(wanted, available, preference)
    shuffled_wanted = dict(reversed(list(wanted.items())))
    shuffled_available = dict(reversed(list(available.items())))
    assert allocate(shuffled_wanted, shuffled_available, preference) == plan
    rank = {w: i for i, w in enumerate(preference)}
    assert [(rank[line.warehouse_id], line.sku) for line in plan.lines] == sorted(
        (rank[line.warehouse_id], line.sku) for line in plan.lines
    )


def test_one_warehouse_with_everything_beats_the_preferred_one_with_part():
    plan = allocate(
        {"MUG": 2, "POSTER": 1},
        {("WH-MAIN", "MUG"): 10, ("WH-HAM", "MUG"): 10, ("WH-HAM", "POSTER"): 5},
        ["WH-MAIN", "WH-BER", "WH-HAM"],
    )
    assert plan.complete and plan.warehouses == ["WH-HAM"]


def test_a_line_is_split_only_when_no_single_warehouse_has_it():
    plan = allocate({"LAMP": 8}, {("WH-MAIN", "LAMP"): 6, ("WH-HAM", "LAMP"): 4}, ["WH-MAIN", "WH-HAM"])
    assert [(line.warehouse_id, line.quantity) for line in plan.lines] == [("WH-MAIN", 6), ("WH-HAM", 2)]
    plan = allocate({"LAMP": 4}, {("WH-MAIN", "LAMP"): 6, ("WH-HAM", "LAMP"): 4}, ["WH-HAM", "WH-MAIN"])
    assert [(line.warehouse_id, line.quantity) for line in plan.lines] == [("WH-HAM", 4)]


def test_partial_plan_reports_what_is_missing():
    plan = allocate({"LAMP": 12, "MUG": 1}, {("WH-MAIN", "LAMP"): 6, ("WH-HAM", "LAMP"): 4}, ["WH-MAIN", "WH-HAM"])
    assert [(line.sku, line.quantity) for line in plan.unavailable] == [("LAMP", 2), ("MUG", 1)]
    assert sum(line.quantity for line in plan.lines) == 10


def test_warehouses_not_in_the_preference_list_are_never_used():
    plan = allocate({"MUG": 1}, {("WH-GONE", "MUG"): 5}, ["WH-MAIN"])
    assert plan.lines == [] and plan.unavailable[0].quantity == 1


@pytest.mark.parametrize(("wanted", "preference"), [({"MUG": 0}, ["WH-MAIN"]), ({"MUG": 1}, ["WH-MAIN", "WH-MAIN"])])
def test_refuses_nonsense(wanted, preference):
    with pytest.raises(ValueError):
        allocate(wanted, {}, preference)
