"""The propagation hooks as values: trace repair, gap counting and when nothing runs at all.

One sidecar's inbound and outbound hooks share a `PropagationState`; the clock is a fake, so
expiry is exact. The routing table is a real compiled one.
"""

from __future__ import annotations

from typing import Any

import pytest

from forklane.proxy.hooks import RESTORED_CARRIER, PropagationState, RequestHooks
from forklane.proxy.metrics import Stats
from forklane.proxy.routing import Decision, RequestView, decide
from forklane.proxy.schema import RoutingSnapshot
from forklane.proxy.settings import ProxySettings
from forklane.proxy.table import LocalIdentity, RoutingTable, build_table

KEY = "alice-7f3a"
OTHER = "bob-91c2"
TRACE = "0af7651916cd43dd8448eb211c80319c"
TP = f"00-{TRACE}-b7ad6b7169203331-01"
TP_OTHER_TRACE = "00-11111111111111111111111111111111-b7ad6b7169203331-01"

CONFIG: dict[str, Any] = {
    "version": "hooks-test",
    "carriers": [
        {"kind": "header", "name": "x-forklane-routing-key"},
        {"kind": "baggage", "name": "forklane-routing-key"},
    ],
    "services": [
        {"name": "catalog", "endpoints": ["10.0.0.1:80"]},
        {"name": "orders", "endpoints": ["10.0.0.2:80"]},
    ],
    "forks": [
        {"routing_key": KEY, "service": "catalog", "endpoints": ["10.9.0.1:80"], "sandbox": "a"},
    ],
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _never() -> float:
    raise AssertionError("no split or mirror here: nothing may draw")


@pytest.fixture
def table() -> RoutingTable:
    snapshot = RoutingSnapshot.model_validate(CONFIG)
    return build_table(snapshot, LocalIdentity(service="orders", app="127.0.0.1:9"))


class Sidecar:
    """The inbound and outbound hooks of one sidecar, and a way to run a request through."""

    def __init__(self, table: RoutingTable, **settings: Any) -> None:
        self.table = table
        self.stats = Stats()
        self.clock = Clock()
        self.state = PropagationState(
            ProxySettings(service="orders", **settings), self.stats, clock=self.clock
        )
        self.inbound = self.state.hooks_for("inbound")
        self.outbound = self.state.hooks_for("outbound")

    def run(self, hooks: RequestHooks | None, listener: str, headers: dict[str, str],
            authority: str = "catalog") -> Decision:
        view = RequestView(listener, "GET", "/", authority, dict(headers))  # type: ignore[arg-type]
        decision = decide(view, self.table, _never)
        if hooks is not None:
            decision, span = hooks.after_decide(view, self.table, decision, _never)
            assert span is None
        assert view.headers == headers, "the view stays as received (injection needs it)"
        return decision

    def arrive(self, headers: dict[str, str]) -> Decision:
        return self.run(self.inbound, "inbound", headers, authority="orders")

    def leave(self, headers: dict[str, str], authority: str = "catalog") -> Decision:
        return self.run(self.outbound, "outbound", headers, authority)


def test_nothing_on_means_no_hook_at_all(table: RoutingTable) -> None:
    car = Sidecar(table)
    assert car.inbound is None and car.outbound is None
    assert car.state.memory is None and car.state.tracer is None


@pytest.mark.parametrize("settings", [{"trace_repair": True}, {"trace_gaps": True}])
def test_either_feature_keeps_a_trace_memory(table: RoutingTable, settings: dict[str, Any]) -> None:
    car = Sidecar(table, trace_memory_size=7, **settings)
    assert car.inbound is not None and car.outbound is not None
    assert car.state.memory is not None


def test_repair_restores_the_key_of_the_trace_and_picks_the_fork(table: RoutingTable) -> None:
    car = Sidecar(table, trace_repair=True)
    car.arrive({"x-forklane-routing-key": KEY, "traceparent": TP})
    decision = car.leave({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    assert decision.route.kind == "fork"
    assert decision.key.key == KEY and decision.key.carrier == RESTORED_CARRIER
    assert car.stats.keys_restored == {"orders": 1}
    assert car.stats.propagation_gaps == {}


def test_gap_is_counted_for_this_service_when_repair_is_off(table: RoutingTable) -> None:
    car = Sidecar(table, trace_gaps=True)
    car.arrive({"baggage": f"forklane-routing-key={KEY}", "traceparent": TP})
    decision = car.leave({"traceparent": TP})
    assert decision.route.kind == "baseline" and decision.key.key is None
    assert car.stats.propagation_gaps == {"orders": 1}
    assert car.stats.keys_restored == {}


@pytest.mark.parametrize(
    ("case", "inbound", "outbound"),
    [
        ("the key is still there", {"x-forklane-routing-key": KEY, "traceparent": TP},
         {"x-forklane-routing-key": KEY, "traceparent": TP}),
        ("another trace", {"x-forklane-routing-key": KEY, "traceparent": TP},
         {"traceparent": TP_OTHER_TRACE}),
        ("inbound had no traceparent", {"x-forklane-routing-key": KEY}, {"traceparent": TP}),
        ("inbound had no key", {"traceparent": TP}, {"traceparent": TP}),
        ("invalid inbound traceparent",
         {"x-forklane-routing-key": KEY, "traceparent": TP.replace("-01", "-zz")},
         {"traceparent": TP}),
        ("outbound without traceparent", {"x-forklane-routing-key": KEY, "traceparent": TP}, {}),
        ("two outbound traceparents are invalid",
         {"x-forklane-routing-key": KEY, "traceparent": TP}, {"traceparent": f"{TP},{TP}"}),
    ],
)
def test_no_repair_and_no_gap(
    table: RoutingTable, case: str, inbound: dict[str, str], outbound: dict[str, str]
) -> None:
    car = Sidecar(table, trace_repair=True, trace_gaps=True)
    car.arrive(inbound)
    decision = car.leave(outbound)
    expected_kind = "fork" if outbound.get("x-forklane-routing-key") == KEY else "baseline"
    assert decision.route.kind == expected_kind, case
    assert decision.key.carrier != RESTORED_CARRIER
    assert car.stats.keys_restored == {} and car.stats.propagation_gaps == {}


def test_a_key_present_is_never_overridden(table: RoutingTable) -> None:
    car = Sidecar(table, trace_repair=True)
    car.arrive({"x-forklane-routing-key": KEY, "traceparent": TP})
    decision = car.leave({"x-forklane-routing-key": OTHER, "traceparent": TP})
    assert decision.key.key == OTHER and decision.route.kind == "baseline"
    assert car.stats.keys_restored == {}


def test_conflicting_carriers_are_not_repaired(table: RoutingTable) -> None:
    car = Sidecar(table, trace_repair=True, trace_gaps=True)
    car.arrive({"x-forklane-routing-key": KEY, "traceparent": TP})
    decision = car.leave({"x-forklane-routing-key": KEY,
                          "baggage": f"forklane-routing-key={OTHER}", "traceparent": TP})
    assert decision.key.conflict and decision.route.kind == "baseline"
    assert car.stats.keys_restored == {} and car.stats.propagation_gaps == {}


def test_the_outbound_side_never_fills_the_memory(table: RoutingTable) -> None:
    car = Sidecar(table, trace_repair=True)
    car.leave({"x-forklane-routing-key": KEY, "traceparent": TP})
    assert car.state.memory is not None and len(car.state.memory) == 0
    assert car.leave({"traceparent": TP}).route.kind == "baseline"


def test_a_remembered_trace_expires(table: RoutingTable) -> None:
    car = Sidecar(table, trace_repair=True, trace_memory_ttl=30)
    car.arrive({"x-forklane-routing-key": KEY, "traceparent": TP})
    car.clock.now += 29.9
    assert car.leave({"traceparent": TP}).route.kind == "fork"
    car.clock.now += 0.2
    assert car.leave({"traceparent": TP}).route.kind == "baseline"
    assert car.stats.keys_restored == {"orders": 1}


def test_the_memory_is_bounded(table: RoutingTable) -> None:
    car = Sidecar(table, trace_repair=True, trace_memory_size=2)
    traces = [f"{i:032x}" for i in range(1, 4)]
    for trace in traces:
        car.arrive({"x-forklane-routing-key": KEY, "traceparent": f"00-{trace}-{'1' * 16}-01"})
    assert car.state.memory is not None and len(car.state.memory) == 2
    kinds = [car.leave({"traceparent": f"00-{t}-{'2' * 16}-01"}).route.kind for t in traces]
    assert kinds == ["baseline", "fork", "fork"], "the oldest trace is forgotten first"


def test_a_restored_key_to_a_service_without_fork_goes_to_the_baseline(
    table: RoutingTable,
) -> None:
    car = Sidecar(table, trace_repair=True)
    car.arrive({"x-forklane-routing-key": KEY, "traceparent": TP})
    decision = car.leave({"traceparent": TP}, authority="orders")
    assert decision.route.kind == "baseline"
    assert decision.key.key == KEY, "the key still travels on, to forks further down"
    assert car.stats.keys_restored == {"orders": 1}


def test_invalid_memory_settings_are_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ProxySettings(trace_memory_size=0)
    with pytest.raises(ValidationError):
        ProxySettings(trace_memory_ttl=0)


def test_tracing_rewrites_the_forwarded_traceparent(table: RoutingTable) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from forklane.proxy.forward.core import apply_span
    from forklane.proxy.tracing import ProxyTracer

    exporter = InMemorySpanExporter()
    tracer = ProxyTracer("orders", exporter)
    state = PropagationState(ProxySettings(service="orders"), Stats(), tracer=tracer)
    hooks = state.hooks_for("outbound")
    assert hooks is not None and state.memory is None
    view = RequestView("outbound", "GET", "/", "catalog",
                       {"x-forklane-routing-key": KEY, "traceparent": TP, "tracestate": "a=1"})
    kept = [(b"Host", b"catalog"), (b"TraceParent", TP.encode()), (b"tracestate", b"a=1")]
    decision, span = hooks.after_decide(view, table, decide(view, table, _never), _never)
    _, untouched = hooks.after_decide(view, table, decision, _never)
    assert span is not None and untouched is not None
    assert apply_span(kept, span) == [(b"Host", b"catalog"), (b"tracestate", b"a=1"),
                                      (b"traceparent", span.traceparent)]
    assert span.keeps_tracestate
    span.finish(200, None, None)
    untouched.finish(0, None, None)
    tracer.shutdown()
    finished = {s.context.span_id: s for s in exporter.get_finished_spans()}
    assert len(finished) == 2
    mine = finished[int(span.traceparent.split(b"-")[2], 16)]
    assert span.traceparent == f"00-{TRACE}-{mine.context.span_id:016x}-01".encode()
    assert mine.parent is not None and mine.parent.span_id == 0xB7AD6B7169203331
    assert mine.attributes is not None and mine.attributes["forklane.routing_key"] == KEY
    assert mine.attributes["http.response.status_code"] == 200
    reset = finished[int(untouched.traceparent.split(b"-")[2], 16)]
    assert not reset.status.is_ok, "a reset request's span is an error"
