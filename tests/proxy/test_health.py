"""Active health state (`proxy/health.py`) and how the balancer uses it: thresholds in a row,
state kept across table swaps, targets only where a check is configured, and the balancer's
rule that an endpoint is used only when both kinds of health agree (panic when none is)."""

from __future__ import annotations

from typing import Any

import pytest

from forklane.proxy import schema
from forklane.proxy.balancer import Balancer
from forklane.proxy.health import HealthBook, ProbeState, observe, targets
from forklane.proxy.table import Destination, Endpoint, HealthPolicy, Timeouts, build_table

A = Endpoint("10.0.0.1", 80, "10.0.0.1:80")
B = Endpoint("10.0.0.2", 80, "10.0.0.2:80")
C = Endpoint("10.0.0.3", 80, "10.0.0.3:80")
T = Timeouts(connect=1.0, request=15.0, idle=60.0)
CHECK = HealthPolicy("http", "/healthz", frozenset(), 1.0, 0.5, 3, 2, 0.0)


def dest(*endpoints: Endpoint, health: HealthPolicy | None = CHECK) -> Destination:
    return Destination(name="baseline/x", endpoints=endpoints, lb="round_robin", timeouts=T,
                       health=health)


def no_draws() -> float:
    raise AssertionError("round robin must not draw")


def test_unhealthy_after_threshold_failures_in_a_row_and_back_after_successes() -> None:
    state = ProbeState()
    results = [False, False, True, False, False, False, True, True]
    flips = [observe(state, ok, CHECK, "x", now=float(i)) for i, ok in enumerate(results)]
    # A success in between resets the count: the third failure in a row is at index 5.
    assert flips == [False, False, False, False, False, True, False, True]
    assert state.healthy and state.changed_at == 7.0 and state.flips == 2
    assert (state.checks, state.failed_checks) == (8, 5)


def test_expected_statuses_default_to_any_2xx() -> None:
    assert CHECK.passes(200) and CHECK.passes(204) and not CHECK.passes(301)
    strict = HealthPolicy("http", "/", frozenset({200, 301}), 1.0, 0.5, 1, 1, 0.0)
    assert strict.passes(301) and not strict.passes(204)


def test_the_book_keeps_state_of_targets_that_stay_and_drops_the_rest() -> None:
    book = HealthBook()
    added, removed = book.update([(CHECK, A.address), (CHECK, B.address)])
    assert sorted(t[1] for t in added) == [A.address, B.address] and removed == []
    for _ in range(3):
        book.record((CHECK, B.address), False, "status 503", now=1.0)
    assert book.down == {CHECK: frozenset({B.address})}
    added, removed = book.update([(CHECK, B.address), (CHECK, C.address)])
    assert added == [(CHECK, C.address)] and removed == [(CHECK, A.address)]
    assert not book.healthy(CHECK, B.address)  # the swap forgot nothing about B
    book.update([(CHECK, C.address)])
    assert book.down == {}  # B is gone, and so is its verdict
    assert not book.record((CHECK, B.address), True, "ok", now=2.0)  # a late probe: ignored


def test_the_report_names_each_probed_endpoint() -> None:
    book = HealthBook()
    book.update([(CHECK, A.address)])
    book.record((CHECK, A.address), False, "timeout", now=5.0)
    (row,) = book.report(now=6.0)
    assert row["endpoint"] == A.address and row["check"] == "GET /healthz"
    assert row["healthy"] and row["failures"] == 1 and row["last"] == "timeout"


def snapshot(**service: Any) -> schema.RoutingSnapshot:
    return schema.RoutingSnapshot.model_validate({
        "version": "h1",
        "services": [{"name": "svc", "endpoints": ["10.0.0.1:80", "10.0.0.2:80"], **service},
                     {"name": "plain", "endpoints": ["10.0.0.9:80"]}],
        "splits": [{"name": "s", "service": "svc", "destinations": [
            {"name": "d", "weight": 1, "endpoints": ["10.0.0.3:80"],
             "health_check": {"kind": "tcp"}}]}],
    })


def test_targets_are_the_endpoints_of_destinations_with_a_check() -> None:
    table = build_table(snapshot(health_check={"path": "/ready", "interval_seconds": 2}))
    found = {(policy.label, address) for policy, address in targets(table)}
    assert found == {("GET /ready", "10.0.0.1:80"), ("GET /ready", "10.0.0.2:80"),
                     ("tcp", "10.0.0.3:80")}
    plain = schema.RoutingSnapshot.model_validate(
        {"version": "p", "services": [{"name": "svc", "endpoints": ["10.0.0.1:80"]}]})
    assert targets(build_table(plain)) == {}  # nothing configured: nothing probed


@pytest.mark.parametrize("check, problem", [
    ({}, "needs a path"),
    ({"path": "healthz"}, "starts with '/'"),
    ({"path": "/a b"}, "visible ASCII"),
    ({"kind": "tcp", "path": "/x"}, "tcp health check has no path"),
    ({"path": "/x", "expected_statuses": [99]}, "100..599"),
    ({"path": "/x", "interval_seconds": 0}, "greater than or equal"),
    ({"path": "/x", "unhealthy_threshold": 0}, "greater than or equal"),
    ({"path": "/x", "timeout": 1}, "Extra inputs"),
])
def test_a_bad_health_check_is_refused_with_its_reason(check: dict[str, Any],
                                                         problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        snapshot(health_check=check)


def test_the_balancer_skips_actively_unhealthy_endpoints() -> None:
    book = HealthBook()
    book.update([(CHECK, A.address), (CHECK, B.address), (CHECK, C.address)])
    b = Balancer(lambda: 0.0, no_draws, probes=book)
    d = dest(A, B, C)
    for _ in range(3):
        book.record((CHECK, B.address), False, "status 500", now=0.0)
    assert {b.pick(d).address for _ in range(6)} == {A.address, C.address}
    # Another destination over the same endpoints without a check is not affected.
    unchecked = dest(A, B, C, health=None)
    assert {b.pick(unchecked).address for _ in range(6)} == {A.address, B.address, C.address}


def test_healthy_by_both_kinds_or_panic() -> None:
    book = HealthBook()
    book.update([(CHECK, A.address), (CHECK, B.address)])
    b = Balancer(lambda: 0.0, no_draws, failure_threshold=1, probes=book)
    d = dest(A, B)
    for _ in range(3):
        book.record((CHECK, A.address), False, "timeout", now=0.0)
    b.failed(B, d)  # passively ejected
    # Neither endpoint is healthy by both: panic, use all rather than none.
    assert {b.pick(d).address for _ in range(4)} == {A.address, B.address}
    for _ in range(2):
        book.record((CHECK, A.address), True, "ok", now=1.0)
    assert {b.pick(d).address for _ in range(4)} == {A.address}  # B still ejected
