"""The home-region directory and the routing decision (core/regions.py), without servers."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.config import Settings
from core.db.regions import lag_from_age, libpq_dsn, subscription_name
from core.regions import (
    NoRegions,
    default_home,
    is_routed,
    is_write,
    order_id_in,
    resolve_home,
    serving_region,
)

REGION = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)
REGIONS = st.lists(REGION, min_size=1, max_size=5, unique=True)
CUSTOMER = st.text(min_size=1, max_size=40)


def test_default_home_is_the_same_in_another_process():
    """SHA-256, not Python's salted hash(): every gateway process and region agrees."""
    customers = [f"customer-{n}" for n in range(20)]
    here = [default_home(c, ["a", "b", "c"]) for c in customers]
    code = (
        "from core.regions import default_home; "
        f"print(','.join(default_home(c, ['a', 'b', 'c']) for c in {customers!r}))"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert there.split(",") == here
    assert set(here) == {"a", "b", "c"}  # and it spreads customers over the regions


def test_known_homes_do_not_drift():
    # Pinned values: a change of the rule would move customers' homes (and their orders' writes).
    assert [default_home(c, ["a", "b"]) for c in ("alice", "bob", "carol", "dave")] == ["b", "a", "a", "b"]


@given(CUSTOMER, REGIONS, st.randoms())
def test_default_home_ignores_the_order_of_the_region_list(customer, regions, rnd):
    shuffled = list(regions)
    rnd.shuffle(shuffled)
    assert default_home(customer, shuffled) == default_home(customer, regions)
    assert default_home(customer, regions) in regions


def test_no_regions_is_an_error():
    with pytest.raises(NoRegions):
        default_home("alice", [])


@given(CUSTOMER, REGIONS, st.data())
def test_the_override_wins(customer, regions, data):
    pinned = data.draw(st.sampled_from(regions))
    assert resolve_home(customer, regions, pinned=pinned) == pinned


@given(CUSTOMER, REGIONS, st.data())
def test_a_rehome_moves_the_lost_regions_customers_only(customer, regions, data):
    lost = data.draw(st.sampled_from(regions))
    survivor = data.draw(st.sampled_from(regions))
    home = resolve_home(customer, regions)
    moved = resolve_home(customer, regions, redirects={lost: survivor} if lost != survivor else {})
    assert moved == (survivor if home == lost else home)


def test_rehome_chains_are_followed_and_cycles_stop():
    regions = ["a", "b", "c"]
    customer = next(c for c in (f"c{n}" for n in range(100)) if default_home(c, regions) == "a")
    assert resolve_home(customer, regions, redirects={"a": "b", "b": "c"}) == "c"
    assert resolve_home(customer, regions, redirects={"a": "b", "b": "a"}) in {"a", "b"}


@pytest.mark.parametrize(
    ("path", "routed"),
    [
        ("/v1/orders", True),
        ("/v1/orders/3f0a8a4e-5b8e-5c55-9a61-7f5f2f0f8a11", True),
        ("/v1/orders/3f0a8a4e-5b8e-5c55-9a61-7f5f2f0f8a11/cancel", True),
        ("/v1/ordersx", False),
        ("/v1/products", False),
        ("/v1/carrier/events", False),
        ("/healthz", False),
    ],
)
def test_only_order_paths_are_routed(path, routed):
    assert is_routed(path) is routed


def test_order_id_in_path():
    order = uuid.uuid4()
    assert order_id_in(f"/v1/orders/{order}") == order
    assert order_id_in(f"/v1/orders/{order}/amend") == order
    assert order_id_in("/v1/orders") is None
    assert order_id_in("/v1/orders/not-a-uuid/cancel") is None


def test_write_methods():
    assert [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS") if is_write(m)] == [
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
    ]


@given(
    customer=CUSTOMER,
    regions=REGIONS,
    data=st.data(),
    method=st.sampled_from(["POST", "PUT", "GET"]),
)
def test_a_customers_request_is_served_in_its_home_or_where_its_order_lives(customer, regions, data, method):
    """Never in a region that is neither the customer's home nor the region that accepted the order
    the request acts on (which was its home when the order was written)."""
    local = data.draw(st.sampled_from(regions), label="local")
    pinned = data.draw(st.none() | st.sampled_from(regions), label="pinned")
    redirects = data.draw(st.dictionaries(st.sampled_from(regions), st.sampled_from(regions)), label="redirects")
    redirects = {k: v for k, v in redirects.items() if k != v}
    home = resolve_home(customer, regions, pinned, redirects)
    order = data.draw(
        st.none() | st.tuples(st.sampled_from(["", *regions]), st.sampled_from([customer, customer + "-other"])),
        label="order (region, owner)",
    )
    served = serving_region(
        local=local,
        role="customer",
        subject=customer,
        write=is_write(method),
        home=home,
        order_region=order[0] if order else None,
        order_customer=order[1] if order else None,
    )
    if order is not None and order[0] and order[1] == customer:
        assert served == order[0]  # the order's workflow lives there
    else:
        assert served == home  # a new order, a list, someone else's or an unknown order


def test_new_orders_go_home_wherever_they_arrive():
    regions = ["a", "b"]
    for customer in (f"customer-{n}" for n in range(50)):
        home = resolve_home(customer, regions)
        for local in regions:
            served = serving_region(local=local, role="customer", subject=customer, write=True, home=home)
            assert served == home


def test_operators_read_locally_and_act_where_the_order_lives():
    kwargs = dict(local="a", role="operator", subject="ops", home=None, order_customer="alice")
    assert serving_region(write=False, order_region="b", **kwargs) == "a"
    assert serving_region(write=True, order_region="b", **kwargs) == "b"
    assert serving_region(write=True, order_region="", **kwargs) == "a"  # written before regions
    assert serving_region(local="a", role="carrier", subject="dhl", write=True, home=None) == "a"


def test_a_customer_needs_a_home():
    with pytest.raises(ValueError):
        serving_region(local="a", role="customer", subject="alice", write=True, home=None)


def test_lag_counts_whole_seconds_beyond_one_heartbeat():
    assert lag_from_age(0.3, 1.0) == 0
    assert lag_from_age(1.9, 1.0) == 0
    assert lag_from_age(2.0, 1.0) == 1
    assert lag_from_age(31.5, 1.0) == 30


def test_names_and_dsns():
    assert subscription_name("b", "a") == "orders_b_to_a"
    assert (
        libpq_dsn("postgresql+asyncpg://postgres@127.0.0.1:5433/orders")
        == "postgresql://postgres@127.0.0.1:5433/orders"
    )


def test_settings_without_peers_are_one_region():
    settings = Settings(environment="test")
    assert not settings.multi_region and settings.regions == []


def test_settings_of_a_region():
    settings = Settings(
        environment="test",
        region="a",
        region_peers={"b": "http://10.0.0.2:8000"},
        region_peer_database_urls={"b": "postgresql://postgres@10.0.0.2:5432/orders"},
    )
    assert settings.multi_region and settings.regions == ["a", "b"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (dict(region_peers={"b": "http://x"}), "ORDERS_REGION must name this region"),
        (dict(region="A", region_peers={"b": "http://x"}), "lower-case identifier"),
        (dict(region="a", region_peers={"a": "http://x"}), "must not name this region"),
        (dict(region="a", region_peers={"b": "http://x"}, region_peer_database_urls={"c": "x"}), "no peers"),
        (
            dict(region="a", region_forward_connect_timeout_s=2.0, region_forward_timeout_s=1.0),
            "must not exceed",
        ),
    ],
)
def test_inconsistent_region_settings_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        Settings(environment="test", **values)


@pytest.mark.parametrize(
    ("query", "wait"),
    [
        (b"", 0.0),
        (b"wait=20", 20.0),
        (b"until=completed&wait=2.5", 2.5),
        (b"wait=300", 30.0),  # bounded like the home bounds it
        (b"wait=-4", 0.0),
        (b"wait=soon", 0.0),  # the home answers 422 at once
        (b"wait=nan", 0.0),
        (b"wait=inf", 0.0),
    ],
)
def test_a_forwarded_long_poll_gets_its_wait_on_top_of_the_forward_budget(query, wait):
    from api.regions import _long_poll_wait

    assert _long_poll_wait(query, 30) == wait


def test_a_subscription_connects_with_a_timeout_and_keeps_a_given_one():
    from core.db.regions import subscription_conninfo

    assert subscription_conninfo("postgresql://u@10.0.0.1:5432/orders") == (
        "postgresql://u@10.0.0.1:5432/orders?connect_timeout=5"
    )
    assert subscription_conninfo("postgresql://u@h/orders?sslmode=require") == (
        "postgresql://u@h/orders?sslmode=require&connect_timeout=5"
    )
    assert (
        subscription_conninfo("postgresql://u@h/orders?connect_timeout=2")
        == "postgresql://u@h/orders?connect_timeout=2"
    )
    assert subscription_conninfo("host=h dbname=orders") == "host=h dbname=orders connect_timeout=5"
