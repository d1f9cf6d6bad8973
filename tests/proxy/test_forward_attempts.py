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
    retry_answer,
    retry_budget,
    retry_grpc_answer,
    wants_grpc_replay,
)
from forklane.proxy.forward.replay import Replay
from forklane.proxy.table import (
    Destination,
    Endpoint,
    RetryRules,
    Route,
    Timeouts,
    grpc_retry_statuses,
    retry_statuses,
)

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


# -- retries after an answer (RetryRules) --------------------------------------------------------


def _rules(attempts: int = 2, statuses: tuple[int, ...] = (503,), overrides: bool = False
           ) -> RetryRules:
    return RetryRules(attempts, frozenset(statuses), 0.0, 20.0, 3, overrides)


@pytest.mark.parametrize(
    ("status", "method", "has_body", "tries", "override", "overrides", "retried"),
    [
        (503, b"GET", False, 0, None, False, True),
        (503, b"GET", False, 2, None, False, False),  # attempts spent
        (503, b"POST", False, 0, None, False, False),  # not idempotent
        (503, b"PUT", True, 0, None, False, False),  # a body is never sent twice
        (500, b"GET", False, 0, None, False, False),  # not a retried status
        (500, b"GET", False, 0, "5xx", False, False),  # the header needs the policy's leave
        (500, b"GET", False, 0, "5xx", True, True),
        (500, b"GET", False, 0, "gateway-error", True, False),
        (599, b"DELETE", False, 0, "599, nonsense", True, True),
    ],
)
def test_retry_answer(status: int, method: bytes, has_body: bool, tries: int,
                      override: str | None, overrides: bool, retried: bool) -> None:
    rules = _rules(overrides=overrides)
    assert retry_answer(rules, status, method, has_body, tries, override) is retried


def test_retry_budget_is_a_share_with_a_floor() -> None:
    assert retry_budget(_rules(), 0) == 3
    assert retry_budget(_rules(), 100) == 20
    assert retry_statuses(("gateway-error",), ()) == frozenset({502, 503, 504})


UNAVAILABLE, INTERNAL, NOT_FOUND = 14, 13, 5


def _grpc_rules(attempts: int = 2, words: tuple[str, ...] = ("unavailable",),
                overrides: bool = False, limit: int = 65536) -> RetryRules:
    return RetryRules(attempts, frozenset(), 0.0, 20.0, 3, overrides,
                      grpc_statuses=grpc_retry_statuses(words), buffer_limit=limit)


@pytest.mark.parametrize(
    ("grpc_status", "complete", "tries", "override", "overrides", "retried"),
    [
        (UNAVAILABLE, True, 0, None, False, True),
        (UNAVAILABLE, True, 2, None, False, False),  # attempts spent
        (UNAVAILABLE, False, 0, None, False, False),  # the request is not all at hand
        (INTERNAL, True, 0, None, False, False),  # not a retried status: passed on
        (NOT_FOUND, True, 0, None, False, False),
        (0, True, 0, None, False, False),  # OK is an answer, never a retry
        (None, True, 0, None, False, False),  # no (or a nonsense) grpc-status
        (INTERNAL, True, 0, "internal", False, False),  # the header needs the policy's leave
        (INTERNAL, True, 0, "internal, 5xx", True, True),
        (UNAVAILABLE, True, 0, "internal", True, False),  # the header replaces retry_on
    ],
)
def test_retry_grpc_answer(grpc_status: int | None, complete: bool, tries: int,
                           override: str | None, overrides: bool, retried: bool) -> None:
    rules = _grpc_rules(overrides=overrides)
    assert retry_grpc_answer(rules, grpc_status, complete, tries, override) is retried


def test_envoy_grpc_words_name_their_statuses() -> None:
    words = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
             "5xx")
    assert grpc_retry_statuses(words) == frozenset({1, 4, 13, 8, 14})
    assert retry_statuses(words, ()) == frozenset(range(500, 600))  # HTTP words stay apart


def test_only_calls_that_may_be_retried_on_a_grpc_status_keep_a_copy() -> None:
    assert wants_grpc_replay(_grpc_rules())
    assert not wants_grpc_replay(_grpc_rules(attempts=0))
    assert not wants_grpc_replay(_grpc_rules(words=("5xx",)))  # HTTP statuses only
    assert wants_grpc_replay(_grpc_rules(words=(), overrides=True))  # the header may ask
    assert not wants_grpc_replay(_grpc_rules(limit=0))


def test_a_replay_keeps_the_body_up_to_its_limit_then_nothing() -> None:
    kept = Replay(10)
    kept.add(b"12345")
    kept.add(b"67890")
    assert not kept.complete  # not ended yet
    kept.finish([(b"x-t", b"1")])
    assert kept.complete and kept.chunks == [b"12345", b"67890"]
    assert kept.trailers == [(b"x-t", b"1")]
    big = Replay(10)
    big.add(b"123456")
    big.add(b"78901")  # 11 bytes: over the limit
    big.add(b"2")
    big.finish(None)
    assert not big.complete and big.chunks == [] and big.overflowed
