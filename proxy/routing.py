"""The routing decision: a pure function of a request view and the routing table.

`decide()` knows nothing of sockets or wire protocols: HTTP/1.1, HTTP/2 and gRPC listeners
all build the same `RequestView`, and `/explain` and the CLI call the very same function.
Randomness comes in as `draw` callables so tests are deterministic.

Order on the outbound listener, for the service named by the authority:
1. the request's routing key forks this service → the fork;
2. the first split whose match holds → one of its destinations (sticky or weighted);
3. otherwise → the baseline.
Mirrors are added to non-fork decisions (a developer's sandbox traffic is never shadowed).
With signed routing keys on (`table.verifier`), only a validly signed, unexpired key names a
fork; any other key is as good as none, and the decision says why (`rejected`).
On the inbound listener: a key that forks the local service → the fork, unless a sidecar
already decided this hop (`x-forklane-routed`); everything else → the local app.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from forklane.proxy.context.carriers import KeyResult, extract_routing_key
from forklane.proxy.context.signing import Rejection
from forklane.proxy.table import ROUTED_MARKER, Destination, Route, RoutingTable

__all__ = [
    "NO_MIRRORS",
    "Decision",
    "ListenerKind",
    "RequestView",
    "decide",
    "explain",
    "host_only",
    "routes_authority",
]

ListenerKind = Literal["inbound", "outbound"]  # the one definition; listeners import it
NO_MIRRORS: tuple[Destination, ...] = ()


@dataclass(slots=True)
class RequestView:
    """What routing may look at. `headers` holds only the table's interesting headers,
    lowercase names, repeated fields joined with ','."""

    listener: ListenerKind
    method: str
    path: str
    authority: str
    headers: dict[str, str]


class Decision(NamedTuple):
    route: Route
    key: KeyResult
    mirrors: tuple[Destination, ...]
    # Set when signing is on and the key failed verification: the request did not reach a
    # fork because of it (counted; an edge proxy also strips the key before forwarding).
    rejected: Rejection | None = None


def host_only(authority: str) -> str:
    """Strip the port: `catalog:8080` → `catalog` (only used when the exact authority missed)."""
    if authority.startswith("["):
        return authority[: authority.find("]") + 1]
    return authority.partition(":")[0]


def routes_authority(table: RoutingTable, authority: str) -> bool:
    """Whether an outbound request for this lowercase authority reaches a service (the same
    look-up `decide` starts with). Captured connections for anything else are relayed."""
    authorities = table.authorities
    return authority in authorities or host_only(authority) in authorities


def decide(
    view: RequestView,
    table: RoutingTable,
    draw: Callable[[], float],
) -> Decision:
    """Route one request. `draw()` returns a uniform [0, 1) float (splits, mirror sampling)."""
    key = extract_routing_key(table.carriers, view.headers)
    headers = view.headers
    # The key that may name a fork: the presented one, or with signing on, the verified one.
    fork_key = key.key
    rejected: Rejection | None = None
    verifier = table.verifier
    if fork_key is not None:
        if verifier is not None:
            fork_key, rejected = verifier.verify(fork_key)
        elif table.edge:  # an edge proxy without signing trusts no key from outside
            fork_key, rejected = None, "unsigned"
    if view.listener == "inbound":
        local = table.inbound_local
        if local is None:
            return Decision(table.no_route, key, NO_MIRRORS, rejected)
        if fork_key is not None and ROUTED_MARKER not in headers:
            fork = table.inbound_forks.get(fork_key)
            if fork is not None:
                return Decision(fork, key, NO_MIRRORS)
        return Decision(local, key, NO_MIRRORS, rejected)

    svc = table.authorities.get(view.authority)
    if svc is None:
        svc = table.authorities.get(host_only(view.authority))
        if svc is None:
            return Decision(table.no_route, key, NO_MIRRORS, rejected)
    if fork_key is not None:
        fork = svc.forks.get(fork_key)
        if fork is not None:
            return Decision(fork, key, NO_MIRRORS)
    route = svc.baseline
    method, path = view.method, view.path
    for split in svc.splits:
        if split.condition.holds(method, path, headers):
            route = split.pick(headers, draw())
            break
    if not svc.mirrors:
        return Decision(route, key, NO_MIRRORS, rejected)
    mirrors = tuple(
        m.destination
        for m in svc.mirrors
        if m.condition.holds(method, path, headers) and draw() < m.fraction
    )
    return Decision(route, key, mirrors, rejected)


def explain(decision: Decision) -> dict[str, object]:
    """The decision as plain data, for `/explain`, the CLI and the explanation header."""
    route = decision.route
    dest = route.destination
    return {
        "kind": route.kind,
        "service": route.service,
        "destination": dest.name if dest else None,
        "endpoints": [e.address for e in dest.endpoints] if dest else [],
        "rule": route.rule,
        "reason": route.reason,
        "routing_key": decision.key.key,
        "carrier": decision.key.carrier,
        "conflict": decision.key.conflict,
        "fallback": route.fallback.name if route.fallback else None,
        "mirrors": [m.name for m in decision.mirrors],
        "status": route.status or None,
        "error": route.error or None,
        **({"key_rejected": decision.rejected} if decision.rejected else {}),
    }
