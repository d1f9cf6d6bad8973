"""Every answer the proxy makes itself, as one typed table.

An entry names the HTTP status to answer with, the gRPC status a gRPC call gets instead (a
gRPC client reads an HTTP error page as an opaque failure), the `x-forklane-error` value, and
the label it is counted under (`forklane_rejected_requests_total{reason}` for requests refused
as malformed, `forklane_upstream_errors_total{reason}` for upstream failures, or nothing when
the answer is a routing outcome counted in `forklane_requests_total`). The README's list of
errors is checked against this table by a test, so the two cannot drift apart.

Pure data: no I/O, nothing per request but attribute reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BAD_CONNECTION_HEADER",
    "BAD_HOST",
    "BAD_TARGET",
    "BAD_TRANSFER_ENCODING",
    "BODY_TIMEOUT",
    "CIRCUIT_OPEN",
    "CONNECT_UNSUPPORTED",
    "DEADLINE_EXCEEDED",
    "DUPLICATE_HOST",
    "ERRORS",
    "FAULT_INJECTED",
    "FORK_UNAVAILABLE",
    "HEADERS_TOO_LARGE",
    "HEADER_TIMEOUT",
    "MALFORMED_REQUEST",
    "MISSING_HOST",
    "NO_CONFIG",
    "NO_ENDPOINTS",
    "NO_ROUTE",
    "OVERLOADED",
    "UNKNOWN_METHOD",
    "UNSUPPORTED_TRANSFER_CODING",
    "UNSUPPORTED_VERSION",
    "UPSTREAM_CONNECT_FAILED",
    "UPSTREAM_CONNECT_TIMEOUT",
    "UPSTREAM_NO_RESPONSE",
    "UPSTREAM_RESET",
    "UPSTREAM_TIMEOUT",
    "ProxyError",
    "error_for",
]

# gRPC status codes (grpc/status.h) the proxy answers with.
GRPC_DEADLINE_EXCEEDED = 4
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_UNIMPLEMENTED = 12
GRPC_INTERNAL = 13
GRPC_UNAVAILABLE = 14

# "attempts": counted once per failed attempt under the attempt's reason (`attempts.Failure`).
Counter = Literal["rejected", "upstream", "attempts", "none"]


@dataclass(frozen=True, slots=True)
class ProxyError:
    """One kind of answer the proxy makes itself."""

    reason: str  # the `x-forklane-error` value
    status: int  # HTTP status
    grpc_status: int  # gRPC status for gRPC calls
    counter: Counter  # which metric family counts it when it is answered
    label: str  # the metric label (often the reason itself)
    summary: str  # what it means, for the README's table and /explain

    @property
    def reason_raw(self) -> bytes:
        return self.reason.encode("ascii")


def _e(reason: str, status: int, grpc_status: int, counter: Counter, summary: str,
       label: str | None = None) -> ProxyError:
    return ProxyError(reason, status, grpc_status, counter, label or reason, summary)


# -- routing outcomes -------------------------------------------------------------------------
NO_ROUTE = _e("no-route", 404, GRPC_UNAVAILABLE, "none", "no service has this authority")
NO_CONFIG = _e("no-config", 503, GRPC_UNAVAILABLE, "none", "no routing table is loaded yet")
NO_ENDPOINTS = _e("no-endpoints", 503, GRPC_UNAVAILABLE, "none",
                  "the service has no ready endpoints (discovered, scaled to zero)")
FAULT_INJECTED = _e("fault-injected", 503, GRPC_UNAVAILABLE, "none",
                    "a fault the sandbox asked for (`faults`); status as configured")
# -- upstream failures (counted per failed attempt, with the attempt's reason) ----------------
FORK_UNAVAILABLE = _e("fork-unavailable", 503, GRPC_UNAVAILABLE, "attempts",
                      "the fork is not reachable and its fallback is `fail`", "connect-failed")
UPSTREAM_CONNECT_FAILED = _e("upstream-connect-failed", 503, GRPC_UNAVAILABLE, "attempts",
                             "no endpoint of the destination accepted a connection",
                             "connect-failed")
UPSTREAM_CONNECT_TIMEOUT = _e("upstream-connect-timeout", 503, GRPC_UNAVAILABLE, "attempts",
                              "connecting to the destination timed out", "connect-timeout")
UPSTREAM_RESET = _e("upstream-reset", 502, GRPC_UNAVAILABLE, "upstream",
                    "the upstream closed or reset before answering")
UPSTREAM_NO_RESPONSE = _e("upstream-no-response", 502, GRPC_INTERNAL, "upstream",
                          "the upstream ended the stream without a response")
UPSTREAM_TIMEOUT = _e("upstream-timeout", 504, GRPC_DEADLINE_EXCEEDED, "upstream",
                      "the upstream did not answer within the request timeout")
CIRCUIT_OPEN = _e("circuit-open", 503, GRPC_UNAVAILABLE, "upstream",
                  "a circuit breaker of the destination is at its limit (requests, pending "
                  "requests, connections): refused at once")
DEADLINE_EXCEEDED = _e("deadline-exceeded", 504, GRPC_DEADLINE_EXCEEDED, "upstream",
                       "a gRPC call's `grpc-timeout` passed in the proxy", "grpc-deadline")
# -- requests refused before routing (never forwarded) ----------------------------------------
OVERLOADED = _e("overloaded", 503, GRPC_UNAVAILABLE, "rejected",
                "the proxy's resident memory is above `memory_watermark_mb`: new requests are "
                "shed until it is below again")
HEADER_TIMEOUT = _e("header-timeout", 408, GRPC_DEADLINE_EXCEEDED, "rejected",
                    "the request headers did not arrive within `header_timeout`")
BODY_TIMEOUT = _e("body-timeout", 408, GRPC_DEADLINE_EXCEEDED, "rejected",
                  "the request body arrived slower than `min_body_rate` once `body_timeout` "
                  "had passed")
HEADERS_TOO_LARGE = _e("headers-too-large", 431, GRPC_RESOURCE_EXHAUSTED, "rejected",
                       "more than `max_header_bytes` or `max_header_count`")
MALFORMED_REQUEST = _e("malformed-request", 400, GRPC_INTERNAL, "rejected",
                       "the request is not valid HTTP (the body says what)")
DUPLICATE_HOST = _e("duplicate-host", 400, GRPC_INTERNAL, "rejected", "more than one Host field")
MISSING_HOST = _e("missing-host", 400, GRPC_INTERNAL, "rejected",
                  "an HTTP/1.1 request without Host")
BAD_HOST = _e("bad-host", 400, GRPC_INTERNAL, "rejected", "Host is not a valid authority")
BAD_TARGET = _e("bad-target", 400, GRPC_INTERNAL, "rejected",
                "an absolute-form target that is not a valid URL")
BAD_TRANSFER_ENCODING = _e("bad-transfer-encoding", 400, GRPC_INTERNAL, "rejected",
                           "Transfer-Encoding does not end with `chunked`, or on HTTP/1.0")
UNSUPPORTED_TRANSFER_CODING = _e("unsupported-transfer-coding", 501, GRPC_UNIMPLEMENTED,
                                 "rejected", "a transfer coding other than `chunked`")
BAD_CONNECTION_HEADER = _e("bad-connection-header", 400, GRPC_INTERNAL, "rejected",
                           "Connection nominates a field that frames or routes the request")
UNSUPPORTED_VERSION = _e("unsupported-version", 505, GRPC_INTERNAL, "rejected",
                         "an HTTP version other than 1.0, 1.1 and 2")
CONNECT_UNSUPPORTED = _e("connect-unsupported", 405, GRPC_UNIMPLEMENTED, "rejected",
                         "CONNECT tunnelling is not supported")
UNKNOWN_METHOD = _e("unknown-method", 501, GRPC_UNIMPLEMENTED, "rejected",
                    "an HTTP/1.1 method outside the parser's list (HTTP/2 takes any token)")

ERRORS: dict[str, ProxyError] = {
    e.reason: e
    for e in (
        NO_ROUTE, NO_CONFIG, NO_ENDPOINTS, FAULT_INJECTED, FORK_UNAVAILABLE,
        UPSTREAM_CONNECT_FAILED, UPSTREAM_CONNECT_TIMEOUT, UPSTREAM_RESET, UPSTREAM_NO_RESPONSE,
        UPSTREAM_TIMEOUT, DEADLINE_EXCEEDED, CIRCUIT_OPEN, HEADER_TIMEOUT,
        HEADERS_TOO_LARGE, MALFORMED_REQUEST, DUPLICATE_HOST, MISSING_HOST, BAD_HOST, BAD_TARGET,
        BAD_TRANSFER_ENCODING, UNSUPPORTED_TRANSFER_CODING, BAD_CONNECTION_HEADER,
        UNSUPPORTED_VERSION, CONNECT_UNSUPPORTED, OVERLOADED, BODY_TIMEOUT, UNKNOWN_METHOD,
    )
}


def error_for(reason: str) -> ProxyError:
    """The table entry of a reason (a route's `error`, for instance). Unknown → KeyError."""
    return ERRORS[reason]
