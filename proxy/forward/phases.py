"""The named phases of an exchange's life (one request and its response, either protocol).

    QUEUED ──▶ CONNECTING ──▶ SENT ──▶ STREAMING ──▶ DONE
       │            │           │          │
       └────────────┴───────────┴──────────┴──▶ ABORTED   (connection lost, reset, body cut)
    SENT ──▶ TUNNEL   (HTTP/1.1 upgrade answered 101: bytes flow unparsed both ways)

- QUEUED: parsed and routed, waiting for its turn (HTTP/1.1 pipelining) or for dispatch;
- CONNECTING: an endpoint is chosen and a connection is being opened or taken;
- SENT: the request head went upstream, the response head has not arrived; the request
  timeout applies only here;
- STREAMING: the response head went to the client (a local answer goes straight to DONE);
- DONE, TUNNEL, ABORTED: final; the request was counted exactly once on entering one.

Plain ints (an IntEnum), so the request path compares them at C speed.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ABORTED", "CONNECTING", "DONE", "QUEUED", "SENT", "STREAMING", "TUNNEL", "Phase"]


class Phase(IntEnum):
    QUEUED = 0
    CONNECTING = 1
    SENT = 2
    STREAMING = 3
    DONE = 4  # final phases from here on
    TUNNEL = 5
    ABORTED = 6


QUEUED = Phase.QUEUED
CONNECTING = Phase.CONNECTING
SENT = Phase.SENT
STREAMING = Phase.STREAMING
DONE = Phase.DONE
TUNNEL = Phase.TUNNEL
ABORTED = Phase.ABORTED
