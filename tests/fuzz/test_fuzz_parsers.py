"""The context parsers (`proxy/context/`) and the snapshot decoder under generated input.

What must hold for every input:
- the W3C parsers and the carrier extraction never raise, whatever the header text;
- what the proxy would write into a forwarded header is printable ASCII (no CR, LF, NUL);
- the push decoder either yields a snapshot that builds into a routing table, or raises one of
  its two documented errors (`MessageError` for garbage, `SnapshotRejected` to NACK); a
  snapshot it accepts never fails later while the table is built.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forklane.proxy.context.baggage import parse_baggage, serialize_baggage
from forklane.proxy.context.carriers import (
    COMPAT_CARRIERS,
    build_carrier_plan,
    extract_routing_key,
    extract_trace_id,
    inject_routing_key,
)
from forklane.proxy.context.traceparent import parse_traceparent
from forklane.proxy.context.tracestate import parse_tracestate, serialize_tracestate
from forklane.proxy.push_messages import MessageError, SnapshotRejected, decode_response
from forklane.proxy.schema import DEFAULT_CARRIERS, Carrier
from forklane.proxy.table import ConfigError, build_table
from tests.fuzz.conftest import FUZZ, seeds

PLAN = build_carrier_plan((*DEFAULT_CARRIERS, Carrier(kind="tracestate", name="forklane"),
                           *COMPAT_CARRIERS))
NAMES = ["x-forklane-routing-key", "baggage", "tracestate", "traceparent",
         "uberctx-sd-routing-key", "ot-baggage-sd-routing-key", "other"]
PIECES = ["forklane-routing-key=", "forklane=", "sd-routing-key=", "k1", "%20", "%zz", "%",
          ";p=1", ",", "=", " ", "\t", "00-", "0af7651916cd43dd8448eb211c80319c",
          "-b7ad6b7169203331-01", "ff-", "@", "a" * 300, "\x00", "\r\n", "é", "+"]
header_text = st.lists(st.sampled_from(PIECES) | st.text(max_size=20), max_size=20).map("".join)


def printable(text: str) -> bool:
    return all(32 <= ord(c) < 127 or c == "\t" for c in text)


@FUZZ
@given(headers=st.dictionaries(st.sampled_from(NAMES), header_text, max_size=6),
       key=st.sampled_from(["k1", "abc-1.2_3", "K" * 128]))
def test_carriers_never_raise_and_write_clean_headers(headers: dict[str, str], key: str) -> None:
    extract_routing_key(PLAN, headers)
    extract_trace_id(headers)
    for name, value in inject_routing_key(PLAN, key, headers).items():
        assert printable(name) and printable(value), (name, value)


@FUZZ
@given(value=header_text)
def test_w3c_parsers_never_raise(value: str) -> None:
    parse_traceparent(value)
    members = parse_baggage(value)
    assert printable(serialize_baggage(members))
    states = parse_tracestate(value)
    assert len(states) <= 32
    assert printable(serialize_tracestate(states))


def _mutate(doc: Any, path: list[int], leaf: Any) -> Any:
    """`doc` with the node chosen by `path` (indexes into its children) replaced by `leaf`."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return leaf
    items = list(doc.items()) if isinstance(doc, dict) else list(enumerate(doc))
    key, child = items[path[0] % len(items)]
    new = _mutate(child, path[1:], leaf)
    if isinstance(doc, dict):
        return {**doc, key: new}
    out = list(doc)
    out[key] = new
    return out


json_leaf = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 70000) | st.floats(allow_nan=False)
    | st.sampled_from(["", "svc", "10.0.0.1:80", "10.0.0.1:0", "[::1]:8080", "k1", "baseline",
                       "round_robin", "header", "x" * 300, "Svc", "a:b:c"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["name", "endpoints", "service", "routing_key", "weight", "version", "kind",
         "circuit_breakers", "max_requests", "retry_policy", "attempts", "x"]), inner,
        max_size=3),
    max_leaves=6,
)


def _decode_and_build(data: bytes) -> None:
    try:
        response = decode_response(data)
    except (MessageError, SnapshotRejected):
        return
    assert response.snapshot is not None
    try:
        build_table(response.snapshot)
    except ConfigError:
        pytest.fail("a snapshot the decoder accepted failed to build")


@pytest.mark.parametrize("seed", seeds("snapshot"), ids=lambda s: str(len(s)))
def test_snapshot_seed_corpus(seed: bytes) -> None:
    _decode_and_build(seed)


@FUZZ
@given(seed=st.sampled_from(seeds("snapshot")),
       edits=st.lists(st.tuples(st.lists(st.integers(0, 8), max_size=6), json_leaf),
                      min_size=1, max_size=4))
def test_snapshot_decoder_on_mutated_pushes(seed: bytes, edits: list[tuple[list[int], Any]]
                                            ) -> None:
    try:
        doc = json.loads(seed)
    except (ValueError, RecursionError):  # the garbage and deep seeds: mutate from nothing
        doc = {}
    for path, leaf in edits:
        doc = _mutate(doc, path, leaf)
    _decode_and_build(json.dumps(doc).encode())


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_snapshot_decoder_on_garbage(data: bytes) -> None:
    _decode_and_build(data)
