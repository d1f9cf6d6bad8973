"""Where the routing key travels: read it from a request, write it into a forwarded one.

A `CarrierPlan` is built once per routing table from the snapshot's ordered carrier list
and holds everything that does not depend on the request (header names, member keys, ids,
what to emit), so the per-request functions are a few dict look-ups when no carrier is
present.

Invariants:
- a carrier value that is not a valid routing key (`[A-Za-z0-9][A-Za-z0-9._-]{0,127}`) is
  ignored: not an error, not a conflict;
- two different valid keys in one request (two carriers, or two values of one carrier) are
  a conflict: the result has no key, the request goes to the baseline and is counted; the
  proxy never guesses. When every carrier agrees, the key is attributed to the carrier that
  comes first in the configured priority order;
- `tracestate` counts only next to a valid `traceparent` (W3C Trace Context);
- injection returns only headers whose value must change; members of `baggage` and
  `tracestate` the proxy does not own are kept byte for byte and in order (malformed ones
  are dropped only when the header is rewritten anyway); `tracestate` is written only when a
  valid `traceparent` is present;
- everything returned is printable ASCII: no CR, LF or NUL can reach a forwarded header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from forklane.proxy.context import baggage as _baggage
from forklane.proxy.context import tracestate as _tracestate
from forklane.proxy.context.traceparent import parse_traceparent
from forklane.proxy.schema import Carrier

__all__ = [
    "BAGGAGE",
    "COMPAT_CARRIERS",
    "TRACEPARENT",
    "TRACESTATE",
    "CarrierPlan",
    "KeyResult",
    "build_carrier_plan",
    "extract_routing_key",
    "extract_trace_id",
    "inject_routing_key",
    "is_routing_key",
    "strip_routing_key",
]

BAGGAGE = "baggage"
TRACESTATE = "tracestate"
TRACEPARENT = "traceparent"

_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")

# The formats other sandbox tools use; an operator lists the ones they need in `carriers:`
# (after forklane's own) while teams migrate, then removes them.
COMPAT_CARRIERS: tuple[Carrier, ...] = (
    Carrier(kind="baggage", name="sd-routing-key"),
    Carrier(kind="tracestate", name="sd-routing-key"),
    Carrier(kind="header", name="uberctx-sd-routing-key"),
    Carrier(kind="header", name="ot-baggage-sd-routing-key"),
)


def is_routing_key(text: str) -> bool:
    """True when `text` is a whole, valid routing key."""
    return _KEY_RE.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class KeyResult:
    """What the carriers said. `conflict` implies `key is None`."""

    key: str | None
    carrier: str | None
    conflict: bool


_NOTHING = KeyResult(None, None, False)
_CONFLICT = KeyResult(None, None, True)


@dataclass(frozen=True, slots=True)
class CarrierPlan:
    """Pre-computed reading and writing instructions for one carrier list.

    Sources are `(name, carrier id, priority)`; a lower priority number wins attribution.
    `header_names` is every lowercase header the plan reads or writes; it always includes
    `traceparent`, which trace repair and tracestate need.
    """

    carriers: tuple[Carrier, ...]
    header_names: frozenset[str]
    header_sources: tuple[tuple[str, str, int], ...]
    baggage_sources: tuple[tuple[str, str, int], ...]
    tracestate_sources: tuple[tuple[str, str, int], ...]
    emit_headers: tuple[str, ...]
    emit_baggage: tuple[str, ...]
    emit_tracestate: tuple[str, ...]
    # Look-up forms of the member sources: member key -> (priority, carrier id).
    baggage_names: frozenset[str] = field(default=frozenset(), compare=False)
    baggage_ids: Mapping[str, tuple[int, str]] = field(default_factory=dict, compare=False)
    tracestate_names: frozenset[str] = field(default=frozenset(), compare=False)
    tracestate_ids: Mapping[str, tuple[int, str]] = field(default_factory=dict, compare=False)


def build_carrier_plan(carriers: tuple[Carrier, ...]) -> CarrierPlan:
    """Compile the ordered carrier list (validated by the schema) into a plan."""
    headers: list[tuple[str, str, int]] = []
    bag: list[tuple[str, str, int]] = []
    state: list[tuple[str, str, int]] = []
    emit_h: list[str] = []
    emit_b: list[str] = []
    emit_t: list[str] = []
    for priority, c in enumerate(carriers):
        source = (c.name, f"{c.kind}:{c.name}", priority)
        if c.kind == "header":
            headers.append(source)
            if c.emit:
                emit_h.append(c.name)
        elif c.kind == "baggage":
            bag.append(source)
            if c.emit:
                emit_b.append(c.name)
        else:
            state.append(source)
            if c.emit:
                emit_t.append(c.name)
    names = {h for h, _, _ in headers} | {TRACEPARENT}
    if bag:
        names.add(BAGGAGE)
    if state:
        names.add(TRACESTATE)
    return CarrierPlan(
        carriers=tuple(carriers),
        header_names=frozenset(names),
        header_sources=tuple(headers),
        baggage_sources=tuple(bag),
        tracestate_sources=tuple(state),
        emit_headers=tuple(emit_h),
        emit_baggage=tuple(emit_b),
        emit_tracestate=tuple(emit_t),
        baggage_names=frozenset(n for n, _, _ in bag),
        baggage_ids={n: (p, i) for n, i, p in bag},
        tracestate_names=frozenset(n for n, _, _ in state),
        tracestate_ids={n: (p, i) for n, i, p in state},
    )


def _header_keys(value: str) -> list[str]:
    """Valid keys in a header carrier's value (several fields arrive joined with ',')."""
    out: list[str] = []
    for part in value.split(","):
        part = part.strip(" \t")
        if _KEY_RE.fullmatch(part):
            out.append(part)
    return out


def extract_routing_key(plan: CarrierPlan, headers: Mapping[str, str]) -> KeyResult:
    """The request's routing key, from every carrier of the plan; never raises."""
    if not headers:
        return _NOTHING
    found: list[tuple[int, str, str]] = []
    get = headers.get
    for name, carrier_id, priority in plan.header_sources:
        value = get(name)
        if value is not None:
            if _KEY_RE.fullmatch(value):
                found.append((priority, carrier_id, value))
            else:
                for key in _header_keys(value):
                    found.append((priority, carrier_id, key))
    if plan.baggage_sources:
        value = get(BAGGAGE)
        # Member keys are tokens and never percent-encoded, so a substring test is exact
        # enough to skip baggage that cannot hold a carrier.
        if value is not None and any(name in value for name in plan.baggage_names):
            for name, raw in _baggage.member_values(value, plan.baggage_names):
                decoded = _baggage.decode_value(raw)
                if decoded is not None and _KEY_RE.fullmatch(decoded):
                    found.append((*plan.baggage_ids[name], decoded))
    if plan.tracestate_sources:
        value = get(TRACESTATE)
        if (
            value is not None
            and any(name in value for name in plan.tracestate_names)
            and parse_traceparent(get(TRACEPARENT)) is not None
        ):
            for name, raw in _tracestate.member_values(value, plan.tracestate_names):
                if _KEY_RE.fullmatch(raw):
                    found.append((*plan.tracestate_ids[name], raw))
    if not found:
        return _NOTHING
    if len(found) == 1:
        _, carrier_id, key = found[0]
    else:
        _, carrier_id, key = min(found)
        for item in found:
            if item[2] != key:
                return _CONFLICT
    return _key_result(carrier_id, key)


_RESULTS: dict[tuple[str, str], KeyResult] = {}


def _key_result(carrier_id: str, key: str) -> KeyResult:
    """Interned results: a request path that sees the same few keys allocates nothing."""
    pair = (carrier_id, key)
    result = _RESULTS.get(pair)
    if result is None:
        if len(_RESULTS) >= 4096:
            _RESULTS.clear()
        result = _RESULTS[pair] = KeyResult(key, carrier_id, False)
    return result


def extract_trace_id(headers: Mapping[str, str]) -> str | None:
    """The trace-id of a valid traceparent, for trace repair; None otherwise."""
    parsed = parse_traceparent(headers.get(TRACEPARENT))
    return None if parsed is None else parsed.trace_id


def _has_exactly(
    found: list[tuple[str, str]], names: frozenset[str], key: str, *, decode: bool
) -> bool:
    """True when every name occurs once in `found` with value `key` (percent-decoded if asked)."""
    if len(found) != len(names):
        return False
    seen: set[str] = set()
    for name, value in found:
        if name in seen or (value != key and not (decode and _baggage.decode_value(value) == key)):
            return False
        seen.add(name)
    return True


def _rewrite_baggage(current: str | None, names: tuple[str, ...], key: str) -> str | None:
    """New baggage value with `names=key` first, or None when `current` already has it."""
    if not current:
        # The common case, and cheap: routing keys need no percent-encoding.
        return ",".join(f"{name}={key}" for name in names)
    wanted = frozenset(names)
    if current is not None and _has_exactly(
        _baggage.member_values(current, wanted), wanted, key, decode=True
    ):
        return None
    members = _baggage.parse_baggage(current)
    ours = [_baggage.make_member(name, key) for name in names]
    owned = set(names)
    rest = [m for m in members if m.key not in owned]
    return _baggage.serialize_baggage([*ours, *rest])


def _rewrite_tracestate(current: str | None, names: tuple[str, ...], key: str) -> str | None:
    """New tracestate with `names=key` left-most, or None when `current` already has it."""
    wanted = frozenset(names)
    if current is not None and _has_exactly(
        _tracestate.member_values(current, wanted), wanted, key, decode=False
    ):
        return None
    members = _tracestate.parse_tracestate(current)
    updated: tuple[_tracestate.TraceStateMember, ...] = members
    # Reverse priority, so the first configured carrier ends up left-most.
    for name in reversed(names):
        updated = _tracestate.with_member(updated, _tracestate.make_member(name, key))
    return _tracestate.serialize_tracestate(updated)


def inject_routing_key(plan: CarrierPlan, key: str, headers: Mapping[str, str]) -> dict[str, str]:
    """Headers to set (replacing every field of that name) so each emitting carrier has `key`.

    Raises ValueError for an invalid key: keys come from extraction or the routing table,
    both already validated, so this is a programming error, not bad input.
    """
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"invalid routing key {key!r}")
    out: dict[str, str] = {}
    for name in plan.emit_headers:
        if headers.get(name) != key:
            out[name] = key
    if plan.emit_baggage:
        new = _rewrite_baggage(headers.get(BAGGAGE), plan.emit_baggage, key)
        if new is not None:
            out[BAGGAGE] = new
    if plan.emit_tracestate and parse_traceparent(headers.get(TRACEPARENT)) is not None:
        new = _rewrite_tracestate(headers.get(TRACESTATE), plan.emit_tracestate, key)
        if new is not None:
            out[TRACESTATE] = new
    return out


def strip_routing_key(plan: CarrierPlan, headers: Mapping[str, str]) -> dict[str, str]:
    """Headers to replace so that no carrier of the plan holds a key any more: a header
    carrier maps to '' (remove the field), `baggage` and `tracestate` to their value without
    our members ('' when nothing else is left). Other members pass untouched."""
    out: dict[str, str] = {}
    for name, _, _ in plan.header_sources:
        if name in headers:
            out[name] = ""
    value = headers.get(BAGGAGE)
    if plan.baggage_sources and value is not None:
        members = _baggage.parse_baggage(value)
        kept = [m for m in members if m.key not in plan.baggage_names]
        out[BAGGAGE] = _baggage.serialize_baggage(kept) if kept else ""
    value = headers.get(TRACESTATE)
    if plan.tracestate_sources and value is not None:
        states = _tracestate.parse_tracestate(value)
        rest = [m for m in states if m.key not in plan.tracestate_names]
        out[TRACESTATE] = _tracestate.serialize_tracestate(rest) if rest else ""
    return out
