"""The forwarding core: field classification, the routing-outcome cache, forwarded fields."""

from __future__ import annotations

from typing import Any

import pytest

from forklane.proxy.forward import core
from forklane.proxy.metrics import Stats
from forklane.proxy.schema import RoutingSnapshot
from forklane.proxy.table import LocalIdentity, RoutingTable, build_table

KEY = "alice-1"
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def table(**extra: Any) -> RoutingTable:
    doc: dict[str, Any] = {
        "version": "t1",
        "services": [
            {"name": "catalog", "endpoints": ["10.0.0.1:80"]},
            {"name": "cart", "endpoints": ["10.0.0.2:80"]},
        ],
        "forks": [{"routing_key": KEY, "service": "catalog", "endpoints": ["10.0.1.1:80"]}],
        "splits": [{"name": "canary", "service": "cart", "destinations": [
            {"name": "a", "endpoints": ["10.0.2.1:80"], "weight": 50},
            {"name": "b", "endpoints": ["10.0.2.2:80"], "weight": 50}]}],
        **extra,
    }
    return build_table(RoutingSnapshot.model_validate(doc), LocalIdentity("catalog", "127.0.0.1:9"))


class Draws:
    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.values.pop(0) if self.values else 0.5


def route(fields: core.TableFields, t: RoutingTable, authority: str, view: dict[str, str],
          draw: Draws | None = None, listener: str = "outbound") -> Any:
    return core.route(listener, fields, t, b"GET", b"/", authority.encode(), view,  # type: ignore[arg-type]
                      draw or Draws(), None, Stats())


def test_a_fork_decision_is_cached_per_key_and_not_per_trace() -> None:
    t = table()
    fields = core.TableFields(t, None)
    first = route(fields, t, "catalog", {"x-forklane-routing-key": KEY, "traceparent": TP})
    other_trace = TP.replace("4bf9", "5bf9")
    second = route(fields, t, "catalog", {"x-forklane-routing-key": KEY,
                                          "traceparent": other_trace})
    assert first[0].route.kind == "fork"
    assert second[0] is first[0], "the same outcome, whatever the trace"
    assert len(fields.cache) == 1
    baseline = route(fields, t, "catalog", {})
    assert baseline[0].route.kind == "baseline" and len(fields.cache) == 2


def test_a_split_is_never_cached_so_every_request_draws() -> None:
    t = table()
    fields = core.TableFields(t, None)
    draws = Draws(0.1, 0.9, 0.1)
    picked = [route(fields, t, "cart", {}, draws)[0].route.destination.name for _ in range(3)]
    assert picked == ["split/cart/canary/a", "split/cart/canary/b", "split/cart/canary/a"]
    assert draws.calls == 3 and not fields.cache


def test_a_mirrored_service_is_never_cached() -> None:
    t = table(mirrors=[{"name": "shadow", "service": "catalog", "percent": 100,
                        "endpoints": ["10.0.9.9:80"]}])
    fields = core.TableFields(t, None)
    for _ in range(2):
        decision = route(fields, t, "catalog", {})[0]
        assert [m.name for m in decision.mirrors] == ["mirror/catalog/shadow"]
    assert not fields.cache


def test_a_new_table_starts_with_an_empty_cache() -> None:
    old = table()
    fields = core.TableFields(old, None)
    route(fields, old, "catalog", {"x-forklane-routing-key": KEY})
    new = table(forks=[])
    fresh = core.TableFields(new, None)
    assert route(fresh, new, "catalog", {"x-forklane-routing-key": KEY})[0].route.kind == "baseline"


def test_tracestate_carriers_make_the_traceparents_validity_part_of_the_key() -> None:
    t = table(carriers=[{"kind": "tracestate", "name": "forklane"}])
    fields = core.TableFields(t, None)
    assert fields.tp_matters
    valid = route(fields, t, "catalog", {"tracestate": f"forklane={KEY}", "traceparent": TP})
    invalid = route(fields, t, "catalog", {"tracestate": f"forklane={KEY}", "traceparent": "x"})
    assert valid[0].route.kind == "fork"
    assert invalid[0].route.kind == "baseline", "tracestate means nothing without traceparent"


def test_a_sidecar_as_the_last_via_hop_means_deliver_locally() -> None:
    t = table()
    fields = core.TableFields(t, None)
    view = {"x-forklane-routing-key": KEY}
    d = core.route("inbound", fields, t, b"GET", b"/", b"catalog", view, Draws(), None, Stats(),
                   b"1.1 edge, 1.1 forklane")
    assert d[0].route.kind == "local"
    again = core.route("inbound", fields, t, b"GET", b"/", b"catalog",
                       {"x-forklane-routing-key": KEY}, Draws(), None, Stats(), b"1.1 edge")
    assert again[0].route.kind == "fork", "the mark is part of the cache key"


def test_inbound_decisions_are_cached() -> None:
    t = table()
    fields = core.TableFields(t, None)
    d = route(fields, t, "anything", {"x-forklane-routing-key": KEY}, listener="inbound")
    assert d[0].route.kind == "fork" and len(fields.cache) == 1


def test_injection_writes_every_emitting_carrier_and_replaces_the_old_fields() -> None:
    t = table(carriers=[{"kind": "header", "name": "x-forklane-routing-key"},
                        {"kind": "baggage", "name": "forklane-routing-key"}])
    fields = core.TableFields(t, None)
    decision, injection, _ = route(fields, t, "catalog", {"x-forklane-routing-key": KEY})
    assert decision.route.kind == "fork"
    out: list[tuple[bytes, bytes]] = []
    hop = core.Hop(b"10.1.1.1", b"http", b"1.1 forklane")
    kept = [(b"Host", b"catalog"), (b"Baggage", b"a=1")]
    core.forwarded_fields(out, kept, injection, hop, None, False, False, b"catalog", None)
    assert out == [
        (b"Host", b"catalog"),
        (b"baggage", b"forklane-routing-key=alice-1"),
        (b"x-forwarded-for", b"10.1.1.1"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"catalog"),
        (b"via", b"1.1 forklane"),
    ]


def test_forwarded_fields_extend_what_the_client_sent() -> None:
    out: list[tuple[bytes, bytes]] = []
    hop = core.Hop(b"10.1.1.1", b"https", b"2 forklane")
    core.forwarded_fields(out, [], core._NO_INJECTION, hop, b"192.0.2.1", True, True,
                          b"catalog", b"1.1 edge")
    assert out == [(b"x-forwarded-for", b"192.0.2.1, 10.1.1.1"), (b"via", b"1.1 edge, 2 forklane")]


@pytest.mark.parametrize(("name", "joined"), [("cookie", "a=1; b=2"), ("x-user", "a=1,b=2")])
def test_repeated_fields_join_the_same_way_on_both_protocols(name: str, joined: str) -> None:
    view: dict[str, str] = {}
    core.join_view(view, name, "a=1")
    core.join_view(view, name, "b=2")
    assert view == {name: joined}


def test_lookalikes_of_our_fields_are_recognised() -> None:
    raw = table().interesting_raw
    assert core.lookalike(b"x_forklane_routing_key", raw)
    assert core.lookalike(b"x_forklane_anything", raw)
    assert not core.lookalike(b"x_custom_thing", raw)


def test_the_cache_is_bounded() -> None:
    t = table()
    fields = core.TableFields(t, None)
    for i in range(core.CACHE_SIZE + 10):
        route(fields, t, "catalog", {"x-forklane-routing-key": f"k{i}"})
    assert len(fields.cache) <= core.CACHE_SIZE


FAULTS = [{"routing_key": KEY, "service": "catalog", "percent": 30, "abort_status": 503},
          {"routing_key": KEY, "service": "cart", "delay_ms": 250}]


def test_faults_never_touch_keyless_requests() -> None:
    t = table(faults=FAULTS)
    fields = core.TableFields(t, None)
    for authority, split_draws in (("catalog", 0), ("cart", 1)):
        for _ in range(3):  # decided, then from the cache
            draws = Draws(0.0, 0.0)  # a draw for the fault would always hit
            decision = route(fields, t, authority, {}, draws)[0]
            assert decision.route.kind != "reject" and decision.route.delay == 0
            assert draws.calls <= split_draws  # not even a draw for the fault


def test_a_fault_is_drawn_per_request_behind_the_cache() -> None:
    t = table(faults=FAULTS)
    fields = core.TableFields(t, None)
    view = {"x-forklane-routing-key": KEY}
    hit = route(fields, t, "catalog", dict(view), Draws(0.1))[0]
    assert hit.route.kind == "reject" and hit.route.error == "fault-injected"
    assert hit.route.status == 503 and hit.route.rule == "faults[0]"
    miss = route(fields, t, "catalog", dict(view), Draws(0.9))[0]  # from the cache this time
    assert miss.route.kind == "fork"
    assert len(fields.cache) == 1 and next(iter(fields.cache.values()))[0].route.kind == "fork"


def test_a_delay_keeps_the_route_and_holds_it() -> None:
    t = table(faults=FAULTS)
    fields = core.TableFields(t, None)
    decision = route(fields, t, "cart", {"x-forklane-routing-key": KEY}, Draws(0.99, 0.5))[0]
    assert decision.route.kind == "split" and decision.route.delay == 0.25
    assert decision.route.rule.endswith("+faults[1]")


def test_an_inbound_listener_leaves_a_routed_request_alone() -> None:
    t = table(faults=[{"routing_key": KEY, "service": "catalog", "abort_status": 500}])
    fields = core.TableFields(t, None)
    routed = route(fields, t, "catalog", {"x-forklane-routing-key": KEY},
                   listener="inbound")
    assert routed[0].route.kind == "reject"  # straight from outside the mesh: drawn here
    via_sidecar = core.route("inbound", fields, t, b"GET", b"/", b"catalog",
                             {"x-forklane-routing-key": KEY}, Draws(), None, Stats(),
                             b"1.1 forklane")
    assert via_sidecar[0].route.kind != "reject"
