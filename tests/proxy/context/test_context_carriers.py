"""Reading and writing the routing key across carriers, and the OpenTelemetry round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from forklane.proxy.context.baggage import decode_value, parse_baggage
from forklane.proxy.context.carriers import (
    COMPAT_CARRIERS,
    KeyResult,
    build_carrier_plan,
    extract_routing_key,
    extract_trace_id,
    inject_routing_key,
)
from forklane.proxy.context.tracestate import parse_tracestate
from forklane.proxy.schema import DEFAULT_CARRIERS, Carrier, RoutingSnapshot

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADER = Carrier(kind="header", name="x-forklane-routing-key")
BAG = Carrier(kind="baggage", name="forklane-routing-key")
STATE = Carrier(kind="tracestate", name="forklane")
ALL = build_carrier_plan((HEADER, BAG, STATE, *COMPAT_CARRIERS))


def test_plan_names_every_header_it_reads_or_writes() -> None:
    assert ALL.header_names == {
        "x-forklane-routing-key",
        "baggage",
        "tracestate",
        "traceparent",
        "uberctx-sd-routing-key",
        "ot-baggage-sd-routing-key",
    }
    assert build_carrier_plan(DEFAULT_CARRIERS).header_names == {
        "x-forklane-routing-key",
        "baggage",
        "traceparent",
    }


def test_schema_accepts_the_compatibility_carriers() -> None:
    snap = RoutingSnapshot.model_validate(
        {
            "version": "1",
            "carriers": [c.model_dump() for c in (*DEFAULT_CARRIERS, *COMPAT_CARRIERS)],
        }
    )
    assert len(snap.carriers) == 6


@pytest.mark.parametrize(
    ("headers", "key", "carrier"),
    [
        ({}, None, None),
        ({"traceparent": TP}, None, None),
        ({"x-forklane-routing-key": "abc"}, "abc", "header:x-forklane-routing-key"),
        ({"x-forklane-routing-key": "abc, abc"}, "abc", "header:x-forklane-routing-key"),
        ({"baggage": "a=1,forklane-routing-key=abc;p=1"}, "abc", "baggage:forklane-routing-key"),
        ({"baggage": "forklane-routing-key=%61bc"}, "abc", "baggage:forklane-routing-key"),
        ({"baggage": "sd-routing-key=abc"}, "abc", "baggage:sd-routing-key"),
        ({"tracestate": "forklane=abc", "traceparent": TP}, "abc", "tracestate:forklane"),
        (
            {"tracestate": "sd-routing-key=abc", "traceparent": TP},
            "abc",
            "tracestate:sd-routing-key",
        ),
        ({"uberctx-sd-routing-key": "abc"}, "abc", "header:uberctx-sd-routing-key"),
        ({"ot-baggage-sd-routing-key": "abc"}, "abc", "header:ot-baggage-sd-routing-key"),
        # agreement: attributed to the first carrier in priority order
        (
            {"baggage": "forklane-routing-key=abc", "x-forklane-routing-key": "abc"},
            "abc",
            "header:x-forklane-routing-key",
        ),
        # tracestate without a valid traceparent is discarded
        ({"tracestate": "forklane=abc"}, None, None),
        ({"tracestate": "forklane=abc", "traceparent": f"{TP},{TP}"}, None, None),
        # invalid values are ignored, not conflicts
        (
            {"x-forklane-routing-key": "-bad", "baggage": "forklane-routing-key=abc"},
            "abc",
            "baggage:forklane-routing-key",
        ),
        ({"x-forklane-routing-key": "a" * 129}, None, None),
        ({"baggage": "forklane-routing-key=a%20b"}, None, None),
        ({"baggage": "forklane-routing-key=abc%"}, None, None),
        ({"baggage": "forklane-routing-key=a+b"}, None, None),  # '+' stays '+', not a key char
        ({"baggage": "forklane-routing-key=abc x"}, None, None),  # malformed member
        ({"baggage": "xforklane-routing-key=abc"}, None, None),
    ],
)
def test_extract(headers: dict[str, str], key: str | None, carrier: str | None) -> None:
    assert extract_routing_key(ALL, headers) == KeyResult(key, carrier, False)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-forklane-routing-key": "abc", "baggage": "forklane-routing-key=xyz"},
        {"x-forklane-routing-key": "abc,xyz"},  # two header fields that disagree
        {"baggage": "forklane-routing-key=abc,forklane-routing-key=xyz"},
        {"baggage": "forklane-routing-key=abc", "tracestate": "forklane=xyz", "traceparent": TP},
        {"tracestate": "forklane=abc,forklane=xyz", "traceparent": TP},
        {"x-forklane-routing-key": "abc", "uberctx-sd-routing-key": "abd"},
    ],
)
def test_conflicting_keys_are_never_guessed(headers: dict[str, str]) -> None:
    assert extract_routing_key(ALL, headers) == KeyResult(None, None, True)


def test_only_configured_carriers_are_read() -> None:
    plan = build_carrier_plan(DEFAULT_CARRIERS)
    headers = {"uberctx-sd-routing-key": "abc", "tracestate": "forklane=abc", "traceparent": TP}
    assert extract_routing_key(plan, headers).key is None


def test_trace_id() -> None:
    assert extract_trace_id({"traceparent": TP}) == "0af7651916cd43dd8448eb211c80319c"
    assert extract_trace_id({"traceparent": "garbage"}) is None
    assert extract_trace_id({}) is None


def test_inject_writes_every_emitting_carrier_and_keeps_the_rest_in_order() -> None:
    headers = {
        "baggage": "a=1, b=%20x;p ,bad member,forklane-routing-key=old",
        "traceparent": TP,
        "tracestate": "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7",
    }
    out = inject_routing_key(ALL, "abc", headers)
    assert out == {
        "x-forklane-routing-key": "abc",
        "uberctx-sd-routing-key": "abc",
        "ot-baggage-sd-routing-key": "abc",
        "baggage": "forklane-routing-key=abc,sd-routing-key=abc,a=1,b=%20x;p",
        "tracestate": "forklane=abc,sd-routing-key=abc,congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    }


def test_inject_leaves_correct_headers_alone() -> None:
    headers = {
        "x-forklane-routing-key": "abc",
        "baggage": "z=1,forklane-routing-key=abc;ttl=3",
        "traceparent": TP,
        "tracestate": "rojo=1,forklane=abc",
    }
    plan = build_carrier_plan((HEADER, BAG, STATE))
    assert inject_routing_key(plan, "abc", headers) == {}


def test_inject_skips_tracestate_without_valid_traceparent() -> None:
    plan = build_carrier_plan((STATE,))
    assert inject_routing_key(plan, "abc", {"tracestate": "rojo=1"}) == {}
    assert inject_routing_key(plan, "abc", {"traceparent": "00-bad", "tracestate": "rojo=1"}) == {}
    assert inject_routing_key(plan, "abc", {"traceparent": TP}) == {"tracestate": "forklane=abc"}


def test_inject_honours_emit_false() -> None:
    plan = build_carrier_plan(
        (HEADER, Carrier(kind="baggage", name="forklane-routing-key", emit=False))
    )
    assert inject_routing_key(plan, "abc", {}) == {"x-forklane-routing-key": "abc"}


def test_inject_keeps_the_key_when_baggage_is_full() -> None:
    big = ",".join(f"k{i}=v" for i in range(64))
    out = inject_routing_key(build_carrier_plan((BAG,)), "abc", {"baggage": big})
    members = parse_baggage(out["baggage"])
    assert len(members) == 64
    assert members[0].text == "forklane-routing-key=abc"
    assert members[-1].key == "k62"


def test_inject_rejects_an_invalid_key() -> None:
    with pytest.raises(ValueError):
        inject_routing_key(ALL, "bad key", {})


def test_injected_headers_round_trip_through_opentelemetry() -> None:
    headers = {
        # No properties here: OpenTelemetry 1.45 folds them into the value.
        "baggage": "user=alice,note=caf%C3%A9",
        "traceparent": TP,
        "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    }
    out = {**headers, **inject_routing_key(ALL, "sb-1.x_y", headers)}
    ctx = W3CBaggagePropagator().extract(out)
    assert otel_baggage.get_all(ctx) == {
        "forklane-routing-key": "sb-1.x_y",
        "sd-routing-key": "sb-1.x_y",
        "user": "alice",
        "note": "caf\u00e9",
    }
    ours = {m.key: decode_value(m.value) for m in parse_baggage(out["baggage"])}
    assert ours == otel_baggage.get_all(ctx)
    ctx = TraceContextTextMapPropagator().extract(out)
    state = trace.get_current_span(ctx).get_span_context().trace_state
    assert list(state.items()) == [(m.key, m.value) for m in parse_tracestate(out["tracestate"])]
    assert state["forklane"] == "sb-1.x_y"
    assert state["congo"] == "t61rcWkgMzE"


keys = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,20}", fullmatch=True)
header_values = st.text(alphabet=st.characters(codec="latin-1"), max_size=300)


@given(
    key=keys,
    bag=st.none() | header_values,
    state=st.none() | header_values,
    parent=st.sampled_from([None, TP, f"{TP},{TP}", "junk"]),
    header=st.none() | header_values,
)
def test_inject_is_idempotent_header_safe_and_extractable(
    key: str, bag: str | None, state: str | None, parent: str | None, header: str | None
) -> None:
    given_headers = {
        name: value
        for name, value in (
            ("baggage", bag),
            ("tracestate", state),
            ("traceparent", parent),
            ("x-forklane-routing-key", header),
        )
        if value is not None
    }
    extract_routing_key(ALL, given_headers)  # never raises on anything
    out = inject_routing_key(ALL, key, given_headers)
    for value in out.values():
        assert not any(c in value for c in "\r\n\x00")
    forwarded = {**given_headers, **out}
    assert inject_routing_key(ALL, key, forwarded) == {}
    assert extract_routing_key(ALL, forwarded) == KeyResult(
        key, "header:x-forklane-routing-key", False
    )


def test_a_percent_encoded_tracestate_value_is_not_the_key() -> None:
    plan = build_carrier_plan((STATE,))
    headers = {"traceparent": TP, "tracestate": "forklane=%73b-1"}
    assert extract_routing_key(plan, headers).key is None
    assert inject_routing_key(plan, "sb-1", headers) == {"tracestate": "forklane=sb-1"}
