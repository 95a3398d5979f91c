"""The edge's limits as plain decisions: connection admission, who may send PROXY, the AUTH
throttle's reservation, and the store budget."""

from __future__ import annotations

from remails_smtp_edge.connections import ConnectionTable, admission, proxy_peer_trusted
from remails_smtp_edge.store_budget import StoreBudget
from remails_smtp_edge.throttle import AuthThrottle


def test_admission_refuses_at_the_total_and_at_the_per_address_limit() -> None:
    assert admission(0, 0, 2, 1) is None
    refused_total = admission(2, 0, 2, 1)
    refused_address = admission(1, 1, 2, 1)
    assert refused_total is not None and str(refused_total).startswith("421 4.7.0")
    assert refused_address is not None and str(refused_address).startswith("421 4.7.0")
    assert refused_total != refused_address


def test_the_table_counts_admitted_sessions_only_and_releases_them() -> None:
    table = ConnectionTable(max_total=3, max_per_address=2)
    assert table.admit("192.0.2.1") is None and table.admit("192.0.2.1") is None
    assert table.admit("192.0.2.1") is not None  # refused: not counted
    assert table.admit("192.0.2.2") is None
    assert table.total == 3 and table.admit("192.0.2.3") is not None
    table.release("192.0.2.1")
    assert table.admit("192.0.2.3") is None


def test_only_peers_in_the_trusted_networks_may_send_proxy() -> None:
    networks = ["10.0.0.0/8", "fd00::/8"]
    assert proxy_peer_trusted("10.1.2.3", networks)
    assert proxy_peer_trusted("::ffff:10.1.2.3", networks)  # a dual-stack socket's form
    assert proxy_peer_trusted("fd00::1", networks)
    assert not proxy_peer_trusted("127.0.0.1", networks)
    assert not proxy_peer_trusted("not an address", networks)
    assert not proxy_peer_trusted("10.1.2.3", [])


def test_attempts_in_flight_make_the_next_wait_and_failures_block() -> None:
    throttle = AuthThrottle(max_failures=2, window=60)
    keys = ["ip:192.0.2.1"]
    assert throttle.reserve(keys, 0.0) == throttle.reserve(keys, 0.1) == "go"
    assert throttle.reserve(keys, 0.2) == "wait"  # two in flight could still use up the limit
    throttle.settle(keys, 0.3, failed=False)  # a good login: not a failure
    assert throttle.reserve(keys, 0.4) == "go"
    throttle.settle(keys, 0.5, failed=True)
    throttle.settle(keys, 0.6, failed=True)
    assert throttle.reserve(keys, 0.7) == "blocked"  # two failures in the window
    assert throttle.reserve(keys, 61.0) == "go"  # the window slid past them


def test_many_good_logins_in_a_row_never_block() -> None:
    throttle = AuthThrottle(max_failures=2, window=60)
    keys = ["ip:192.0.2.1", "user:app"]
    for i in range(100):
        assert throttle.reserve(keys, float(i)) == "go"
        throttle.settle(keys, float(i), failed=False)


async def test_the_store_budget_lets_one_through_and_holds_the_rest() -> None:
    budget = StoreBudget(100)
    assert budget.fits(500)  # nothing in flight: even a message larger than the budget
    async with budget.hold(500):
        assert budget.in_use == 500
        assert not budget.fits(10)
    async with budget.hold(60):
        assert budget.fits(40) and not budget.fits(41)
        async with budget.hold(40):
            assert budget.in_use == 100
    assert budget.in_use == 0
