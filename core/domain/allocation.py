"""Which warehouses an order's stock comes from: a pure, deterministic rule (docs/fulfilment.md).

1. Fewest shipments first: the smallest set of warehouses that together can supply every line.
   Among sets of that size, the one whose preference ranks, sorted, are lexicographically smallest
   (so the most preferred warehouse wins ties, then the next, and so on).
2. Within that set, each SKU comes whole from the most preferred warehouse of the set that has all
   of it; a line is split across warehouses of the set (in preference order) only when no single
   one of them can supply it.
3. When no set can supply everything, the partial plan: each SKU takes what is available, warehouse
   by warehouse in preference order, and the rest is reported as unavailable.

Every shipment costs a parcel, a carrier label and a capture, so the number of shipments comes
before preference. The result depends only on the arguments (never on dict order or the clock), so
the same stock always gives the same plan, in tests, in retries and in replays.

The search tries sets in increasing size and stops at the first size that works: at most
2**W sets for W candidate warehouses (only warehouses holding some of the order's SKUs count),
which is nothing for the handful of warehouses a shop runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

from core.domain.models import AllocationLine, StockAllocation, UnavailableLine


def allocate(
    wanted: Mapping[str, int],
    available: Mapping[tuple[str, str], int],
    preference: Sequence[str],
) -> StockAllocation:
    """Plan the reservation of ``wanted`` (sku -> units) from ``available`` ((warehouse, sku) ->
    units) over the warehouses in ``preference`` (most preferred first; warehouses not listed are
    never used).

    Callers may rely on: no (warehouse, sku) gets more than it has available; when everything is
    available, exactly ``wanted`` is allocated from the fewest warehouses possible and
    ``unavailable`` is empty; otherwise every available unit of a wanted SKU is allocated (up to
    what is wanted) and ``unavailable`` holds the rest. Lines are ordered by warehouse preference,
    then SKU; ``unavailable`` by SKU.
    """
    if len(set(preference)) != len(preference):
        raise ValueError("preference lists a warehouse twice")
    if any(quantity <= 0 for quantity in wanted.values()):
        raise ValueError("wanted quantities must be positive")
    skus = sorted(wanted)

    def has(warehouse: str, sku: str) -> int:
        return max(available.get((warehouse, sku), 0), 0)

    candidates = [w for w in preference if any(has(w, sku) for sku in skus)]

    def supplies(chosen: Sequence[str]) -> bool:
        return all(sum(has(w, sku) for w in chosen) >= wanted[sku] for sku in skus)

    chosen: Sequence[str] | None = None
    if supplies(candidates):
        # combinations() yields subsets of a size in lexicographic order of their positions in
        # `candidates`, which is preference order: the first that supplies everything is the one.
        chosen = next(
            subset
            for size in range(0 if not skus else 1, len(candidates) + 1)
            for subset in combinations(candidates, size)
            if supplies(subset)
        )

    allocated: dict[tuple[str, str], int] = {}
    unavailable: list[UnavailableLine] = []
    for sku in skus:
        pool = chosen if chosen is not None else candidates
        whole = next((w for w in pool if has(w, sku) >= wanted[sku]), None) if chosen is not None else None
        if whole is not None:
            allocated[(whole, sku)] = wanted[sku]
            continue
        remaining = wanted[sku]
        for warehouse in pool:
            take = min(has(warehouse, sku), remaining)
            if take:
                allocated[(warehouse, sku)] = take
                remaining -= take
            if not remaining:
                break
        if remaining:
            unavailable.append(UnavailableLine(sku=sku, quantity=remaining))

    rank = {w: i for i, w in enumerate(preference)}
    lines = [
        AllocationLine(warehouse_id=w, sku=sku, quantity=quantity)
        for (w, sku), quantity in sorted(allocated.items(), key=lambda item: (rank[item[0][0]], item[0][1]))
    ]
    return StockAllocation(lines=lines, unavailable=unavailable)
