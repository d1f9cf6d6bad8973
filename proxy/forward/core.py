"""The protocol-neutral forwarding core: a request head in, the decision and the forwarded
fields out. The HTTP/1.1 and HTTP/2 modules turn bytes into heads and back; what the fields
of a request mean for routing and what the next hop receives is decided here, once.

A head is a list of `(name, value)` fields (names as received; HTTP/2 delivers them
lowercase) plus the request's method, path and authority. `TableFields` classifies every
field name once per routing table and protocol; `route()` builds the `RequestView`, decides,
runs the propagation hooks and works out the carrier injection; `forwarded_fields()` writes
the forwarded field list (carriers replaced, X-Forwarded-For/-Proto/-Host, Via with this hop,
the span's traceparent). Sidecars recognise each other by the last Via entry
(`table.routed_by_sidecar`); the old `x-forklane-routed` header still counts and is never
forwarded.

The routing-outcome cache: a decision and its injection depend only on the authority and the
view's fields when the service has no split and no mirror (no draw, no method or path
matching) and no hook runs (trace repair and tracing look at each request's trace). Such
outcomes are kept per table (a swap builds a new `TableFields`, so the cache goes with the
old table), keyed without `traceparent` (only its validity counts, and only when a
`tracestate` carrier is configured), bounded at `CACHE_SIZE` entries.

Invariants:
- a field that looks like ours spelled with underscores never takes part in routing and is
  never forwarded (Envoy's `headers_with_underscores_action`); counted;
- repeated fields join with `,` in the view, except `cookie`, which joins with `; `
  (RFC 9113 §8.2.3, RFC 6265 §5.4): the same on both protocols;
- every routing key decided is added to `stats.seen_keys` (a set add per keyed request),
  which the subscriber reports as activity;
- nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from forklane.proxy.context.carriers import TRACEPARENT, inject_routing_key, strip_routing_key
from forklane.proxy.context.traceparent import parse_traceparent
from forklane.proxy.routing import Decision, ListenerKind, RequestView, decide, host_only
from forklane.proxy.table import (
    ROUTED_MARKER,
    Destination,
    Endpoint,
    Route,
    RoutingTable,
    routed_by_sidecar,
)

if TYPE_CHECKING:
    from forklane.proxy.hooks import RequestHooks
    from forklane.proxy.metrics import Stats
    from forklane.proxy.tracing import ProxySpan

__all__ = [
    "CACHE_SIZE",
    "Hop",
    "Injection",
    "TableFields",
    "explanation_value",
    "forwarded_fields",
    "join_view",
    "lookalike",
    "route",
]

CACHE_SIZE = 4096

# What a field name means to the request path (lowercase names).
(F_HOST, F_CONNECTION, F_TRANSFER_ENCODING, F_CONTENT_LENGTH, F_XFF, F_XFP, F_XFH, F_VIA,
 F_UPGRADE, F_KEEP_ALIVE, F_HOP, F_TE, F_MARKER, F_INTERESTING, F_EXPLAIN, F_CONTENT_TYPE,
 F_GRPC_TIMEOUT) = range(17)

ROUTED_RAW = ROUTED_MARKER.encode()

_COMMON: dict[bytes, int] = {
    b"host": F_HOST,
    b"connection": F_CONNECTION,
    b"transfer-encoding": F_TRANSFER_ENCODING,
    b"x-forwarded-for": F_XFF,
    b"x-forwarded-proto": F_XFP,
    b"x-forwarded-host": F_XFH,
    b"via": F_VIA,
    b"upgrade": F_UPGRADE,
    b"keep-alive": F_KEEP_ALIVE,
    b"proxy-connection": F_KEEP_ALIVE,
    b"proxy-authorization": F_HOP,
    b"proxy-authenticate": F_HOP,
    b"trailer": F_HOP,
    b"te": F_TE,
    ROUTED_RAW: F_MARKER,
}
# HTTP/1.1: Content-Length frames the body; `te` is hop-by-hop like the others.
_HTTP1: dict[bytes, int] = {**_COMMON, b"content-length": F_CONTENT_LENGTH}
# HTTP/2: gRPC fields; `http2-settings` belongs to an h2c upgrade, never to a stream.
_HTTP2: dict[bytes, int] = {
    **_COMMON,
    b"content-type": F_CONTENT_TYPE,
    b"grpc-timeout": F_GRPC_TIMEOUT,
    b"http2-settings": F_HOP,
}

Injection = tuple[frozenset[bytes], tuple[tuple[bytes, bytes], ...]]
_NO_INJECTION: Injection = (frozenset(), ())
_Outcome = tuple[Decision, Injection]


class TableFields:
    """Field classification and the routing-outcome cache of one table, for one listener."""

    __slots__ = ("cache", "h1", "h2", "interesting_raw", "names", "table", "tp_matters")

    def __init__(self, table: RoutingTable | None, explain: bytes | None) -> None:
        self.table = table
        h1 = dict(_HTTP1)
        h2 = dict(_HTTP2)
        raw: frozenset[bytes] = frozenset()
        if table is not None:
            raw = table.interesting_raw
            for name in raw:
                h1.setdefault(name, F_INTERESTING)
                h2.setdefault(name, F_INTERESTING)
        if explain is not None:
            h1.setdefault(explain, F_EXPLAIN)
            h2.setdefault(explain, F_EXPLAIN)
        self.h1 = h1
        self.h2 = h2
        self.interesting_raw = raw
        plan = table.carriers if table is not None else None
        # traceparent's validity changes a decision only through tracestate carriers.
        self.tp_matters = plan is not None and bool(plan.tracestate_sources or plan.emit_tracestate)
        self.cache: dict[object, _Outcome] = {}
        # HTTP/1.1 field names as clients send them -> (action, lowercase name); filled by
        # the head reader (`http1.head`), so a name seen before costs one look-up.
        self.names: dict[bytes, tuple[int, str]] = {}


def lookalike(name: bytes, interesting_raw: frozenset[bytes]) -> bool:
    """A field spelled with underscores that would read as ours with dashes."""
    spelled = name.replace(b"_", b"-")
    return spelled.startswith(b"x-forklane") or spelled in interesting_raw


def join_view(view: dict[str, str], key: str, text: str) -> None:
    """Add one field to the routing view, joining repeats the way both protocols agree on."""
    prev = view.get(key)
    if prev is None:
        view[key] = text
    else:
        view[key] = prev + ("; " if key == "cookie" else ",") + text


def _cache_key(authority: str, view: dict[str, str], tp_matters: bool) -> object:
    if not view:
        return authority
    parts: list[object] = [authority]
    for name, value in view.items():
        if name != TRACEPARENT:
            parts.append(name)
            parts.append(value)
    if tp_matters:
        parts.append(parse_traceparent(view.get(TRACEPARENT)) is not None)
    return tuple(parts)


def _cacheable(listener: ListenerKind, table: RoutingTable, authority: str, route: Route) -> bool:
    """Whether this outcome follows from the authority and fields alone (see the module doc)."""
    if listener == "inbound" or route.kind in ("fork", "reject"):
        return True
    svc = table.authorities.get(authority)
    if svc is None:
        svc = table.authorities.get(host_only(authority))
    return svc is not None and not svc.splits and not svc.mirrors


def _injection(table: RoutingTable, decision: Decision, view: dict[str, str]) -> Injection:
    key = decision.key.key
    if table.edge and (decision.rejected is not None or decision.key.conflict):
        # An edge proxy forwards no key it could not verify: outside callers reach no fork.
        updates = strip_routing_key(table.carriers, view)
        pairs = tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in updates.items() if v)
        return frozenset(n.encode("latin-1") for n in updates), pairs
    if key is None:
        return _NO_INJECTION
    updates = inject_routing_key(table.carriers, key, view)
    if not updates:
        return _NO_INJECTION
    pairs = tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in updates.items())
    return frozenset(p[0] for p in pairs), pairs


def route(
    listener: ListenerKind,
    fields: TableFields,
    table: RoutingTable,
    method: bytes,
    path: bytes,
    authority: bytes,
    view: dict[str, str],
    draw: Callable[[], float],
    hooks: RequestHooks | None,
    stats: Stats,
    via: bytes | None = None,
) -> tuple[Decision, Injection, ProxySpan | None]:
    """Decide one request: its decision, the carrier fields to write, and its span.

    `path` excludes the query; `authority` is as received (lowercased here); `via` is the
    request's Via list (a sidecar as the last hop means: deliver locally)."""
    if via is not None and routed_by_sidecar(via):
        view[ROUTED_MARKER] = "1"
    auth = authority.lower().decode("latin-1")
    key: object = None
    if hooks is None:
        key = _cache_key(auth, view, fields.tp_matters) if view else auth
        hit = fields.cache.get(key)
        if hit is not None:
            decision = hit[0]
            if decision.key.conflict:
                stats.key_conflicts += 1
            elif decision.key.key is not None:
                stats.seen_keys.add(decision.key.key)  # activity (ttl since lastActivity)
            if decision.rejected is not None:
                stats.keys_rejected[decision.rejected] += 1
            if table.faults:
                decision = _fault(listener, table, decision, view, draw)
            return decision, hit[1], None
    request_view = RequestView(listener, method.decode("latin-1"), path.decode("latin-1"),
                               auth, view)
    decision = decide(request_view, table, draw)
    span = None
    if hooks is not None:
        decision, span = hooks.after_decide(request_view, table, decision, draw)
    if decision.key.conflict:
        stats.key_conflicts += 1
    elif decision.key.key is not None:
        stats.seen_keys.add(decision.key.key)
    if decision.rejected is not None:
        stats.keys_rejected[decision.rejected] += 1
    injection = _injection(table, decision, view)
    if table.verifier is not None and decision.key.key is not None:
        key = None  # a signed key's verdict changes when it expires: judged every time
    if key is not None and _cacheable(listener, table, auth, decision.route):
        cache = fields.cache
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        cache[key] = (decision, injection)
    if table.faults:  # after caching: a fault is drawn for every request
        decision = _fault(listener, table, decision, view, draw)
    return decision, injection, span


def _fault(
    listener: ListenerKind,
    table: RoutingTable,
    decision: Decision,
    view: dict[str, str],
    draw: Callable[[], float],
) -> Decision:
    """The decision with the key's fault for the routed service applied, if one is drawn.

    Keyless requests are never touched. A request another sidecar already routed (its Via)
    had its fault drawn there, so an inbound listener draws only for requests that came
    straight from outside the mesh."""
    key = decision.key.key
    if key is None or (listener == "inbound" and ROUTED_MARKER in view):
        return decision
    route_ = decision.route
    fault = table.faults.get((key, route_.service or ""))
    if fault is None or route_.kind == "reject" or draw() >= fault.fraction:
        return decision
    if fault.abort is not None:
        return Decision(fault.abort, decision.key, ())
    delayed = replace(route_, delay=fault.delay, rule=f"{route_.rule}+{fault.rule}",
                      reason=f"{route_.reason}; {fault.reason}")
    return Decision(delayed, decision.key, decision.mirrors)


class Hop:
    """What one client connection adds to every request it forwards: its peer address and
    scheme, and this proxy's Via token for the protocol. Built once per connection."""

    __slots__ = ("forwarded", "forwarded_raw", "peer", "proto", "proto_field", "via_field",
                 "via_hop", "via_raw")

    def __init__(self, peer: bytes, proto: bytes, via_hop: bytes) -> None:
        self.peer = peer
        self.proto = proto
        self.via_hop = via_hop
        self.proto_field = (b"x-forwarded-proto", proto)
        self.via_field = (b"via", via_hop)
        # The common case: no X-Forwarded-For/-Proto from the client.
        self.forwarded = ((b"x-forwarded-for", peer), self.proto_field)
        # The same as raw lines, and Via with the blank line that ends a head.
        self.forwarded_raw = b"x-forwarded-for: " + peer + b"\r\nx-forwarded-proto: " + proto + b"\r\n"
        self.via_raw = b"via: " + via_hop + b"\r\n\r\n"


def forwarded_fields(
    out: list[tuple[bytes, bytes]],
    kept: list[tuple[bytes, bytes]],
    injection: Injection,
    hop: Hop,
    xff: bytes | None,
    xfp: bool,
    xfh: bool,
    host: bytes,
    via: bytes | None,
) -> None:
    """Append the forwarded request's fields to `out`: the client's `kept` fields with the
    carriers replaced, X-Forwarded-For (the client's list plus its peer), X-Forwarded-Proto
    and -Host unless the client sent them, and Via with this hop appended (which is how the
    next sidecar knows this hop was routed)."""
    replaced, updates = injection
    if replaced:  # an edge's stripping replaces fields with nothing: `updates` may be empty
        for item in kept:
            if item[0].lower() not in replaced:
                out.append(item)
        out.extend(updates)
    else:
        out.extend(kept)
    if xff is None and not xfp:
        out.extend(hop.forwarded)
    else:
        out.append((b"x-forwarded-for", xff + b", " + hop.peer if xff else hop.peer))
        if not xfp:
            out.append(hop.proto_field)
    if not xfh and host:
        out.append((b"x-forwarded-host", host))
    out.append((b"via", via + b", " + hop.via_hop) if via else hop.via_field)


def apply_span(kept: list[tuple[bytes, bytes]], span: ProxySpan) -> list[tuple[bytes, bytes]]:
    """The kept fields with the span's traceparent instead of the client's (and without the
    client's tracestate when its traceparent was invalid: W3C Trace Context)."""
    drop = (b"traceparent",) if span.keeps_tracestate else (b"traceparent", b"tracestate")
    out = [item for item in kept if item[0].lower() not in drop]
    out.append((b"traceparent", span.traceparent))
    return out


def explanation_value(
    decision: Decision | None,
    dest: Destination | None,
    endpoint: Endpoint | None,
    fallback_used: bool,
) -> bytes:
    """The `x-forklane-route` value: how the request was routed ("-" before a decision)."""
    if decision is None:
        return b"-"
    route_ = decision.route
    parts = [
        f"kind={route_.kind}",
        f"rule={route_.rule}",
        f"destination={dest.name if dest else '-'}",
        f"endpoint={endpoint.address if endpoint else '-'}",
        f"carrier={decision.key.carrier or '-'}",
    ]
    if fallback_used:
        parts.append("fallback=baseline")
    return "; ".join(parts).encode("ascii", "replace")
