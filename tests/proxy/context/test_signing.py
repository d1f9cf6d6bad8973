"""Signed routing keys in the pure core: only `KEY.SIGNATURE` under a current secret, before
the key's expiry, names a fork; every other key is as good as none, and the decision says
why. Every carrier, both listeners, rotation, and the edge's stripping."""

from __future__ import annotations

from typing import Any

import pytest

from forklane.proxy import schema
from forklane.proxy.context.carriers import strip_routing_key
from forklane.proxy.context.signing import KeyVerifier, sign_routing_key
from forklane.proxy.forward.core import TableFields, route
from forklane.proxy.metrics import Stats
from forklane.proxy.routing import RequestView, decide
from forklane.proxy.table import LocalIdentity, RoutingTable, build_table

OLD, NEW = "old-secret-0123456789", "new-secret-0123456789"
KEY = "k" * 32
NOW = 1_800_000_000
EXPIRES = NOW + 600


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _snapshot(secrets: tuple[str, ...] | None, expires_at: int | None = EXPIRES) -> Any:
    return schema.RoutingSnapshot.model_validate({
        "version": "1",
        "carriers": [
            {"kind": "header", "name": "x-forklane-routing-key"},
            {"kind": "baggage", "name": "forklane-routing-key"},
            {"kind": "tracestate", "name": "forklane"},
        ],
        "services": [{"name": "web", "endpoints": ["127.0.0.1:9"]}],
        "forks": [{"routing_key": KEY, "service": "web", "endpoints": ["127.0.0.1:10"],
                   "sandbox": "alice", "tenant": "team-a", "expires_at": expires_at}],
        **({"signing": {"secrets": list(secrets)}} if secrets else {}),
    })


def _table(secrets: tuple[str, ...] | None = (NEW, OLD), clock: Clock | None = None,
           edge: bool = False, expires_at: int | None = EXPIRES) -> RoutingTable:
    return build_table(
        _snapshot(secrets, expires_at), LocalIdentity(service="web", app="127.0.0.1:11"),
        edge=edge, clock=clock or Clock(NOW),
    )


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _carrier(kind: str, key: str) -> dict[str, str]:
    if kind == "header":
        return {"x-forklane-routing-key": key}
    if kind == "baggage":
        return {"baggage": f"forklane-routing-key={key},other=1"}
    return {"traceparent": TRACEPARENT, "tracestate": f"forklane={key},vendor=x"}


def signed(secret: str = NEW, **claims: Any) -> str:
    c = {"sandbox": "alice", "tenant": "team-a", "expires_at": EXPIRES, **claims}
    return sign_routing_key(secret, KEY, c["sandbox"], c["tenant"], c["expires_at"])


CARRIERS = ["header", "baggage", "tracestate"]
FORGED = {
    "unsigned": KEY,
    "wrong-secret": signed("another-secret-0123456789"),
    "other-sandbox": signed(sandbox="bob"),
    "other-tenant": signed(tenant="team-b"),
    "longer-expiry": signed(expires_at=EXPIRES + 3600),
    "no-expiry": signed(expires_at=None),
    "truncated": signed()[:-1],
    "flipped": signed()[:-1] + ("0" if signed()[-1] != "0" else "1"),
    "uppercase": signed().upper(),
}


def _decide(table: RoutingTable, headers: dict[str, str], listener: str = "outbound") -> Any:
    authority = "web"
    return decide(RequestView(listener, "GET", "/", authority, headers),  # type: ignore[arg-type]
                  table, lambda: 0.5)


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
@pytest.mark.parametrize("kind", CARRIERS)
def test_a_validly_signed_key_reaches_the_fork(kind: str, listener: str) -> None:
    for secret in (NEW, OLD):  # during a rotation both are accepted
        decision = _decide(_table(), _carrier(kind, signed(secret)), listener)
        assert decision.route.kind == "fork", (kind, secret)
        assert decision.rejected is None


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
@pytest.mark.parametrize("kind", CARRIERS)
@pytest.mark.parametrize("forgery", sorted(FORGED))
def test_a_forged_key_never_reaches_the_fork(kind: str, forgery: str, listener: str) -> None:
    decision = _decide(_table(), _carrier(kind, FORGED[forgery]), listener)
    assert decision.route.kind in ("baseline", "local"), (kind, forgery)
    unsigned = ("unsigned", "uppercase", "truncated")  # no `.` + 32 lowercase hex digits
    assert decision.rejected == ("unsigned" if forgery in unsigned else "bad-signature")


@pytest.mark.parametrize("kind", CARRIERS)
def test_an_expired_key_goes_to_the_baseline(kind: str) -> None:
    clock = Clock(EXPIRES - 1)
    table = _table(clock=clock)
    assert _decide(table, _carrier(kind, signed())).route.kind == "fork"
    clock.now = EXPIRES
    decision = _decide(table, _carrier(kind, signed()))
    assert decision.route.kind == "baseline" and decision.rejected == "expired"


def test_a_dropped_secret_no_longer_verifies() -> None:
    table = _table(secrets=(NEW,))
    assert _decide(table, _carrier("header", signed(OLD))).rejected == "bad-signature"
    assert _decide(table, _carrier("header", signed(NEW))).route.kind == "fork"


def test_without_signing_any_key_routes_as_before() -> None:
    decision = _decide(_table(secrets=None), _carrier("header", KEY))
    assert decision.route.kind == "fork" and decision.rejected is None


def test_an_edge_without_signing_trusts_no_key() -> None:
    decision = _decide(_table(secrets=None, edge=True), _carrier("header", KEY))
    assert decision.route.kind == "baseline" and decision.rejected == "unsigned"


def test_the_verifier_precomputes_every_accepted_form() -> None:
    verifier = KeyVerifier.build([NEW, OLD], {}, Clock(NOW))
    assert verifier.verify(signed()) == (None, "bad-signature")
    assert len(_table().verifier.accepted) == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", CARRIERS)
def test_an_edge_strips_a_key_it_cannot_verify_and_counts_it(kind: str) -> None:
    table = _table(edge=True)
    stats = Stats()
    fields = TableFields(table, None)
    headers = _carrier(kind, FORGED["wrong-secret"])
    decision, (replaced, updates), _ = route(
        "outbound", fields, table, b"GET", b"/", b"web", dict(headers), lambda: 0.5, None, stats
    )
    assert decision.route.kind == "baseline"
    assert stats.keys_rejected == {"bad-signature": 1}
    written = dict(updates)
    for name in headers:
        if name == "traceparent":
            continue
        assert name.encode() in replaced
        assert FORGED["wrong-secret"].encode() not in written.get(name.encode(), b"")
    if kind == "baggage":
        assert written[b"baggage"] == b"other=1"
    if kind == "tracestate":
        assert written[b"tracestate"] == b"vendor=x"


def test_an_edge_forwards_a_valid_key_in_every_carrier() -> None:
    table = _table(edge=True)
    decision, (_, updates), _ = route(
        "outbound", TableFields(table, None), table, b"GET", b"/", b"web",
        {"x-forklane-routing-key": signed(), "traceparent": TRACEPARENT}, lambda: 0.5, None,
        Stats(),
    )
    assert decision.route.kind == "fork"
    written = dict(updates)
    assert signed().encode() in written[b"baggage"]
    assert signed().encode() in written[b"tracestate"]


def test_verdicts_are_not_cached_past_expiry() -> None:
    clock = Clock(EXPIRES - 1)
    table = _table(clock=clock)
    fields, stats = TableFields(table, None), Stats()
    headers = {"x-forklane-routing-key": signed()}
    first, _, _ = route("outbound", fields, table, b"GET", b"/", b"web", dict(headers),
                        lambda: 0.5, None, stats)
    clock.now = EXPIRES + 1
    second, _, _ = route("outbound", fields, table, b"GET", b"/", b"web", dict(headers),
                         lambda: 0.5, None, stats)
    assert first.route.kind == "fork" and second.route.kind == "baseline"
    assert stats.keys_rejected == {"expired": 1}


def test_strip_leaves_other_members() -> None:
    plan = _table().carriers
    out = strip_routing_key(plan, {"x-forklane-routing-key": KEY,
                                   "baggage": "a=1,forklane-routing-key=x"})
    assert out == {"x-forklane-routing-key": "", "baggage": "a=1"}


def test_forks_of_one_key_must_agree_on_the_signed_claims() -> None:
    doc = _snapshot((NEW,)).model_dump(mode="json")
    doc["services"] = [*doc["services"], {"name": "api", "endpoints": ["127.0.0.1:9"]}]
    doc["forks"] = [*doc["forks"], {**doc["forks"][0], "service": "api", "tenant": "team-b"}]
    with pytest.raises(ValueError, match="signed for one sandbox"):
        schema.RoutingSnapshot.model_validate(doc)
