"""The compiled routing table: its indexes, its split statistics and how it is swapped.

Split statistics use a seeded `random.Random` (non-sticky) or 10,000 synthetic users
(sticky), so every number here is reproducible; the bounds are the ones the data plane
promises: shares within ±1.5 points, and a weight change moves only the users it must.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

import pytest

from forklane.proxy.schema import RoutingSnapshot
from forklane.proxy.state import TableHolder
from forklane.proxy.table import (
    ROUTED_MARKER,
    ConfigError,
    LocalIdentity,
    RoutingTable,
    SplitRule,
    build_table,
)

USERS = [f"user-{i}" for i in range(10_000)]
TOLERANCE = 0.015  # ±1.5 points


def _snapshot(**overrides: Any) -> RoutingSnapshot:
    doc: dict[str, Any] = {
        "version": "t1",
        "services": [
            {
                "name": "catalog",
                "authorities": ["catalog.prod", "catalog:8080", "Shop.Example:80"],
                "endpoints": ["10.0.0.1:80", "[fd00::1]:8080"],
                "lb": "least_request",
                "timeouts": {"connect": 0.5, "request": 3, "idle": 30},
            },
            {"name": "pricing", "endpoints": ["10.0.0.2:80"]},
        ],
        "forks": [
            {
                "routing_key": "alice",
                "service": "pricing",
                "endpoints": ["10.1.0.1:80"],
                "fallback": "baseline",
                "sandbox": "alice-sb",
            },
            {"routing_key": "alice", "service": "catalog", "endpoints": ["10.1.0.2:80"]},
        ],
        "splits": [
            {
                "name": "canary",
                "service": "catalog",
                "match": {"headers": [{"name": "x-cohort", "present": True}]},
                "destinations": [{"name": "v2", "weight": 1, "endpoints": ["10.2.0.1:80"]}],
                "sticky": {"cookie": "uid"},
            }
        ],
        "mirrors": [
            {
                "name": "shadow",
                "service": "pricing",
                "match": {"headers": [{"name": "x-shadow", "exact": "on"}]},
                "percent": 12.5,
                "endpoints": ["10.3.0.1:80"],
            }
        ],
    }
    doc.update(overrides)
    return RoutingSnapshot.model_validate(doc)


def _split(weights: dict[str, int], sticky: dict[str, str] | None = None) -> SplitRule:
    """A single-split table for service `web`; returns its compiled rule."""
    split: dict[str, Any] = {
        "name": "ab",
        "service": "web",
        "destinations": [
            {"name": name, "weight": w, "endpoints": [f"10.9.0.{i + 1}:80"]}
            for i, (name, w) in enumerate(weights.items())
        ],
    }
    if sticky is not None:
        split["sticky"] = sticky
    snap = RoutingSnapshot.model_validate(
        {
            "version": "split",
            "services": [{"name": "web", "endpoints": ["10.9.9.9:80"]}],
            "splits": [split],
        }
    )
    return build_table(snap).services["web"].splits[0]


def _name(route: Any) -> str:
    return str(route.destination.name.rsplit("/", 1)[1])


def _assign(rule: SplitRule, users: list[str] = USERS) -> dict[str, str]:
    # A draw that would pick the *last* destination: proves sticky picks ignore the draw.
    return {u: _name(rule.pick({"x-user": u}, 0.999999)) for u in users}


def _shares(names: list[str]) -> dict[str, float]:
    counts = Counter(names)
    return {k: v / len(names) for k, v in counts.items()}


# --- indexes ---------------------------------------------------------------------------


def test_authorities_index_every_name_with_and_without_port_80() -> None:
    table = build_table(_snapshot())
    catalog = table.services["catalog"]
    for authority in (
        "catalog",
        "catalog:80",
        "catalog.prod",
        "catalog.prod:80",
        "catalog:8080",
        "shop.example:80",  # configured names are lower-cased at validation
        "shop.example",
    ):
        assert table.authorities[authority] is catalog, authority
    assert "catalog:8081" not in table.authorities  # decide() falls back to the host itself
    assert table.authorities["pricing:80"] is table.services["pricing"]


def test_destinations_carry_endpoints_balancing_and_timeouts() -> None:
    table = build_table(_snapshot())
    dest = table.services["catalog"].baseline.destination
    assert dest is not None
    assert dest.name == "baseline/catalog"
    assert [(e.host, e.port, e.address) for e in dest.endpoints] == [
        ("10.0.0.1", 80, "10.0.0.1:80"),
        ("fd00::1", 8080, "[fd00::1]:8080"),
    ]
    assert dest.lb == "least_request"
    assert (dest.timeouts.connect, dest.timeouts.request, dest.timeouts.idle) == (0.5, 3.0, 30.0)


def test_forks_are_indexed_per_service_by_key() -> None:
    table = build_table(_snapshot())
    pricing = table.services["pricing"].forks["alice"]
    catalog = table.services["catalog"].forks["alice"]
    assert pricing.destination is not None and catalog.destination is not None
    assert pricing.destination.name == "fork/pricing@alice"
    assert catalog.destination.name == "fork/catalog@alice"
    assert pricing.rule == "forks[0]" and catalog.rule == "forks[1]"
    assert pricing.reason == "routing key alice forks pricing (sandbox alice-sb)"
    assert catalog.reason == "routing key alice forks catalog"
    assert pricing.fallback is not None and pricing.fallback.name == "baseline/pricing"
    assert catalog.fallback is None


def test_mirrors_are_compiled_as_fractions() -> None:
    table = build_table(_snapshot())
    (mirror,) = table.services["pricing"].mirrors
    assert mirror.fraction == pytest.approx(0.125)
    assert mirror.destination.name == "mirror/pricing/shadow"
    assert table.services["catalog"].mirrors == ()


def test_interesting_headers_are_exactly_what_decide_may_read() -> None:
    table = build_table(_snapshot())
    assert table.interesting_headers == {
        "x-forklane-routing-key",
        "baggage",
        "traceparent",
        ROUTED_MARKER,
        "x-cohort",  # split match
        "cookie",  # sticky cookie
        "x-shadow",  # mirror match
    }
    assert table.interesting_raw == {h.encode() for h in table.interesting_headers}


def test_sticky_header_is_interesting() -> None:
    rule = _split({"a": 1, "b": 1}, sticky={"header": "x-user"})
    assert rule.sticky_header == "x-user"
    snap = RoutingSnapshot.model_validate(
        {
            "version": "1",
            "services": [{"name": "web", "endpoints": ["10.0.0.1:80"]}],
            "splits": [
                {
                    "name": "s",
                    "service": "web",
                    "sticky": {"header": "x-user"},
                    "destinations": [{"name": "a", "weight": 1, "endpoints": ["10.0.0.2:80"]}],
                }
            ],
        }
    )
    assert "x-user" in build_table(snap).interesting_headers


def test_table_is_frozen() -> None:
    table = build_table(_snapshot())
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.version = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.services["pricing"].baseline.rule = "x"  # type: ignore[misc]


def test_route_metrics_row_is_service_and_kind() -> None:
    table = build_table(_snapshot())
    assert table.services["pricing"].baseline.stat_key == "pricing\x1fbaseline"
    assert table.services["pricing"].forks["alice"].stat_key == "pricing\x1ffork"
    assert table.no_route.stat_key == "\x1freject"


def test_local_identity_builds_inbound_routes() -> None:
    table = build_table(_snapshot(), LocalIdentity(service="pricing", app="127.0.0.1:9000"))
    assert table.inbound_local is not None and table.inbound_local.destination is not None
    assert table.inbound_local.destination.endpoints[0].port == 9000
    assert set(table.inbound_forks) == {"alice"}
    assert table.inbound_forks["alice"] is table.services["pricing"].forks["alice"]
    assert build_table(_snapshot()).inbound_local is None


# --- split picks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [{"stable": 90, "canary": 10}, {"a": 50, "b": 30, "c": 20}, {"a": 1, "b": 1}],
)
def test_weighted_shares_within_one_and_a_half_points(weights: dict[str, int]) -> None:
    rule = _split(weights)
    rng = random.Random(20240611)
    shares = _shares([_name(rule.pick({}, rng.random())) for _ in range(10_000)])
    total = sum(weights.values())
    for name, w in weights.items():
        assert shares.get(name, 0.0) == pytest.approx(w / total, abs=TOLERANCE), name


@pytest.mark.parametrize(
    "weights",
    [{"stable": 90, "canary": 10}, {"a": 50, "b": 30, "c": 20}],
)
def test_sticky_shares_within_one_and_a_half_points(weights: dict[str, int]) -> None:
    rule = _split(weights, sticky={"header": "x-user"})
    shares = _shares(list(_assign(rule).values()))
    total = sum(weights.values())
    for name, w in weights.items():
        assert shares.get(name, 0.0) == pytest.approx(w / total, abs=TOLERANCE), name


def test_draw_boundaries_follow_the_cumulative_weights() -> None:
    rule = _split({"a": 25, "zero": 0, "b": 75})
    assert _name(rule.pick({}, 0.0)) == "a"
    assert _name(rule.pick({}, 0.2499)) == "a"
    assert _name(rule.pick({}, 0.25)) == "b"
    assert _name(rule.pick({}, 0.9999999999999999)) == "b"


def test_zero_weight_destination_is_never_picked() -> None:
    rule = _split({"off": 0, "on": 1}, sticky={"header": "x-user"})
    assert set(_assign(rule, USERS[:2000]).values()) == {"on"}
    rng = random.Random(1)
    assert {_name(rule.pick({}, rng.random())) for _ in range(2000)} == {"on"}
    assert _name(rule.pick({}, 0.0)) == "on"


def test_same_user_always_gets_the_same_destination() -> None:
    rule = _split({"stable": 50, "canary": 50}, sticky={"header": "x-user"})
    rng = random.Random(7)
    for user in USERS[:200]:
        first = _name(rule.pick({"x-user": user}, rng.random()))
        for _ in range(5):
            assert _name(rule.pick({"x-user": user}, rng.random())) == first


def test_stickiness_survives_a_rebuild_and_a_reordering_of_destinations() -> None:
    before = _assign(_split({"a": 50, "b": 30, "c": 20}, sticky={"header": "x-user"}))
    rebuilt = _assign(_split({"a": 50, "b": 30, "c": 20}, sticky={"header": "x-user"}))
    reordered = _assign(_split({"c": 20, "a": 50, "b": 30}, sticky={"header": "x-user"}))
    assert rebuilt == before
    assert reordered == before


def test_weight_change_90_10_to_80_20_moves_only_users_to_the_canary() -> None:
    before = _assign(_split({"stable": 90, "canary": 10}, sticky={"header": "x-user"}))
    after = _assign(_split({"stable": 80, "canary": 20}, sticky={"header": "x-user"}))
    moved = {u for u in USERS if before[u] != after[u]}
    assert all(before[u] == "stable" and after[u] == "canary" for u in moved)
    assert not any(before[u] == "canary" and after[u] == "stable" for u in USERS)
    assert len(moved) / len(USERS) == pytest.approx(0.10, abs=TOLERANCE)


def test_raising_one_of_three_weights_only_pulls_users_to_it() -> None:
    before = _assign(_split({"a": 50, "b": 30, "c": 20}, sticky={"header": "x-user"}))
    after = _assign(_split({"a": 50, "b": 30, "c": 40}, sticky={"header": "x-user"}))
    moved = [u for u in USERS if before[u] != after[u]]
    assert moved
    assert {after[u] for u in moved} == {"c"}
    assert {before[u] for u in moved} == {"a", "b"}
    # c's share grows from 20 % to 40/120: that many users, and no more, move.
    assert len(moved) / len(USERS) == pytest.approx(40 / 120 - 0.20, abs=TOLERANCE)


def test_removing_a_destination_keeps_everyone_else_in_place() -> None:
    before = _assign(_split({"a": 50, "b": 30, "c": 20}, sticky={"header": "x-user"}))
    after = _assign(_split({"a": 50, "b": 30}, sticky={"header": "x-user"}))
    assert all(after[u] == before[u] for u in USERS if before[u] != "c")


def test_sticky_cookie_is_read_among_other_cookies() -> None:
    rule = _split({"a": 1, "b": 1}, sticky={"cookie": "uid"})
    picks = {
        u: _name(rule.pick({"cookie": f"theme=dark; uid={u}; lang=en"}, 0.0)) for u in USERS[:500]
    }
    assert set(picks.values()) == {"a", "b"}  # users spread, whatever the draw says
    for u in USERS[:500]:
        assert _name(rule.pick({"cookie": f"uid={u}"}, 0.999)) == picks[u]


@pytest.mark.parametrize(
    "headers",
    [{}, {"cookie": ""}, {"cookie": "theme=dark"}, {"cookie": "xuid=1; uidx=2"}],
    ids=["no cookie header", "empty", "other cookie", "similar names"],
)
def test_missing_sticky_cookie_falls_back_to_the_draw(headers: dict[str, str]) -> None:
    rule = _split({"a": 1, "b": 1}, sticky={"cookie": "uid"})
    assert _name(rule.pick(headers, 0.1)) == "a"
    assert _name(rule.pick(headers, 0.9)) == "b"


def test_missing_sticky_header_falls_back_to_the_draw() -> None:
    rule = _split({"a": 1, "b": 1}, sticky={"header": "x-user"})
    assert _name(rule.pick({"x-other": "u1"}, 0.1)) == "a"
    assert _name(rule.pick({"x-other": "u1"}, 0.9)) == "b"


# --- swapping tables ---------------------------------------------------------------------


def test_holder_installs_a_table_and_tells_listeners() -> None:
    holder = TableHolder()
    seen: list[RoutingTable] = []
    holder.on_swap(seen.append)
    table = holder.apply(_snapshot(), source="file:routing.yaml")
    assert holder.table is table
    assert seen == [table]
    assert holder.source == "file:routing.yaml"
    assert holder.reload_failures == 0


def test_holder_keeps_the_old_table_when_a_snapshot_cannot_be_built() -> None:
    holder = TableHolder(LocalIdentity(service="pricing", app="127.0.0.1:9000"))
    seen: list[RoutingTable] = []
    holder.on_swap(seen.append)
    good = holder.apply(_snapshot(), source="file:a")
    # The same local identity with a broken app address: build_table fails on this snapshot.
    holder.local = LocalIdentity(service="pricing", app="no-port")
    with pytest.raises(ConfigError, match="no-port"):
        holder.apply(_snapshot(version="t2"), source="file:b")
    assert holder.table is good
    assert holder.table.version == "t1"
    assert holder.source == "file:a"
    assert holder.reload_failures == 1
    assert "no-port" in holder.last_error
    assert seen == [good]
    # A good snapshot afterwards clears the error and swaps.
    holder.local = LocalIdentity(service="pricing", app="127.0.0.1:9000")
    newer = holder.apply(_snapshot(version="t3"))
    assert holder.table is newer and holder.last_error == ""
    assert seen == [good, newer]


def test_reject_counts_a_snapshot_refused_before_apply() -> None:
    holder = TableHolder()
    holder.reject("routing.yaml: services.0.endpoints: too short")
    assert holder.table is None
    assert holder.reload_failures == 1
    assert holder.last_error.startswith("routing.yaml")
