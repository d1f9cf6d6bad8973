"""The routing decision as a table: (request view → route kind, destination, rule, key, carrier).

`decide()` is pure, so every case here is a value in and a value out; randomness comes in as
a scripted `draw` so the mirror and split cases say exactly which draw decided what.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forklane.proxy.routing import Decision, RequestView, decide, explain
from forklane.proxy.schema import RoutingSnapshot
from forklane.proxy.table import ROUTED_MARKER, LocalIdentity, RoutingTable, build_table

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

CONFIG: dict[str, Any] = {
    "version": "routing-test",
    "carriers": [
        {"kind": "header", "name": "x-forklane-routing-key"},
        {"kind": "baggage", "name": "forklane-routing-key"},
        {"kind": "baggage", "name": "sd-routing-key"},
        {"kind": "header", "name": "x-team-key"},
        {"kind": "tracestate", "name": "forklane"},
    ],
    "services": [
        {
            "name": "catalog",
            "authorities": ["catalog.default.svc.cluster.local", "catalog:8080", "[fd00::7]"],
            "endpoints": ["10.0.0.1:80"],
        },
        {"name": "pricing", "endpoints": ["10.0.0.2:80", "10.0.0.3:80"]},
        {"name": "shop", "endpoints": ["10.0.0.4:80"]},
    ],
    "forks": [
        {
            "routing_key": "alice-7f3a",
            "service": "pricing",
            "endpoints": ["10.1.0.1:80"],
            "fallback": "baseline",
            "sandbox": "alice",
        },
        {"routing_key": "bob-1", "service": "catalog", "endpoints": ["10.1.0.2:80"]},
        {"routing_key": "carol", "service": "shop", "endpoints": ["10.1.0.3:80"]},
    ],
    "splits": [
        {
            "name": "beta",
            "service": "shop",
            "match": {"headers": [{"name": "x-beta", "exact": "1"}]},
            "destinations": [{"name": "on", "weight": 1, "endpoints": ["10.3.0.1:80"]}],
        },
        {
            "name": "mobile",
            "service": "shop",
            "match": {"headers": [{"name": "user-agent", "prefix": "Mobile"}]},
            "destinations": [{"name": "m", "weight": 1, "endpoints": ["10.3.0.2:80"]}],
        },
        {
            "name": "debug",
            "service": "shop",
            "match": {"headers": [{"name": "x-debug", "present": True}]},
            "destinations": [{"name": "d", "weight": 1, "endpoints": ["10.3.0.3:80"]}],
        },
        {
            "name": "api-writes",
            "service": "shop",
            "match": {"path_prefix": "/api/", "methods": ["post", "PUT"]},
            "destinations": [{"name": "w", "weight": 1, "endpoints": ["10.3.0.4:80"]}],
        },
        {
            "name": "anonymous",
            "service": "shop",
            "match": {
                "path_prefix": "/anon",
                "headers": [{"name": "x-user", "present": False}],
            },
            "destinations": [{"name": "anon", "weight": 1, "endpoints": ["10.3.0.5:80"]}],
        },
        {
            "name": "ab",
            "service": "shop",
            "match": {"path_prefix": "/ab"},
            "destinations": [
                {"name": "a", "weight": 1, "endpoints": ["10.3.1.1:80"]},
                {"name": "b", "weight": 1, "endpoints": ["10.3.1.2:80"]},
            ],
        },
    ],
    "mirrors": [
        {
            "name": "shadow",
            "service": "pricing",
            "match": {"path_prefix": "/api", "methods": ["GET"]},
            "percent": 25,
            "endpoints": ["10.2.0.1:80"],
        },
        {
            "name": "audit",
            "service": "pricing",
            "match": {"headers": [{"name": "x-audit", "present": True}]},
            "percent": 100,
            "endpoints": ["10.2.0.2:80"],
        },
        {"name": "never", "service": "catalog", "percent": 0, "endpoints": ["10.2.0.3:80"]},
        {
            "name": "tap",
            "service": "shop",
            "match": {"path_prefix": "/ab"},
            "percent": 50,
            "endpoints": ["10.2.0.4:80"],
        },
    ],
}

SNAPSHOT = RoutingSnapshot.model_validate(CONFIG)
OUTBOUND = build_table(SNAPSHOT)
INBOUND = build_table(SNAPSHOT, LocalIdentity(service="pricing", app="127.0.0.1:8080"))


class Draws:
    """A scripted `draw`: hands out the given values in order and counts the calls."""

    def __init__(self, values: Iterable[float] = ()) -> None:
        self._values = list(values)
        self.calls = 0

    def __call__(self) -> float:
        if self.calls >= len(self._values):
            raise AssertionError(f"decide() drew more than the {len(self._values)} scripted draws")
        value = self._values[self.calls]
        self.calls += 1
        return value


def always(value: float) -> Callable[[], float]:
    return lambda: value


def view(
    authority: str = "",
    headers: dict[str, str] | None = None,
    *,
    listener: str = "outbound",
    method: str = "GET",
    path: str = "/",
    table: RoutingTable = OUTBOUND,
) -> RequestView:
    """A request view the way the protocol layer builds it: only the interesting headers."""
    given_headers = headers or {}
    unknown = set(given_headers) - table.interesting_headers
    assert not unknown, f"the protocol layer would not collect {unknown}"
    return RequestView(
        listener=listener,  # type: ignore[arg-type]
        method=method,
        path=path,
        authority=authority,
        headers=dict(given_headers),
    )


@dataclass(frozen=True)
class Case:
    id: str
    authority: str
    headers: dict[str, str]
    kind: str
    destination: str | None
    rule: str
    key: str | None = None
    carrier: str | None = None
    conflict: bool = False
    method: str = "GET"
    path: str = "/"
    extra: dict[str, Any] = field(default_factory=dict)


def _baseline(svc: str, authority: str, headers: dict[str, str] | None = None, **kw: Any) -> Case:
    return Case(
        id=kw.pop("id"),
        authority=authority,
        headers=headers or {},
        kind="baseline",
        destination=f"baseline/{svc}",
        rule=f"services[{svc}]",
        **kw,
    )


def _reject(authority: str, headers: dict[str, str] | None = None, **kw: Any) -> Case:
    return Case(
        id=kw.pop("id"),
        authority=authority,
        headers=headers or {},
        kind="reject",
        destination=None,
        rule="services",
        **kw,
    )


KEY_H = "x-forklane-routing-key"
ALICE_FORK = "fork/pricing@alice-7f3a"

OUTBOUND_CASES = [
    # --- routing keys --------------------------------------------------------------------
    _baseline("pricing", "pricing", id="no key: baseline"),
    Case(
        "key forks this service",
        "pricing",
        {KEY_H: "alice-7f3a"},
        "fork",
        ALICE_FORK,
        "forks[0]",
        "alice-7f3a",
        "header:x-forklane-routing-key",
    ),
    _baseline(
        "pricing",
        "pricing",
        {KEY_H: "bob-1"},
        key="bob-1",
        carrier="header:x-forklane-routing-key",
        id="key of another service's fork: baseline, key kept",
    ),
    Case(
        "the other service with that key: its fork",
        "catalog",
        {KEY_H: "bob-1"},
        "fork",
        "fork/catalog@bob-1",
        "forks[1]",
        "bob-1",
        "header:x-forklane-routing-key",
    ),
    _baseline(
        "pricing",
        "pricing",
        {KEY_H: "nobody-knows-me"},
        key="nobody-knows-me",
        carrier="header:x-forklane-routing-key",
        id="unknown key: baseline",
    ),
    _baseline("pricing", "pricing", {KEY_H: "-not-a-key"}, id="invalid key value is ignored"),
    _baseline("pricing", "pricing", {KEY_H: ""}, id="empty key header is ignored"),
    # --- carriers ------------------------------------------------------------------------
    Case(
        "baggage member",
        "pricing",
        {"baggage": "userid=7,forklane-routing-key=alice-7f3a;ttl=1"},
        "fork",
        ALICE_FORK,
        "forks[0]",
        "alice-7f3a",
        "baggage:forklane-routing-key",
    ),
    Case(
        "compatibility baggage member",
        "pricing",
        {"baggage": "sd-routing-key=alice-7f3a"},
        "fork",
        ALICE_FORK,
        "forks[0]",
        "alice-7f3a",
        "baggage:sd-routing-key",
    ),
    Case(
        "custom header carrier",
        "pricing",
        {"x-team-key": "alice-7f3a"},
        "fork",
        ALICE_FORK,
        "forks[0]",
        "alice-7f3a",
        "header:x-team-key",
    ),
    Case(
        "tracestate member next to a valid traceparent",
        "pricing",
        {"tracestate": "rojo=1,forklane=alice-7f3a", "traceparent": TP},
        "fork",
        ALICE_FORK,
        "forks[0]",
        "alice-7f3a",
        "tracestate:forklane",
    ),
    _baseline(
        "pricing",
        "pricing",
        {"tracestate": "forklane=alice-7f3a"},
        id="tracestate without traceparent is not a carrier",
    ),
    _baseline(
        "pricing",
        "pricing",
        {"baggage": "other-routing-key=alice-7f3a"},
        id="a baggage member that is not configured is not a carrier",
    ),
    Case(
        "carriers that agree: attributed to the first in priority",
        "pricing",
        {
            "baggage": "forklane-routing-key=alice-7f3a",
            "x-team-key": "alice-7f3a",
            KEY_H: "alice-7f3a",
        },
        "fork",
        ALICE_FORK,
        "forks[0]",
        "alice-7f3a",
        "header:x-forklane-routing-key",
    ),
    _baseline(
        "pricing",
        "pricing",
        {KEY_H: "alice-7f3a", "baggage": "forklane-routing-key=bob-1"},
        conflict=True,
        id="conflicting carriers: baseline with the conflict flag",
    ),
    _baseline(
        "pricing",
        "pricing",
        {KEY_H: "alice-7f3a", "x-team-key": "carol"},
        conflict=True,
        id="conflict between two header carriers",
    ),
    _baseline(
        "pricing",
        "pricing",
        {KEY_H: "alice-7f3a, bob-1"},
        conflict=True,
        id="one header carrier repeated with two keys",
    ),
    # --- authorities ---------------------------------------------------------------------
    _baseline("catalog", "catalog", id="authority: service name"),
    _baseline("catalog", "catalog:80", id="authority: name with :80"),
    _baseline("catalog", "catalog:8080", id="authority: configured host:port"),
    _baseline("catalog", "catalog:9999", id="authority: unknown port falls back to the bare host"),
    _baseline("catalog", "catalog.default.svc.cluster.local", id="authority: extra name"),
    _baseline(
        "catalog", "catalog.default.svc.cluster.local:80", id="authority: extra name with :80"
    ),
    _baseline("catalog", "[fd00::7]", id="authority: IPv6 literal"),
    _baseline("catalog", "[fd00::7]:80", id="authority: IPv6 literal with :80"),
    _baseline("catalog", "[fd00::7]:9000", id="authority: IPv6 literal, other port"),
    _reject("inventory", id="unknown authority: 404 no-route"),
    _reject("inventory:80", id="unknown authority with :80"),
    _reject("catalog.default", id="a prefix of a configured name is not that name"),
    _reject("", id="empty authority"),
    _reject(
        "inventory",
        {KEY_H: "alice-7f3a"},
        key="alice-7f3a",
        carrier="header:x-forklane-routing-key",
        id="a key never makes an unknown authority routable",
    ),
    # --- splits --------------------------------------------------------------------------
    Case(
        "split: header exact",
        "shop",
        {"x-beta": "1"},
        "split",
        "split/shop/beta/on",
        "splits[beta]",
    ),
    _baseline("shop", "shop", {"x-beta": "10"}, id="split: header exact is not a prefix"),
    Case(
        "split: header prefix",
        "shop",
        {"user-agent": "Mobile Safari"},
        "split",
        "split/shop/mobile/m",
        "splits[mobile]",
    ),
    _baseline("shop", "shop", {"user-agent": "NotMobile"}, id="split: header prefix is anchored"),
    Case(
        "split: header present (even empty)",
        "shop",
        {"x-debug": ""},
        "split",
        "split/shop/debug/d",
        "splits[debug]",
    ),
    Case(
        "split: path prefix and method",
        "shop",
        {},
        "split",
        "split/shop/api-writes/w",
        "splits[api-writes]",
        method="POST",
        path="/api/orders",
    ),
    Case(
        "split: methods are compared upper-case",
        "shop",
        {},
        "split",
        "split/shop/api-writes/w",
        "splits[api-writes]",
        method="PUT",
        path="/api/orders/7",
    ),
    _baseline("shop", "shop", method="GET", path="/api/orders", id="split: method not listed"),
    _baseline("shop", "shop", method="POST", path="/apiary", id="split: path prefix not matched"),
    Case(
        "split: header absent (present: false)",
        "shop",
        {},
        "split",
        "split/shop/anonymous/anon",
        "splits[anonymous]",
        path="/anon/home",
    ),
    _baseline("shop", "shop", {"x-user": "u1"}, path="/anon/home", id="split: present false fails"),
    Case(
        "split: the first matching split wins",
        "shop",
        {"x-debug": "1", "x-beta": "1"},
        "split",
        "split/shop/beta/on",
        "splits[beta]",
    ),
    Case(
        "split: the first matching split wins (order of config, not of headers)",
        "shop",
        {"x-debug": "1", "user-agent": "Mobile"},
        "split",
        "split/shop/mobile/m",
        "splits[mobile]",
    ),
    Case(
        "fork beats split",
        "shop",
        {"x-beta": "1", KEY_H: "carol"},
        "fork",
        "fork/shop@carol",
        "forks[2]",
        "carol",
        "header:x-forklane-routing-key",
    ),
    Case(
        "a conflicting key still gets the split",
        "shop",
        {"x-beta": "1", KEY_H: "carol", "x-team-key": "alice-7f3a"},
        "split",
        "split/shop/beta/on",
        "splits[beta]",
        conflict=True,
    ),
]


def _check(decision: Decision, case: Case) -> None:
    route = decision.route
    got = (
        route.kind,
        route.destination.name if route.destination else None,
        route.rule,
        decision.key.key,
        decision.key.carrier,
        decision.key.conflict,
    )
    want = (case.kind, case.destination, case.rule, case.key, case.carrier, case.conflict)
    assert got == want


@pytest.mark.parametrize("case", OUTBOUND_CASES, ids=[c.id for c in OUTBOUND_CASES])
def test_outbound(case: Case) -> None:
    v = view(case.authority, case.headers, method=case.method, path=case.path)
    decision = decide(v, OUTBOUND, always(0.99))
    _check(decision, case)
    if case.kind == "reject":
        assert (decision.route.status, decision.route.error) == (404, "no-route")


def test_rejected_request_explains_itself() -> None:
    body = explain(decide(view("inventory"), OUTBOUND, Draws()))
    assert body["kind"] == "reject"
    assert body["status"] == 404
    assert body["error"] == "no-route"
    assert body["destination"] is None
    assert body["endpoints"] == []
    assert body["mirrors"] == []


def test_fork_explanation_names_rule_reason_fallback_and_endpoints() -> None:
    decision = decide(view("pricing", {KEY_H: "alice-7f3a"}), OUTBOUND, Draws())
    assert explain(decision) == {
        "kind": "fork",
        "service": "pricing",
        "destination": ALICE_FORK,
        "endpoints": ["10.1.0.1:80"],
        "rule": "forks[0]",
        "reason": "routing key alice-7f3a forks pricing (sandbox alice)",
        "routing_key": "alice-7f3a",
        "carrier": "header:x-forklane-routing-key",
        "conflict": False,
        "fallback": "baseline/pricing",
        "mirrors": [],
        "status": None,
        "error": None,
    }


def test_fork_without_fallback_has_none() -> None:
    decision = decide(view("catalog", {KEY_H: "bob-1"}), OUTBOUND, Draws())
    assert decision.route.fallback is None
    assert explain(decision)["fallback"] is None


# --- mirrors ---------------------------------------------------------------------------


def _mirror_names(decision: Decision) -> list[str]:
    return [m.name for m in decision.mirrors]


@pytest.mark.parametrize(
    ("draws", "expected"),
    [
        ([0.0], ["mirror/pricing/shadow"]),
        ([0.2499], ["mirror/pricing/shadow"]),
        ([0.25], []),  # 25 %: draws in [0, 0.25) are sampled
        ([0.9], []),
    ],
)
def test_mirror_is_sampled_by_the_draw(draws: list[float], expected: list[str]) -> None:
    draw = Draws(draws)
    decision = decide(view("pricing", method="GET", path="/api/prices"), OUTBOUND, draw)
    assert decision.route.kind == "baseline"
    assert _mirror_names(decision) == expected
    assert draw.calls == 1  # the audit mirror's condition failed: no draw spent on it


def test_every_matching_mirror_is_sampled_independently() -> None:
    draw = Draws([0.9, 0.9999])
    decision = decide(
        view("pricing", {"x-audit": "yes"}, method="GET", path="/api/prices"), OUTBOUND, draw
    )
    assert _mirror_names(decision) == ["mirror/pricing/audit"]
    assert draw.calls == 2


def test_mirror_not_matching_the_method_spends_no_draw() -> None:
    draw = Draws()
    decision = decide(view("pricing", method="POST", path="/api/prices"), OUTBOUND, draw)
    assert decision.mirrors == ()
    assert draw.calls == 0


def test_zero_percent_mirror_is_never_sampled() -> None:
    decision = decide(view("catalog"), OUTBOUND, always(0.0))
    assert decision.mirrors == ()


def test_fork_decisions_are_never_mirrored() -> None:
    draw = Draws()  # any draw would fail the test
    decision = decide(
        view("pricing", {KEY_H: "alice-7f3a", "x-audit": "1"}, path="/api/prices"),
        OUTBOUND,
        draw,
    )
    assert decision.route.kind == "fork"
    assert decision.mirrors == ()


def test_rejected_requests_are_never_mirrored() -> None:
    decision = decide(view("nowhere", {"x-audit": "1"}), OUTBOUND, Draws())
    assert decision.mirrors == ()


@pytest.mark.parametrize(
    ("draws", "destination", "mirrors"),
    [
        ([0.1, 0.1], "split/shop/ab/a", ["mirror/shop/tap"]),
        ([0.7, 0.1], "split/shop/ab/b", ["mirror/shop/tap"]),
        ([0.7, 0.6], "split/shop/ab/b", []),
        ([0.1, 0.6], "split/shop/ab/a", []),
    ],
)
def test_split_decisions_are_mirrored_and_the_split_draws_first(
    draws: list[float], destination: str, mirrors: list[str]
) -> None:
    draw = Draws(draws)
    decision = decide(view("shop", path="/ab/page"), OUTBOUND, draw)
    assert decision.route.destination is not None
    assert decision.route.destination.name == destination
    assert _mirror_names(decision) == mirrors
    assert draw.calls == 2


# --- inbound ---------------------------------------------------------------------------

INBOUND_CASES = [
    Case("no key: local app", "", {}, "local", "local/pricing", "local"),
    Case(
        "key forking the local service: fork",
        "",
        {KEY_H: "alice-7f3a"},
        "fork",
        ALICE_FORK,
        "forks[0]",
        "alice-7f3a",
        "header:x-forklane-routing-key",
    ),
    Case(
        "key forking it, in baggage",
        "",
        {"baggage": "forklane-routing-key=alice-7f3a"},
        "fork",
        ALICE_FORK,
        "forks[0]",
        "alice-7f3a",
        "baggage:forklane-routing-key",
    ),
    Case(
        "key forking another service: local app",
        "",
        {KEY_H: "bob-1"},
        "local",
        "local/pricing",
        "local",
        "bob-1",
        "header:x-forklane-routing-key",
    ),
    Case(
        "unknown key: local app",
        "",
        {KEY_H: "zzz"},
        "local",
        "local/pricing",
        "local",
        "zzz",
        "header:x-forklane-routing-key",
    ),
    Case(
        "already routed by a sidecar: local app",
        "",
        {KEY_H: "alice-7f3a", ROUTED_MARKER: "1"},
        "local",
        "local/pricing",
        "local",
        "alice-7f3a",
        "header:x-forklane-routing-key",
    ),
    Case(
        "conflicting carriers: local app with the conflict flag",
        "",
        {KEY_H: "alice-7f3a", "baggage": "forklane-routing-key=bob-1"},
        "local",
        "local/pricing",
        "local",
        conflict=True,
    ),
    Case(
        "the authority does not matter inbound",
        "catalog",
        {KEY_H: "alice-7f3a"},
        "fork",
        ALICE_FORK,
        "forks[0]",
        "alice-7f3a",
        "header:x-forklane-routing-key",
    ),
]


@pytest.mark.parametrize("case", INBOUND_CASES, ids=[c.id for c in INBOUND_CASES])
def test_inbound(case: Case) -> None:
    draw = Draws()  # inbound never samples splits or mirrors
    v = view(case.authority, case.headers, listener="inbound", table=INBOUND, path="/api/x")
    decision = decide(v, INBOUND, draw)
    _check(decision, case)
    assert decision.mirrors == ()


def test_inbound_local_route_targets_the_local_app() -> None:
    decision = decide(view(listener="inbound", table=INBOUND), INBOUND, Draws())
    assert decision.route.destination is not None
    assert [e.address for e in decision.route.destination.endpoints] == ["127.0.0.1:8080"]
    assert decision.route.service == "pricing"


def test_inbound_without_local_identity_is_rejected() -> None:
    decision = decide(view(headers={KEY_H: "alice-7f3a"}, listener="inbound"), OUTBOUND, Draws())
    assert decision.route.kind == "reject"
    assert (decision.route.status, decision.route.error) == (404, "no-route")


def test_outbound_ignores_the_routed_marker() -> None:
    """The marker only stops re-routing at the next hop's inbound; egress still forks."""
    decision = decide(view("pricing", {KEY_H: "alice-7f3a", ROUTED_MARKER: "1"}), INBOUND, Draws())
    assert decision.route.kind == "fork"


# --- robustness ------------------------------------------------------------------------

_header_names = st.sampled_from(sorted(OUTBOUND.interesting_headers))
_values = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    authority=st.one_of(
        st.sampled_from(["catalog", "pricing", "shop", "shop:80", "[fd00::7]:1", "[", "]", ":"]),
        st.text(max_size=20),
    ),
    headers=st.dictionaries(_header_names, _values, max_size=6),
    listener=st.sampled_from(["inbound", "outbound"]),
    method=st.sampled_from(["GET", "POST", "PUT", "", "get"]),
    path=st.text(max_size=20),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_decide_never_raises_and_always_names_a_destination_or_a_status(
    authority: str,
    headers: dict[str, str],
    listener: str,
    method: str,
    path: str,
    draw: float,
) -> None:
    table = INBOUND if listener == "inbound" else OUTBOUND
    v = RequestView(listener, method, path, authority, headers)  # type: ignore[arg-type]
    decision = decide(v, table, always(draw))
    route = decision.route
    assert (route.destination is None) == (route.kind == "reject")
    if route.kind == "reject":
        assert route.status == 404
    if decision.key.conflict:
        assert decision.key.key is None
    # The same request with the same draw decides the same way: nothing hidden in the table.
    assert decide(v, table, always(draw)) == decision


def test_decide_survives_a_lone_surrogate_in_a_sticky_header() -> None:
    snap = RoutingSnapshot.model_validate(
        {
            "version": "1",
            "services": [{"name": "web", "endpoints": ["10.0.0.1:80"]}],
            "splits": [
                {
                    "name": "ab",
                    "service": "web",
                    "sticky": {"header": "x-user"},
                    "destinations": [
                        {"name": "a", "weight": 1, "endpoints": ["10.0.0.2:80"]},
                        {"name": "b", "weight": 1, "endpoints": ["10.0.0.3:80"]},
                    ],
                }
            ],
        }
    )
    table = build_table(snap)
    decision = decide(view("web", {"x-user": "\ud800"}, table=table), table, always(0.5))
    assert decision.route.kind == "split"
