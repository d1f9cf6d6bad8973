"""What happens after a failed attempt: retry, fall back or fail (a pure function)."""

from __future__ import annotations

import pytest

from forklane.proxy.forward import errors
from forklane.proxy.forward.attempts import (
    MAX_REPLAYS,
    Fail,
    Failure,
    Fallback,
    Retry,
    after_failure,
)
from forklane.proxy.table import Destination, Endpoint, Route, Timeouts

T = Timeouts(connect=1.0, request=5.0, idle=60.0)
A = Endpoint("10.0.0.1", 80, "10.0.0.1:80")
B = Endpoint("10.0.0.2", 80, "10.0.0.2:80")
ONE = Destination("baseline/svc", (A,), "round_robin", T)
TWO = Destination("baseline/svc", (A, B), "round_robin", T)
FORK = Destination("fork/svc@k", (B,), "round_robin", T)


def route(kind: str = "baseline", dest: Destination = ONE,
          fallback: Destination | None = None) -> Route:
    return Route(kind=kind, service="svc", destination=dest, rule="r", reason="x",  # type: ignore[arg-type]
                 fallback=fallback)


def step(failure: Failure, r: Route, dest: Destination, *, attempts: int = 0,
         fallback_used: bool = False, retries: int = 2, replayable: bool = False,
         pooled: bool = True) -> object:
    return after_failure(failure, route=r, destination=dest, endpoint=A, attempts=attempts,
                         fallback_used=fallback_used, retries=retries, replayable=replayable,
                         pooled=pooled)


@pytest.mark.parametrize("failure", [Failure.CONNECT_FAILED, Failure.CONNECT_TIMEOUT])
def test_connect_failure_retries_another_endpoint_while_retries_allow(failure: Failure) -> None:
    assert step(failure, route(dest=TWO), TWO) == Retry(TWO, A, fresh=True)
    assert step(failure, route(dest=TWO), TWO, attempts=1) == Retry(TWO, A, fresh=True)
    final = step(failure, route(dest=TWO), TWO, attempts=2)
    assert isinstance(final, Fail)
    expected = (errors.UPSTREAM_CONNECT_TIMEOUT if failure is Failure.CONNECT_TIMEOUT
                else errors.UPSTREAM_CONNECT_FAILED)
    assert final.error is expected
    assert final.detail == f"baseline/svc is not reachable ({failure.label})"


def test_a_single_endpoint_is_not_retried() -> None:
    final = step(Failure.CONNECT_FAILED, route(), ONE)
    assert isinstance(final, Fail) and final.error.status == 503


def test_no_retries_configured_fails_at_once() -> None:
    assert isinstance(step(Failure.CONNECT_FAILED, route(dest=TWO), TWO, retries=0), Fail)


def test_a_fork_falls_back_once_then_fails_as_fork_unavailable() -> None:
    fork = route("fork", FORK, fallback=ONE)
    assert step(Failure.CONNECT_FAILED, fork, FORK) == Fallback(ONE)
    # the baseline it fell back to failed too: no second fallback
    final = step(Failure.CONNECT_FAILED, fork, ONE, fallback_used=True)
    assert isinstance(final, Fail) and final.error is errors.FORK_UNAVAILABLE


def test_a_fork_without_fallback_fails_as_fork_unavailable() -> None:
    final = step(Failure.CONNECT_TIMEOUT, route("fork", FORK), FORK)
    assert isinstance(final, Fail) and final.error is errors.FORK_UNAVAILABLE


def test_a_request_the_upstream_never_saw_is_replayed_when_safe() -> None:
    r = route()
    assert step(Failure.NEVER_SEEN, r, ONE, replayable=True, pooled=False) == Retry(ONE, None, True)
    assert step(Failure.NEVER_SEEN, r, ONE, replayable=True, pooled=True) == Retry(ONE, None, False)
    last = step(Failure.NEVER_SEEN, r, ONE, replayable=True, attempts=MAX_REPLAYS)
    assert isinstance(last, Fail) and last.error is errors.UPSTREAM_RESET
    unsafe = step(Failure.NEVER_SEEN, r, ONE, replayable=False)
    assert isinstance(unsafe, Fail) and unsafe.error is errors.UPSTREAM_RESET


def test_a_reset_is_never_replayed_nor_falls_back() -> None:
    fork = route("fork", FORK, fallback=ONE)
    final = step(Failure.RESET, fork, FORK, replayable=True)
    assert isinstance(final, Fail) and final.error is errors.UPSTREAM_RESET
