"""The routing table: a validated snapshot turned into frozen, pre-indexed core types.

Built once per snapshot (file load, reload, control-plane push) and swapped whole; the request
path only does dict look-ups on it. Every `Route` a request can take is built here, with its
reason and rule text, so deciding allocates nothing but the small `Decision` tuple.

Invariants:
- every `Route` names a `Destination` with at least one endpoint (a service with none gets a
  503 `no-endpoints` reject route as its baseline);
- `authorities` maps every lowercase authority (with and without port) to one service; an
  authority naming one of a service's `ports` maps to that port's endpoints; the namespace
  authorities of services in the proxy's own namespace win over every other authority (as
  cluster DNS resolves a bare name in the pod's namespace first), and those of other
  namespaces are not indexed at all;
- `interesting_headers` is every header name the decision may read: the protocol layer
  collects only these for the request view.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from forklane.proxy import schema
from forklane.proxy.context.carriers import CarrierPlan, build_carrier_plan
from forklane.proxy.context.signing import KeyClaims, KeyVerifier

__all__ = [
    "DEFAULT_CIRCUIT",
    "CircuitLimits",
    "ConfigError",
    "Destination",
    "Endpoint",
    "HeaderCondition",
    "HealthPolicy",
    "LocalIdentity",
    "MirrorRule",
    "OutlierPolicy",
    "RetryRules",
    "Route",
    "RouteKind",
    "RoutingTable",
    "ServiceRoutes",
    "SplitRule",
    "Timeouts",
    "build_table",
    "destination_names",
    "grpc_retry_statuses",
    "passthrough_route",
    "routed_by_sidecar",
]

RouteKind = Literal["baseline", "fork", "split", "local", "reject", "passthrough"]
LbPolicy = Literal["round_robin", "least_request"]

# The view key meaning "a sidecar already decided this hop: deliver locally" (set from Via, or
# from this header as older sidecars send it; the header itself is never forwarded).
ROUTED_MARKER = "x-forklane-routed"


def routed_by_sidecar(via: bytes) -> bool:
    """The hop right before us was a forklane sidecar: the last `Via` entry's received-by is
    `forklane` (`1.1 forklane`, `2 forklane`). Every HTTP proxy must add a Via entry (RFC 9110
    §7.6.3), so sidecars recognise each other without a header of their own that an app behind
    an endpoint could see. `x-forklane-routed: 1` from an older sidecar still counts, and is
    removed."""
    last = via.rpartition(b",")[2].split()
    return len(last) >= 2 and last[1] == b"forklane"


class ConfigError(ValueError):
    """A snapshot that cannot become a table; the message says why. The old table stays."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    address: str  # "host:port" as configured; the key of its connection pool


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    request: float
    idle: float


@dataclass(frozen=True, slots=True)
class CircuitLimits:
    """A destination's circuit breakers (`schema.CircuitBreakers`)."""

    max_connections: int = 1024
    max_pending: int = 1024
    max_requests: int = 1024
    max_retries: int = 3


DEFAULT_CIRCUIT = CircuitLimits()


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """A destination's passive health rules (`schema.OutlierDetection`); 0 turns a rule off."""

    consecutive_5xx: int
    consecutive_gateway: int
    base_ejection: float
    max_ejection: float
    max_ejection_percent: int


@dataclass(frozen=True, slots=True)
class RetryRules:
    """A destination's retries after an answer (`schema.RetryPolicy`), pre-indexed."""

    attempts: int
    statuses: frozenset[int]  # HTTP statuses that are retried
    per_try_timeout: float  # 0: none
    budget_percent: float
    min_concurrency: int
    header_overrides: bool
    grpc_statuses: frozenset[int] = frozenset()  # gRPC statuses retried (trailers-only)
    buffer_limit: int = 65536  # request body bytes kept for a gRPC-status retry


NO_RETRIES = RetryRules(0, frozenset(), 0.0, 20.0, 3, False)
RETRY_ON_HEADER = "x-forklane-retry-on"
# Envoy's `retry_on` words for gRPC statuses, and the status each names.
GRPC_RETRY_ON = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8,
                 "internal": 13, "unavailable": 14}


def grpc_retry_statuses(retry_on: tuple[str, ...] | list[str]) -> frozenset[int]:
    """The gRPC statuses `retry_on` names (`unavailable`, `internal` …)."""
    return frozenset(GRPC_RETRY_ON[w] for w in retry_on if w in GRPC_RETRY_ON)


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """A destination's active health check (`schema.HealthCheck`). Hashable: endpoints are
    probed once per (policy, address), whichever destinations share them."""

    kind: Literal["http", "tcp"]
    path: str
    expected: frozenset[int]  # empty: any 2xx
    interval: float
    timeout: float
    unhealthy_threshold: int
    healthy_threshold: int
    jitter: float

    def passes(self, status: int) -> bool:
        return status in self.expected if self.expected else 200 <= status <= 299

    @property
    def label(self) -> str:
        """How the check reads in /config and /metrics: `GET /healthz` or `tcp`."""
        return f"GET {self.path}" if self.kind == "http" else "tcp"


def retry_statuses(retry_on: tuple[str, ...] | list[str], extra: tuple[int, ...]
                   ) -> frozenset[int]:
    """The statuses `retry_on` names (`5xx`, `gateway-error`, `retriable-status-codes`)."""
    out: set[int] = set()
    for word in retry_on:
        if word == "5xx":
            out.update(range(500, 600))
        elif word == "gateway-error":
            out.update((502, 503, 504))
        elif word == "retriable-status-codes":
            out.update(extra)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a request may be sent: one or more endpoints and how to pick among them.
    `outlier` None: the proxy's own default (settings)."""

    name: str  # e.g. "baseline/catalog", "fork/catalog@abc", "split/catalog/canary/v2"
    endpoints: tuple[Endpoint, ...]
    lb: LbPolicy
    timeouts: Timeouts
    circuit: CircuitLimits = DEFAULT_CIRCUIT
    outlier: OutlierPolicy | None = None
    retry: RetryRules = NO_RETRIES
    health: HealthPolicy | None = None  # active health check; None: not probed


@dataclass(frozen=True, slots=True)
class Route:
    """One pre-built outcome of a decision, with the text that explains it."""

    kind: RouteKind
    service: str | None
    destination: Destination | None  # None only for kind == "reject"
    rule: str  # which configuration entry decided, e.g. "forks[2]", "splits[canary]"
    reason: str  # a sentence for /explain, logs and the explanation header
    fallback: Destination | None = None  # fork with `fallback: baseline`
    status: int = 0  # for kind == "reject": the status to answer with
    error: str = ""  # for kind == "reject": the x-forklane-error reason
    grpc_status: int = 0  # for kind == "reject": the gRPC status for gRPC calls (0: the error's)
    delay: float = 0.0  # seconds to hold the request before forwarding (an injected fault)
    # The metrics row key "service<US>kind": a str, because str hashes are cached.
    stat_key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stat_key", f"{self.service or ''}\x1f{self.kind}")


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    name: str
    exact: str | None
    prefix: str | None
    present: bool | None

    def holds(self, headers: dict[str, str]) -> bool:
        value = headers.get(self.name)
        if self.present is not None:
            return (value is not None) == self.present
        if value is None:
            return False
        if self.exact is not None:
            return value == self.exact
        assert self.prefix is not None
        return value.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled `schema.Match`: all parts must hold."""

    headers: tuple[HeaderCondition, ...]
    path_prefix: str | None
    methods: frozenset[str]

    def holds(self, method: str, path: str, headers: dict[str, str]) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        for cond in self.headers:
            if not cond.holds(headers):
                return False
        return True


@dataclass(frozen=True, slots=True)
class SplitRule:
    """Weighted destinations. Sticky picks use weighted rendezvous hashing: a weight change
    moves only the users that must move (raising one weight only pulls users *to* it)."""

    name: str
    condition: Condition
    routes: tuple[Route, ...]
    weights: tuple[float, ...]
    cumulative: tuple[float, ...]  # running sums for the non-sticky pick
    total: float
    salts: tuple[bytes, ...]  # per-destination hash salt (its name): stable across edits
    sticky_header: str | None
    sticky_cookie: str | None

    def sticky_value(self, headers: dict[str, str]) -> str | None:
        if self.sticky_header is not None:
            return headers.get(self.sticky_header)
        if self.sticky_cookie is not None:
            return _cookie_value(headers.get("cookie"), self.sticky_cookie)
        return None

    def pick(self, headers: dict[str, str], draw: float) -> Route:
        """`draw` is a uniform [0, 1) number, used only when there is no sticky value."""
        value = self.sticky_value(headers)
        if not value:  # absent or empty: not a user we can keep anywhere, spread by weight
            target = draw * self.total
            for route, upper in zip(self.routes, self.cumulative, strict=True):
                if target < upper:
                    return route
            return self.routes[-1]
        data = value.encode("utf-8", "surrogatepass")
        best = self.routes[0]
        best_score = -1.0
        for route, weight, salt in zip(self.routes, self.weights, self.salts, strict=True):
            if weight <= 0:
                continue
            digest = hashlib.blake2b(data, digest_size=8, salt=salt).digest()
            u = (int.from_bytes(digest, "big") + 1) / 18446744073709551617.0  # in (0, 1)
            score = weight / -math.log(u)
            if score > best_score:
                best, best_score = route, score
        return best


@dataclass(frozen=True, slots=True)
class MirrorRule:
    name: str
    condition: Condition
    fraction: float  # percent / 100
    destination: Destination


@dataclass(frozen=True, slots=True)
class ServiceRoutes:
    name: str
    baseline: Route
    forks: dict[str, Route]  # routing key -> fork route
    splits: tuple[SplitRule, ...]
    mirrors: tuple[MirrorRule, ...]


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """Who this sidecar stands beside: the local service name and its app's address."""

    service: str
    app: str  # host:port of the local app


@dataclass(frozen=True, slots=True)
class FaultRule:
    """A sandbox's fault for one service: for `fraction` of its keyed requests, answer with
    `abort` (a prebuilt reject route) or hold them `delay` seconds."""

    rule: str  # "faults[i]"
    fraction: float
    abort: Route | None
    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class RoutingTable:
    version: str
    snapshot: schema.RoutingSnapshot
    carriers: CarrierPlan
    authorities: dict[str, ServiceRoutes]
    services: dict[str, ServiceRoutes]
    interesting_headers: frozenset[str]
    interesting_raw: frozenset[bytes]  # the same, as the bytes the HTTP/1 parser yields
    no_route: Route
    local: LocalIdentity | None = None
    inbound_local: Route | None = None
    inbound_forks: dict[str, Route] = field(default_factory=dict)
    faults: dict[tuple[str, str], FaultRule] = field(default_factory=dict)  # (key, service)
    # Signed routing keys (None: any key reaches its fork); edge: strip keys that fail it.
    verifier: KeyVerifier | None = None
    edge: bool = False


def _cookie_value(header: str | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


def _fault_rule(i: int, fault: schema.Fault) -> FaultRule:
    rule = f"faults[{i}]"
    who = f"sandbox {fault.sandbox}" if fault.sandbox else f"key {fault.routing_key}"
    share = f"{fault.percent:g} % of requests"
    if fault.delay_ms is not None:
        reason = f"fault injected for {who}: {share} to {fault.service} held {fault.delay_ms} ms"
        return FaultRule(rule, fault.percent / 100.0, None, fault.delay_ms / 1000.0, reason)
    status = fault.abort_status or 503
    effect = f"HTTP {status}" + (f", gRPC status {fault.grpc_status}" if fault.grpc_status else "")
    reason = f"fault injected for {who}: {share} to {fault.service} answered {effect}"
    abort = Route(kind="reject", service=fault.service, destination=None, rule=rule,
                  reason=reason, status=status, error="fault-injected",
                  grpc_status=fault.grpc_status or 0)
    return FaultRule(rule, fault.percent / 100.0, abort, 0.0, reason)


def _endpoints(addresses: tuple[str, ...]) -> tuple[Endpoint, ...]:
    out = []
    for address in addresses:
        host, port = schema.parse_endpoint(address)
        out.append(Endpoint(host=host, port=port, address=address))
    return tuple(out)


def _timeouts(t: schema.Timeouts) -> Timeouts:
    return Timeouts(connect=t.connect, request=t.request, idle=t.idle)


def _circuit(c: schema.CircuitBreakers) -> CircuitLimits:
    limits = CircuitLimits(c.max_connections, c.max_pending_requests, c.max_requests,
                           c.max_retries)
    return DEFAULT_CIRCUIT if limits == DEFAULT_CIRCUIT else limits


def _retry(r: schema.RetryPolicy) -> RetryRules:
    if not r.attempts:
        return NO_RETRIES
    return RetryRules(
        attempts=r.attempts,
        statuses=retry_statuses(r.retry_on, r.statuses),
        per_try_timeout=r.per_try_timeout or 0.0,
        budget_percent=r.budget_percent,
        min_concurrency=r.min_retry_concurrency,
        header_overrides=r.header_overrides,
        grpc_statuses=grpc_retry_statuses(r.retry_on),
        buffer_limit=r.per_request_buffer_limit_bytes,
    )


def _health(h: schema.HealthCheck | None) -> HealthPolicy | None:
    if h is None:
        return None
    return HealthPolicy(h.kind, h.path or "", frozenset(h.expected_statuses), h.interval_seconds,
                        h.timeout_seconds, h.unhealthy_threshold, h.healthy_threshold,
                        h.jitter_seconds)


def _outlier(o: schema.OutlierDetection | None) -> OutlierPolicy | None:
    if o is None:
        return None
    return OutlierPolicy(o.consecutive_5xx, o.consecutive_gateway_errors,
                         o.base_ejection_seconds, o.max_ejection_seconds,
                         o.max_ejection_percent)


def _condition(match: schema.Match) -> Condition:
    return Condition(
        headers=tuple(
            HeaderCondition(name=h.name, exact=h.exact, prefix=h.prefix, present=h.present)
            for h in match.headers
        ),
        path_prefix=match.path_prefix,
        methods=frozenset(match.methods),
    )


def passthrough_route(host: str, port: int, timeouts: Timeouts) -> Route:
    """The route of a request on a captured connection whose authority no service has: to
    the address the client dialled (its original destination), as if forklane were not there."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Route(
        kind="passthrough",
        service=None,
        destination=Destination(
            name=f"passthrough/{address}",
            endpoints=(Endpoint(host=host, port=port, address=address),),
            lb="round_robin",
            timeouts=timeouts,
        ),
        rule="capture",
        reason="no service is named by this authority: the connection's original destination",
    )


def _authority_port(authority: str) -> int:
    """The port an authority dials: `h:8080` → 8080, a bare host → 80."""
    rest = authority[authority.find("]") + 1 :] if authority.startswith("[") else authority
    _, sep, port = rest.rpartition(":")
    return int(port) if sep and port.isdigit() else 80


def _baseline_route(name: str, dest: Destination) -> Route:
    if not dest.endpoints:
        return Route(
            kind="reject",
            service=name,
            destination=None,
            rule=f"services[{name}]",
            reason=f"service {name} has no ready endpoints",
            status=503,
            error="no-endpoints",
        )
    return Route(
        kind="baseline",
        service=name,
        destination=dest,
        rule=f"services[{name}]",
        reason=f"no fork of {name} for this request: baseline",
    )


def build_table(
    snapshot: schema.RoutingSnapshot,
    local: LocalIdentity | None = None,
    namespace: str = "",
    *,
    edge: bool = False,
    clock: Callable[[], float] = time.time,
) -> RoutingTable:
    """Compile a validated snapshot into the table. A local service the snapshot does not know
    is not an error: the inbound listener then simply delivers everything to the local app.
    `namespace` is the proxy's Kubernetes namespace ('' outside a cluster): it decides which
    namespace authorities (bare Service names) this proxy resolves. `edge`: this proxy takes
    requests from outside (an ingress sidecar), so a routing key it cannot verify is removed
    before forwarding. `clock` (epoch seconds) judges signed keys' expiry."""
    carriers = build_carrier_plan(snapshot.carriers)
    interesting: set[str] = set(carriers.header_names) | {ROUTED_MARKER}
    policies = [svc.retry_policy for svc in snapshot.services]
    policies += [fork.retry_policy for fork in snapshot.forks]
    policies += [d.retry_policy for split in snapshot.splits for d in split.destinations]
    if any(p.header_overrides for p in policies):
        interesting.add(RETRY_ON_HEADER)  # read into the request view, where retries look
    services: dict[str, ServiceRoutes] = {}
    authorities: dict[str, ServiceRoutes] = {}
    forks_by_service: dict[str, dict[str, Route]] = {s.name: {} for s in snapshot.services}
    baselines = {
        svc.name: Destination(
            name=f"baseline/{svc.name}",
            endpoints=_endpoints(svc.endpoints),
            lb=svc.lb,
            timeouts=_timeouts(svc.timeouts),
            circuit=_circuit(svc.circuit_breakers),
            outlier=_outlier(svc.outlier_detection),
            retry=_retry(svc.retry_policy),
            health=_health(svc.health_check),
        )
        for svc in snapshot.services
    }
    for i, fork in enumerate(snapshot.forks):
        baseline_dest = baselines[fork.service]
        origin = f" (sandbox {fork.sandbox})" if fork.sandbox else ""
        forks_by_service[fork.service][fork.routing_key] = Route(
            kind="fork",
            service=fork.service,
            destination=Destination(
                name=f"fork/{fork.service}@{fork.routing_key}",
                endpoints=_endpoints(fork.endpoints),
                lb=fork.lb,
                timeouts=_timeouts(fork.timeouts),
                circuit=_circuit(fork.circuit_breakers),
                outlier=_outlier(fork.outlier_detection),
                retry=_retry(fork.retry_policy),
                health=_health(fork.health_check),
            ),
            rule=f"forks[{i}]",
            reason=f"routing key {fork.routing_key} forks {fork.service}{origin}",
            fallback=(
                baseline_dest if fork.fallback == "baseline" and baseline_dest.endpoints else None
            ),
        )
    scoped: list[tuple[schema.Service, ServiceRoutes, dict[int, ServiceRoutes]]] = []
    for svc in snapshot.services:
        baseline = _baseline_route(svc.name, baselines[svc.name])
        splits = []
        for split in snapshot.splits:
            if split.service != svc.name:
                continue
            routes = tuple(
                Route(
                    kind="split",
                    service=svc.name,
                    destination=Destination(
                        name=f"split/{svc.name}/{split.name}/{d.name}",
                        endpoints=_endpoints(d.endpoints),
                        lb=d.lb,
                        timeouts=_timeouts(d.timeouts),
                        circuit=_circuit(d.circuit_breakers),
                        outlier=_outlier(d.outlier_detection),
                        retry=_retry(d.retry_policy),
                        health=_health(d.health_check),
                    ),
                    rule=f"splits[{split.name}]",
                    reason=f"split {split.name} of {svc.name}: destination {d.name}",
                )
                for d in split.destinations
            )
            weights = tuple(float(d.weight) for d in split.destinations)
            running, cumulative = 0.0, []
            for w in weights:
                running += w
                cumulative.append(running)
            rule = SplitRule(
                name=split.name,
                condition=_condition(split.match),
                routes=routes,
                weights=weights,
                cumulative=tuple(cumulative),
                total=running,
                salts=tuple(
                    hashlib.blake2b(d.name.encode(), digest_size=16).digest()
                    for d in split.destinations
                ),
                sticky_header=split.sticky.header if split.sticky else None,
                sticky_cookie=split.sticky.cookie if split.sticky else None,
            )
            splits.append(rule)
            interesting.update(h.name for h in split.match.headers)
            if rule.sticky_header:
                interesting.add(rule.sticky_header)
            if rule.sticky_cookie:
                interesting.add("cookie")
        mirrors = []
        for mirror in snapshot.mirrors:
            if mirror.service != svc.name:
                continue
            mirrors.append(
                MirrorRule(
                    name=mirror.name,
                    condition=_condition(mirror.match),
                    fraction=mirror.percent / 100.0,
                    destination=Destination(
                        name=f"mirror/{svc.name}/{mirror.name}",
                        endpoints=_endpoints(mirror.endpoints),
                        lb="round_robin",
                        timeouts=_timeouts(mirror.timeouts),
                    ),
                )
            )
            interesting.update(h.name for h in mirror.match.headers)
        routes_for = ServiceRoutes(
            name=svc.name,
            baseline=baseline,
            forks=forks_by_service[svc.name],
            splits=tuple(splits),
            mirrors=tuple(mirrors),
        )
        services[svc.name] = routes_for
        by_port = {
            p.port: replace(
                routes_for,
                baseline=_baseline_route(
                    svc.name,
                    replace(
                        baselines[svc.name],
                        name=f"baseline/{svc.name}:{p.port}",
                        endpoints=_endpoints(p.endpoints),
                    ),
                ),
            )
            for p in svc.ports
        }
        for authority in (svc.name, *svc.authorities):
            for variant in schema.authority_variants(authority):
                authorities.setdefault(
                    variant, by_port.get(_authority_port(variant), routes_for)
                )
        if namespace and svc.namespace == namespace:
            scoped.append((svc, routes_for, by_port))
    for svc, routes_for, by_port in scoped:
        for authority in svc.namespace_authorities:
            for variant in schema.authority_variants(authority):
                authorities[variant] = by_port.get(_authority_port(variant), routes_for)
    no_route = Route(
        kind="reject",
        service=None,
        destination=None,
        rule="services",
        reason="no service is named by this authority",
        status=404,
        error="no-route",
    )
    inbound_local: Route | None = None
    inbound_forks: dict[str, Route] = {}
    if local is not None:
        host, port = schema.parse_endpoint(local.app)
        inbound_local = Route(
            kind="local",
            service=local.service,
            destination=Destination(
                name=f"local/{local.service}",
                endpoints=(Endpoint(host=host, port=port, address=local.app),),
                lb="round_robin",
                timeouts=Timeouts(connect=1.0, request=15.0, idle=60.0),
            ),
            rule="local",
            reason=f"no fork of {local.service} for this request: local app",
        )
        own = services.get(local.service)
        if own is not None:
            inbound_forks = own.forks
    faults: dict[tuple[str, str], FaultRule] = {}
    for i, fault in enumerate(snapshot.faults):
        faults[(fault.routing_key, fault.service)] = _fault_rule(i, fault)
    verifier = None
    if snapshot.signing is not None:
        claims = {
            f.routing_key: KeyClaims(f.sandbox, f.tenant, f.expires_at) for f in snapshot.forks
        }
        verifier = KeyVerifier.build(snapshot.signing.secrets, claims, clock)
    return RoutingTable(
        faults=faults,
        version=snapshot.version,
        snapshot=snapshot,
        carriers=carriers,
        authorities=authorities,
        services=services,
        interesting_headers=frozenset(interesting),
        interesting_raw=frozenset(h.encode("latin-1") for h in interesting),
        no_route=no_route,
        local=local,
        inbound_local=inbound_local,
        inbound_forks=inbound_forks,
        verifier=verifier,
        edge=edge,
    )


def destination_names(table: RoutingTable) -> set[str]:
    """Every destination a request can be sent to under `table` (mirrors aside)."""
    names: set[str] = set()
    for svc in (*table.services.values(), *table.authorities.values()):
        routes = [svc.baseline, *svc.forks.values()]
        for split in svc.splits:
            routes.extend(split.routes)
        for route in routes:
            if route.destination is not None:
                names.add(route.destination.name)
    if table.inbound_local is not None and table.inbound_local.destination is not None:
        names.add(table.inbound_local.destination.name)
    return names
