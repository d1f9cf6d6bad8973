"""The message rule is the data plane's rule: the same inputs give the same key and the same
side as the proxy's own `extract_routing_key` and inbound `decide`, over generated headers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from forklane.messaging import Carrier, RoutesView, RunsAs, decide, read_routing_key
from forklane.messaging.carriers import normalise_headers
from forklane.proxy.context.carriers import build_carrier_plan, extract_routing_key
from forklane.proxy.routing import RequestView
from forklane.proxy.routing import decide as proxy_decide
from forklane.proxy.schema import Carrier as ProxyCarrier
from forklane.proxy.schema import RoutingSnapshot
from forklane.proxy.table import LocalIdentity, build_table

KEYS = ["alice", "bob", "a.b-c_d"]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CARRIER_SETS = [
    (("header", "x-forklane-routing-key"), ("baggage", "forklane-routing-key")),
    (("baggage", "forklane-routing-key"), ("header", "x-forklane-routing-key"),
     ("tracestate", "forklane")),
    (("header", "x-forklane-routing-key"), ("baggage", "forklane-routing-key"),
     ("baggage", "sd-routing-key"), ("tracestate", "sd-routing-key"),
     ("header", "uberctx-sd-routing-key")),
]

key_text = st.sampled_from([*KEYS, "", " alice ", "al ice", "-bad", "x" * 129, "ali%63e", "%zz"])
baggage_member = st.one_of(
    st.builds(lambda n, v, p: f"{n}={v}{p}",
              st.sampled_from(["forklane-routing-key", "sd-routing-key", "other", "bad key"]),
              key_text, st.sampled_from(["", ";prop", ";p=1", ";=x"])),
    st.sampled_from(["", "garbage", "k=v,w", "=x", "forklane-routing-key = bob"]),
)
tracestate_member = st.one_of(
    st.builds(lambda n, v: f"{n}={v}", st.sampled_from(["forklane", "sd-routing-key", "vendor"]),
              key_text),
    st.sampled_from(["", "Bad=1", "x=a b ", "x="]),
)
headers = st.fixed_dictionaries({}, optional={
    "x-forklane-routing-key": st.lists(key_text, min_size=1, max_size=3).map(",".join),
    "baggage": st.lists(baggage_member, min_size=1, max_size=4).map(",".join),
    "tracestate": st.one_of(st.lists(tracestate_member, min_size=1, max_size=4).map(",".join),
                            st.just(",".join(f"m{i}=1" for i in range(33)) + ",forklane=alice")),
    "traceparent": st.sampled_from([TRACEPARENT, "00-" + "0" * 32 + "-b7ad6b7169203331-01",
                                    "zz", f"{TRACEPARENT},{TRACEPARENT}"]),
    "uberctx-sd-routing-key": key_text,
})


def _proxy_carriers(pairs: tuple[tuple[str, str], ...]) -> tuple[ProxyCarrier, ...]:
    return tuple(ProxyCarrier(kind=k, name=n) for k, n in pairs)  # type: ignore[arg-type]


def _ours(pairs: tuple[tuple[str, str], ...]) -> tuple[Carrier, ...]:
    return tuple(Carrier(k, n) for k, n in pairs)  # type: ignore[arg-type]


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(CARRIER_SETS), headers)
def test_the_key_read_from_a_message_is_the_key_the_proxy_reads(
    carriers: tuple[tuple[str, str], ...], hdrs: dict[str, str]
) -> None:
    theirs = extract_routing_key(build_carrier_plan(_proxy_carriers(carriers)), hdrs)
    ours = read_routing_key(_ours(carriers), hdrs)
    assert (ours.key, ours.carrier, ours.conflict) == (theirs.key, theirs.carrier, theirs.conflict)


def _table(carriers: tuple[tuple[str, str], ...]):  # type: ignore[no-untyped-def]
    snapshot = RoutingSnapshot.model_validate({
        "version": "1",
        "carriers": [{"kind": k, "name": n} for k, n in carriers],
        "services": [{"name": "billing", "endpoints": ["10.0.0.1:80"]}],
        "forks": [{"routing_key": "alice", "service": "billing", "endpoints": ["10.9.0.1:80"],
                   "sandbox": "alice-sb"}],
    })  # fmt: skip
    return build_table(snapshot, LocalIdentity(service="billing", app="127.0.0.1:9"))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CARRIER_SETS), headers)
def test_the_side_a_message_goes_to_is_the_side_the_inbound_listener_picks(
    carriers: tuple[tuple[str, str], ...], hdrs: dict[str, str]
) -> None:
    table = _table(carriers)
    view = RequestView("inbound", "POST", "/", "billing", hdrs)
    picked = proxy_decide(view, table, lambda: 0.0)
    to_fork = picked.route.kind == "fork"
    routes = RoutesView("billing", {"alice": "alice-sb"}, _ours(carriers), "1")
    baseline = decide(routes, RunsAs("billing"), hdrs)
    fork = decide(routes, RunsAs("billing", "alice-sb"), hdrs)
    assert baseline.take is not to_fork
    assert fork.take is to_fork
    assert baseline.owner == fork.owner == ("alice-sb" if to_fork else None)


def test_verdicts_say_why() -> None:
    routes = RoutesView("billing", {"alice": "alice-sb"})
    base, fork = RunsAs("billing"), RunsAs("billing", "alice-sb")
    assert decide(routes, base, {}).reason == "no-key"
    assert decide(routes, base, {"x-forklane-routing-key": "zed"}).reason == "not-forked"
    conflict = decide(routes, fork, {"x-forklane-routing-key": "alice",
                                     "baggage": "forklane-routing-key=zed"})  # fmt: skip
    assert (conflict.take, conflict.reason, conflict.owner) == (False, "conflict", None)
    handed = decide(routes, base, {"x-forklane-routing-key": "alice"})
    assert (handed.take, handed.owner, handed.reason) == (False, "alice-sb", "forked")
    stuck = decide(routes, base, {"x-forklane-routing-key": "alice"}, hops=3)
    assert (stuck.take, stuck.reason) == (True, "hop-limit")


def test_message_headers_of_any_case_and_repeated_names_read_like_http_fields() -> None:
    hdrs = normalise_headers([("Baggage", "other=1"), ("BAGGAGE", "forklane-routing-key=alice"),
                              ("X-Forklane-Routing-Key", "alice")])  # fmt: skip
    assert hdrs["baggage"] == "other=1,forklane-routing-key=alice"
    assert read_routing_key(RoutesView("s").carriers, hdrs).key == "alice"
