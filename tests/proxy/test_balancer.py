"""Endpoint choice: round robin, least-request (two random choices), passive outlier ejection
and panic mode. The clock and the draws are injected, so every pick is predictable."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

import pytest

from forklane.proxy.balancer import Balancer
from forklane.proxy.table import (
    CircuitLimits,
    Destination,
    Endpoint,
    LbPolicy,
    OutlierPolicy,
    Timeouts,
)

A = Endpoint("10.0.0.1", 80, "10.0.0.1:80")
B = Endpoint("10.0.0.2", 80, "10.0.0.2:80")
C = Endpoint("10.0.0.3", 80, "10.0.0.3:80")
T = Timeouts(connect=1.0, request=15.0, idle=60.0)


def dest(
    *endpoints: Endpoint, lb: LbPolicy = "round_robin", name: str = "baseline/x"
) -> Destination:
    return Destination(name=name, endpoints=endpoints, lb=lb, timeouts=T)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Draws:
    """Scripted draws; `index_draws` turns endpoint indexes into the floats that pick them."""

    def __init__(self, values: Iterable[float] = ()) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        if not self.values:
            raise AssertionError("the balancer drew more than scripted")
        return self.values.pop(0)


def index_draws(n: int, *indexes: int) -> list[float]:
    return [(i + 0.5) / n for i in indexes]


def no_draws() -> float:
    raise AssertionError("round robin must not draw")


def picks(balancer: Balancer, d: Destination, n: int) -> list[str]:
    return [balancer.pick(d).address for _ in range(n)]


def test_round_robin_cycles_in_configured_order() -> None:
    b = Balancer(Clock(), no_draws)
    assert picks(b, dest(A, B, C), 7) == [e.address for e in (A, B, C, A, B, C, A)]


def test_round_robin_keeps_a_cursor_per_destination() -> None:
    b = Balancer(Clock(), no_draws)
    one, two = dest(A, B, name="baseline/one"), dest(A, B, name="baseline/two")
    assert b.pick(one) is A
    assert b.pick(one) is B
    assert b.pick(two) is A  # its own cursor, not the other destination's
    assert b.pick(one) is A


def test_single_endpoint_is_returned_without_bookkeeping() -> None:
    clock = Clock()
    b = Balancer(clock, no_draws, failure_threshold=1)
    only = dest(A)
    b.failed(A)  # ejected, but it is the only one there is
    assert b.pick(only) is A


def test_exclude_skips_the_endpoint_that_just_failed() -> None:
    b = Balancer(Clock(), no_draws)
    d = dest(A, B, C)
    assert {b.pick(d, exclude=A).address for _ in range(6)} == {B.address, C.address}


def test_exclude_of_the_only_other_endpoint_still_answers() -> None:
    b = Balancer(Clock(), no_draws)
    assert b.pick(dest(A, B), exclude=A) is B
    # A destination of two where both are excluded/ejected falls back to all endpoints.
    clock = Clock()
    b2 = Balancer(clock, no_draws, failure_threshold=1)
    b2.failed(B)
    assert b2.pick(dest(A, B), exclude=A) is B  # panic: better a suspect endpoint than none


def test_least_request_prefers_the_less_busy_of_two_choices() -> None:
    d = dest(A, B, C, lb="least_request")
    # The first draw picks among n, the second among the n - 1 others (never the same one).
    b = Balancer(Clock(), Draws([0.0, 0.0, 0.5, 0.0, 0.9, 0.0]))
    b.endpoint_health(A).active = 5
    b.endpoint_health(B).active = 1
    b.endpoint_health(C).active = 0
    assert b.pick(d) is B  # A vs B
    assert b.pick(d) is B  # B vs A: order of the draws does not matter
    assert b.pick(d) is C  # C vs A


def test_least_request_ties_go_to_the_first_choice() -> None:
    d = dest(A, B, lb="least_request")
    b = Balancer(Clock(), Draws(index_draws(2, 1, 0, 0, 1)))
    assert b.pick(d) is B
    assert b.pick(d) is A


def test_least_request_steers_load_away_from_a_busy_endpoint() -> None:
    import random

    rng = random.Random(5)
    b = Balancer(Clock(), rng.random)
    d = dest(A, B, C, lb="least_request")
    b.endpoint_health(A).active = 50
    counts = Counter(b.pick(d).address for _ in range(3000))
    # The two choices always differ, so the busy endpoint never wins against an idle one.
    assert counts[A.address] == 0
    assert counts[B.address] / 3000 == pytest.approx(0.5, abs=0.05)


def test_outlier_is_ejected_after_n_consecutive_failures_and_comes_back() -> None:
    clock = Clock()
    b = Balancer(clock, no_draws, failure_threshold=3, ejection_seconds=10.0)
    d = dest(A, B, C)
    for _ in range(2):
        b.failed(B)
    assert set(picks(b, d, 3)) == {A.address, B.address, C.address}  # two failures: still in
    b.failed(B)
    assert B.address not in picks(b, d, 6)
    clock.now += 9.999
    assert B.address not in picks(b, d, 6)
    clock.now += 0.001
    assert B.address in picks(b, d, 3)


def test_a_success_resets_the_failure_count() -> None:
    b = Balancer(Clock(), no_draws, failure_threshold=3)
    d = dest(A, B)
    b.failed(A)
    b.failed(A)
    b.succeeded(A)
    b.failed(A)
    b.failed(A)
    assert A.address in picks(b, d, 2)
    assert b.endpoint_health(A).consecutive_failures == 2


def test_success_of_an_unknown_endpoint_is_harmless() -> None:
    b = Balancer(Clock(), no_draws)
    b.succeeded(C)
    assert b.health == {}


def test_ejected_endpoint_is_skipped_by_least_request_too() -> None:
    clock = Clock()
    b = Balancer(clock, no_draws, failure_threshold=1)
    d = dest(A, B, lb="least_request")
    b.failed(A)
    # One candidate left: no draw is needed and A is never chosen, even though it is idle.
    b.endpoint_health(B).active = 100
    assert [b.pick(d) for _ in range(5)] == [B] * 5


def test_panic_mode_when_every_endpoint_is_ejected() -> None:
    clock = Clock()
    b = Balancer(clock, no_draws, failure_threshold=1, ejection_seconds=30)
    d = dest(A, B, C)
    for e in (A, B, C):
        b.failed(e)
    assert picks(b, d, 6) == [e.address for e in (A, B, C, A, B, C)]
    # As soon as one comes back, traffic goes only to it.
    clock.now += 31
    b.failed(A)
    b.failed(C)
    assert set(picks(b, d, 4)) == {B.address}


def test_a_lease_counts_the_endpoint_active_until_released_once() -> None:
    from forklane.proxy.balancer import NO_LEASE
    from forklane.proxy.table import Destination, Endpoint, Timeouts

    a, b = Endpoint("a", 1, "a:1"), Endpoint("b", 1, "b:1")
    dest = Destination("d", (a, b), "least_request", Timeouts(1, 1, 1))
    balancer = Balancer(lambda: 0.0, lambda: 0.0)
    lease = balancer.lease(dest, a)
    assert balancer.endpoint_health(a).active == 1
    lease.release()
    lease.release()  # every end path of an exchange may call it: only the first counts
    assert balancer.endpoint_health(a).active == 0
    single = Destination("s", (a,), "round_robin", Timeouts(1, 1, 1))
    assert balancer.lease(single, a) is NO_LEASE
    NO_LEASE.release()
    assert balancer.endpoint_health(a).active == 0


# -- configured passive health (OutlierPolicy) and circuit breakers -----------------------------


def policy(five: int = 2, gateway: int = 0, base: float = 10.0, cap: float = 25.0,
           percent: int = 100) -> OutlierPolicy:
    return OutlierPolicy(five, gateway, base, cap, percent)


def test_each_ejection_lasts_longer_up_to_the_cap_and_calm_brings_it_down() -> None:
    clock = Clock()
    b = Balancer(clock, no_draws)
    d = replace(dest(A, B), outlier=policy(five=1))
    lengths = []
    for _ in range(4):
        b.failed(A, d, 500)
        lengths.append(b.endpoint_health(A).ejected_until - clock.now)
        clock.now = b.endpoint_health(A).ejected_until
    assert lengths == [10.0, 20.0, 25.0, 25.0]  # base times ejections, capped
    assert b.ejections_total == 4
    clock.now += 10.0  # calm for one base period after it came back
    b.succeeded(A, d)
    assert b.endpoint_health(A).ejections == 3
    b.succeeded(A, d)  # not another period yet
    assert b.endpoint_health(A).ejections == 3


def test_gateway_errors_eject_on_their_own_count_and_other_5xx_reset_it() -> None:
    b = Balancer(Clock(), no_draws)
    d = replace(dest(A, B), outlier=policy(five=0, gateway=2))
    b.failed(A, d, 502)
    b.failed(A, d, 500)  # not a gateway error: the gateway run starts again
    b.failed(A, d, 503)
    assert not b.ejected(A)
    b.failed(A, d, 0)  # a connect failure is a gateway error too
    assert b.ejected(A)


def test_max_ejection_percent_always_allows_the_first_and_then_caps() -> None:
    b = Balancer(Clock(), no_draws)
    d = replace(dest(A, B, C), outlier=policy(five=1, percent=10))
    for e in (A, B, C):
        b.failed(e, d, 500)
    assert [b.ejected(e) for e in (A, B, C)] == [True, False, False]
    off = replace(d, outlier=policy(five=1, percent=0))
    b2 = Balancer(Clock(), no_draws)
    b2.failed(A, off, 500)
    assert not b2.ejected(A)


def test_circuit_counts_survive_a_table_swap_and_refuse_over_the_limit() -> None:
    b = Balancer(Clock(), no_draws)
    d = replace(dest(A), circuit=CircuitLimits(max_connections=1, max_pending=1,
                                                max_requests=2, max_retries=1))
    c = b.circuit(d)
    assert c.enter() and c.enter()
    assert not c.enter()
    assert c.tripped()
    swapped = replace(d, circuit=CircuitLimits(max_requests=3))  # the next table, same name
    assert b.circuit(swapped) is c and c.enter()
    assert c.requests == 3
    assert not c.may_connect(connections=1024)
    assert c.may_retry() and c.may_retry() and c.may_retry() and not c.may_retry()
    c.leave(retrying=True)
    assert (c.requests, c.retries) == (2, 2)
    assert c.overflows == {"max_requests": 1, "max_connections": 1, "max_retries": 1}
    b.forget_circuits(set())
    assert "baseline/x" in b.circuits  # still in use: kept
    c.leave(False)
    c.leave(False)
    c.retries = 0
    b.forget_circuits(set())
    assert b.circuits == {}
    assert b.report()["circuits"] == {}
