"""What every finished request leaves behind, whatever its protocol: its metrics row, its
latency, its span, and (when someone listens) an access-log line and a live-tap record.

Shared by the HTTP/1.1 and HTTP/2 listeners and the mirror copies, so all count and log the
same way. `count_row` is the one place a request is counted in `forklane_requests_total`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from forklane.proxy.routing import Decision
from forklane.proxy.table import Destination, Endpoint, Route

if TYPE_CHECKING:
    from forklane.proxy.listener.context import ListenerContext
    from forklane.proxy.tap_capture import Capture

__all__ = ["count_request", "count_row", "log_request"]

_REJECTED = "\x1frejected"


def count_row(rows: dict[str, list[int]], key: str, status: int) -> None:
    """Bump a (service, kind) row by status class (0: reset, no answer)."""
    row = rows.get(key)
    if row is None:
        row = rows[key] = [0, 0, 0, 0, 0, 0]
    row[status // 100 if status < 600 else 5] += 1


def count_request(ctx: ListenerContext, route: Route | None, status: int, elapsed: float) -> None:
    """Count a finished request in its route's row and observe its latency."""
    key = route.stat_key if route is not None else _REJECTED
    row = ctx.rows.get(key)  # count_row, inlined: this runs for every request
    if row is None:
        row = ctx.rows[key] = [0, 0, 0, 0, 0, 0]
    row[status // 100 if status < 600 else 5] += 1
    ctx.stats.observe_latency(elapsed)


def log_request(
    ctx: ListenerContext,
    *,
    protocol: str,
    method: bytes,
    target: bytes,
    host: bytes,
    status: int,
    elapsed: float,
    route: Route | None,
    decision: Decision | None,
    dest: Destination | None,
    endpoint: Endpoint | None,
    fallback: bool,
    error: str | None,
    peer: bytes,
    capture: Capture | None = None,
) -> None:
    """One JSON record to the live-tap readers that want it and, when enabled, the access log.

    Each tap's filter is asked before the record is built, so a tap on one sandbox costs
    the other requests one look-up per tap. A capture goes only to the sinks that render it
    (the control plane's buffer), never to the access log."""
    key = decision.key.key if decision else None
    service = route.service if route else None
    sinks = [s for s in ctx.stats.taps if s.wants(key, service, status)]
    if not sinks and not ctx.access_log:
        return
    record: dict[str, Any] = {
        "time": round(time.time(), 6),
        "listener": ctx.kind,
        "protocol": protocol,
        "method": method.decode("latin-1"),
        "target": target.decode("latin-1"),
        "host": host.decode("latin-1"),
        "status": status,
        "duration_ms": round(elapsed * 1000, 3),
        "service": service,
        "kind": route.kind if route else "rejected",
        "rule": route.rule if route else None,
        "destination": dest.name if dest else None,
        "endpoint": endpoint.address if endpoint else None,
        "routing_key": key,
        "carrier": decision.key.carrier if decision else None,
        "fallback": fallback,
        "error": error,
        "peer": peer.decode("latin-1"),
    }
    if capture is None:
        for sink in sinks:
            sink.offer(record)
    else:
        for sink in sinks:
            if hasattr(sink, "capture_limit"):
                sink.offer(record, capture)
            else:
                sink.offer(record)
    if ctx.access_log:
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
