"""Home regions: the directory's rule and which region serves a request (docs/regions.md).

Pure functions: the gateway (api/regions.py) feeds them what it read from the database, the CLI
and the tests call them directly.

The home of a customer is, in this order:

1. the operator's override for that customer (``customer_homes``), if any;
2. otherwise the default rule: a stable hash of the customer id over the sorted list of regions
   (SHA-256, not Python's ``hash``, which is salted per process);
3. then, if that region was re-homed (``region_redirects``: lost for good), the region serving it
   instead, following redirects until a region that is not redirected.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence

ORDERS_PATH = "/v1/orders"
_ORDER_PATH = re.compile(r"^/v1/orders/([^/]+)(?:/.*)?$")
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class NoRegions(ValueError):
    """The default rule needs at least one region."""


def default_home(customer_id: str, regions: Sequence[str]) -> str:
    """The region a customer belongs to when no operator said otherwise: the same answer in every
    process and every region that knows the same set of regions. Adding a region moves about
    1/n of the customers without a pinned home; pin them first (`orders regions home --set`)."""
    if not regions:
        raise NoRegions("no regions configured")
    ordered = sorted(set(regions))
    digest = hashlib.sha256(customer_id.encode()).digest()
    return ordered[int.from_bytes(digest[:8], "big") % len(ordered)]


def resolve_home(
    customer_id: str,
    regions: Sequence[str],
    pinned: str | None = None,
    redirects: Mapping[str, str] | None = None,
) -> str:
    """The customer's home region: the override, else the default rule, then any rehome."""
    home = pinned if pinned else default_home(customer_id, regions)
    seen = {home}
    while redirects and home in redirects:
        home = redirects[home]
        if home in seen:  # a cycle of rehomes is an operator error; stop at the first repeat
            break
        seen.add(home)
    return home


def is_routed(path: str) -> bool:
    """Whether requests to this path belong to a customer's home region (orders and actions on
    them). Catalogue, warehouses, carrier webhooks, health and metrics are always served locally."""
    return path == ORDERS_PATH or path.startswith(ORDERS_PATH + "/")


def is_write(method: str) -> bool:
    return method.upper() in _WRITE_METHODS


def order_id_in(path: str) -> uuid.UUID | None:
    """The order an ``/v1/orders/{id}[/...]`` path names, or None (a list, or not a UUID)."""
    match = _ORDER_PATH.match(path)
    if match is None:
        return None
    try:
        return uuid.UUID(match.group(1))
    except ValueError:
        return None


def serving_region(
    *,
    local: str,
    role: str,
    subject: str,
    write: bool,
    home: str | None,
    order_region: str | None = None,
    order_customer: str | None = None,
) -> str:
    """Where a request to a routed path must be served.

    * A customer: an action on one of its existing orders goes to the region that wrote the order
      (its workflow runs there, also after a rehome); everything else, new orders and reads
      included, to its home. ``home`` must be given for customers.
    * An operator: actions on an order go to the region that wrote it; reads are served locally
      (the local read model holds every region's orders, the peers' as replicated).
    * Anyone else (carriers): locally.

    ``order_region`` '' or None: unknown here (not replicated yet, or written before regions)."""
    if role == "customer":
        if order_region and order_customer == subject:
            return order_region
        if home is None:
            raise ValueError("a customer's request needs its home region")
        return home
    if role == "operator" and write and order_region:
        return order_region
    return local
