"""CPU cost of the propagation hooks per request, in process (no sockets, no load generator).

Phase R of `bench/propagation_cost.sh` measures the whole data path at a fixed rate; its load
carries no `traceparent`, so the trace memory itself is never exercised there. This times the
work the hooks add on top of `decide()` for the requests where they do something:

    .venv/bin/python bench/propagation_cost.py            # 200k iterations per case
    ITERATIONS=50000 .venv/bin/python bench/propagation_cost.py

Every figure is the median of five runs, in microseconds per request; `decide()` alone is the
reference row, and the cost of each case is reported next to it.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forklane.proxy.hooks import PropagationState
from forklane.proxy.metrics import Stats
from forklane.proxy.routing import RequestView, decide
from forklane.proxy.schema import RoutingSnapshot
from forklane.proxy.settings import ProxySettings
from forklane.proxy.table import LocalIdentity, build_table

KEY = "abc"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TP = f"00-{TRACE}-00f067aa0ba902b7-01"

CONFIG: dict[str, Any] = {
    "version": "propagation-bench",
    "services": [{"name": "web", "endpoints": ["127.0.0.1:18081"]}],
    "forks": [{"routing_key": KEY, "service": "web", "endpoints": ["127.0.0.1:18082"],
               "sandbox": "bench"}],
}


def _never() -> float:
    return 0.0


def _time(fn: Callable[[], object], n: int) -> float:
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def main() -> None:
    n = int(os.environ.get("ITERATIONS", "200000"))
    table = build_table(RoutingSnapshot.model_validate(CONFIG), LocalIdentity("web", "127.0.0.1:9"))
    settings = ProxySettings(service="web", trace_repair=True, trace_gaps=True)
    state = PropagationState(settings, Stats())
    inbound, outbound = state.hooks_for("inbound"), state.hooks_for("outbound")
    assert inbound is not None and outbound is not None

    def view(listener: str, headers: dict[str, str]) -> RequestView:
        return RequestView(listener, "GET", "/", "web", headers)  # type: ignore[arg-type]

    keyed_in = view("inbound", {"x-forklane-routing-key": KEY, "traceparent": TP})
    lost_out = view("outbound", {"traceparent": TP})
    keyed_out = view("outbound", {"x-forklane-routing-key": KEY, "traceparent": TP})
    plain_out = view("outbound", {"x-forklane-routing-key": KEY})
    inbound.after_decide(keyed_in, table, decide(keyed_in, table, _never), _never, [])

    def with_hook(hooks: Any, v: RequestView) -> Callable[[], object]:
        return lambda: hooks.after_decide(v, table, decide(v, table, _never), _never, [])

    reference = _time(lambda: decide(plain_out, table, _never), n)
    cases = [
        ("outbound, key header, no traceparent (the phase R load)", with_hook(outbound, plain_out),
         reference),
        ("outbound, key and traceparent (nothing to do)", with_hook(outbound, keyed_out),
         _time(lambda: decide(keyed_out, table, _never), n)),
        ("inbound, key and traceparent: remember", with_hook(inbound, keyed_in),
         _time(lambda: decide(keyed_in, table, _never), n)),
        ("outbound, traceparent only: restore and decide again", with_hook(outbound, lost_out),
         _time(lambda: decide(lost_out, table, _never), n)),
    ]
    # Tracing: the request path's share (span start, traceparent rewrite, span end); the
    # export (protobuf encoding, HTTP) runs on the exporter's thread and is discarded here.
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    from forklane.proxy.tracing import ProxyTracer

    tracer = ProxyTracer("web", Discard())
    traced = PropagationState(ProxySettings(service="web"), Stats(), tracer=tracer)
    traced_out = traced.hooks_for("outbound")
    assert traced_out is not None
    lines = [b"host: web\r\n", b"traceparent: " + TP.encode() + b"\r\n"]
    end = table.services["web"].baseline.destination

    def traced_request(v: RequestView) -> Callable[[], object]:
        def run() -> None:
            _, span = traced_out.after_decide(v, table, decide(v, table, _never), _never,
                                              list(lines))
            assert span is not None
            span.finish(200, end, None)
        return run

    cases += [
        ("tracing, no traceparent (new trace, sampled)", traced_request(plain_out), reference),
        ("tracing, child of the incoming traceparent", traced_request(keyed_out),
         _time(lambda: decide(keyed_out, table, _never), n)),
    ]
    print(f"| case | decide() µs | with hook µs | hook adds µs |  ({n} iterations, median of 5)")
    print("|---|---:|---:|---:|")
    for name, fn, base in cases:
        total = _time(fn, n)
        print(f"| {name} | {base:.2f} | {total:.2f} | {total - base:+.2f} |")
    tracer.shutdown()


if __name__ == "__main__":
    main()
