"""What to do after a failed attempt to reach an upstream: a pure function of the failure, the
route and what was tried so far.

The answer is one of three steps:
- `Retry`: try the same destination again (another endpoint when there are several, on a
  fresh connection or a pooled one);
- `Fallback`: a fork that asked for it (`fallback: baseline`) goes to its baseline, once;
- `Fail`: answer with the error of the table (`errors`) and a sentence naming why.

Rules (the same for HTTP/1.1 and HTTP/2):
- a failed connect is retried on another endpoint while `retries` allows and the destination
  has another endpoint; then a fork falls back once if it may; then the request fails
  (`fork-unavailable` for a fork, `upstream-connect-failed|timeout` otherwise);
- a request the upstream never saw (a pooled HTTP/1.1 connection the upstream had closed, an
  HTTP/2 stream refused or above a GOAWAY's last stream id) is replayed up to three times
  when replaying it is safe: nothing of it was sent, or it has no body and an idempotent
  method; otherwise it fails as `upstream-reset`;
- a reset before the response head fails as `upstream-reset`; it is never replayed, because
  the upstream may have acted on the request;
- an answer whose status the destination's `RetryRules` name is retried (`retry_answer`),
  up to `attempts` times, when the request is idempotent and has no body (nothing of it needs
  keeping); the last answer goes to the client as it is;
- a gRPC call answered trailers-only with a gRPC status the rules name (`unavailable` …) is
  retried (`retry_grpc_answer`), up to `attempts` times, when its whole request is still at
  hand (`forward.replay`: it ended and fit the buffer limit); gRPC methods are not
  idempotent by name, so the rules opting in are the whole consent, as in Envoy;
- every retry takes a slot of the destination's circuit (`max_retries`, and the budget: a
  share of the requests in flight, at least `min_concurrency`); without one it is not made.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from forklane.proxy.forward import errors
from forklane.proxy.forward.errors import ProxyError
from forklane.proxy.table import (
    Destination,
    Endpoint,
    RetryRules,
    Route,
    grpc_retry_statuses,
    retry_statuses,
)

__all__ = [
    "IDEMPOTENT",
    "MAX_REPLAYS",
    "Fail",
    "Failure",
    "Fallback",
    "Retry",
    "Step",
    "after_failure",
    "retry_answer",
    "retry_budget",
    "retry_grpc_answer",
    "wants_grpc_replay",
]

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

MAX_REPLAYS = 3  # replays of a request the upstream never saw


class Failure(Enum):
    """Why an attempt failed. The value is the `forklane_upstream_errors_total` label."""

    CONNECT_FAILED = "connect-failed"
    CONNECT_TIMEOUT = "connect-timeout"
    NEVER_SEEN = "never-seen"  # closed pooled connection / refused stream: not processed
    RESET = "upstream-reset"  # reset before the response head

    @property
    def label(self) -> str:
        return self.value


class Retry(NamedTuple):
    destination: Destination
    exclude: Endpoint | None  # the endpoint that just failed, when another can be picked
    fresh: bool  # open a new connection rather than take a pooled one


class Fallback(NamedTuple):
    destination: Destination


class Fail(NamedTuple):
    error: ProxyError
    detail: str


Step = Retry | Fallback | Fail


def after_failure(
    failure: Failure,
    *,
    route: Route,
    destination: Destination,
    endpoint: Endpoint,
    attempts: int,
    fallback_used: bool,
    retries: int,
    replayable: bool = False,
    pooled: bool = True,
) -> Step:
    """The next step after `failure` of attempt number `attempts` (0 for the first).

    `replayable`: for `NEVER_SEEN`, whether sending the request again is safe. `pooled`: a
    replay may take a pooled connection (HTTP/2 multiplexes; the refusing one takes no new
    streams) or must open a fresh one (HTTP/1.1: other idle connections may be stale too)."""
    if failure is Failure.NEVER_SEEN:
        if replayable and attempts < MAX_REPLAYS:
            return Retry(destination, None, fresh=not pooled)
        return Fail(errors.UPSTREAM_RESET, "the upstream closed the connection before answering")
    if failure is Failure.RESET:
        return Fail(errors.UPSTREAM_RESET, "the upstream reset the request before answering")
    if attempts < retries and len(destination.endpoints) > 1:
        return Retry(destination, endpoint, fresh=True)
    if route.fallback is not None and not fallback_used:
        return Fallback(route.fallback)
    reason = failure.label
    if route.kind == "fork":
        error = errors.FORK_UNAVAILABLE
    elif failure is Failure.CONNECT_TIMEOUT:
        error = errors.UPSTREAM_CONNECT_TIMEOUT
    else:
        error = errors.UPSTREAM_CONNECT_FAILED
    return Fail(error, f"{destination.name} is not reachable ({reason})")


def retry_answer(rules: RetryRules, status: int, method: bytes, has_body: bool, tries: int,
                 override: str | None = None) -> bool:
    """Whether an answer with `status` is retried rather than passed on, after `tries`
    retries so far. `override`: the request's `x-forklane-retry-on`, honoured only when the
    rules allow it (a list of `5xx`, `gateway-error` and status codes)."""
    if tries >= rules.attempts or has_body or method not in IDEMPOTENT:
        return False
    statuses = rules.statuses
    if override is not None and rules.header_overrides:
        words = [w.strip() for w in override.split(",")]
        codes = tuple(int(w) for w in words if w.isdigit() and 500 <= int(w) <= 599)
        statuses = retry_statuses(words, codes) | frozenset(codes)
    return status in statuses


def wants_grpc_replay(rules: RetryRules) -> bool:
    """Whether a gRPC call to a destination with `rules` keeps its request for a retry: only
    when a gRPC status may trigger one (so every other call buffers nothing)."""
    return bool(rules.attempts and rules.buffer_limit
                and (rules.grpc_statuses or rules.header_overrides))


def retry_grpc_answer(rules: RetryRules, grpc_status: int | None, complete: bool, tries: int,
                      override: str | None = None) -> bool:
    """Whether a trailers-only gRPC answer with `grpc_status` (None: none, or not a number)
    is retried, after `tries` retries so far. `complete`: the whole request is kept for
    sending again. `override`: the request's `x-forklane-retry-on`, honoured only when the
    rules allow it (gRPC words such as `unavailable` count; HTTP words are ignored here)."""
    if grpc_status is None or not grpc_status or tries >= rules.attempts or not complete:
        return False
    statuses = rules.grpc_statuses
    if override is not None and rules.header_overrides:
        statuses = grpc_retry_statuses([w.strip() for w in override.split(",")])
    return grpc_status in statuses


def retry_budget(rules: RetryRules, requests: int) -> int:
    """How many retries of a destination may be in flight with `requests` in flight: the
    budget's share, but at least its minimum concurrency (Envoy's retry budget)."""
    return max(rules.min_concurrency, int(requests * rules.budget_percent / 100))
