"""The routing snapshot schema: the contract between the control plane and every proxy.

This is the only pydantic model of the routing config. Files, pushed snapshots and the
control-plane compiler all produce or validate a `RoutingSnapshot`; the proxy converts it
once into the frozen, pre-indexed `proxy.table.RoutingTable` and never touches pydantic on
the request path.

Invariants checked here (a snapshot that breaks one is rejected whole, the old table keeps
serving):
- service names are unique, and no authority names two services; a namespace authority (the
  bare Kubernetes Service name, which only pods of that namespace may dial) names one service
  per namespace;
- every fork, split and mirror names a known service ("make before break": a route never
  goes live before the upstream it names is known);
- endpoints are `host:port` with a port in 1..65535;
- a routing key is safe in a header, a baggage value and a tracestate value;
- split weights are non-negative and at least one is positive.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DEFAULT_CARRIERS",
    "Carrier",
    "CircuitBreakers",
    "Fault",
    "Fork",
    "HeaderMatch",
    "HealthCheck",
    "Match",
    "Mirror",
    "OutlierDetection",
    "RetryPolicy",
    "RoutingSnapshot",
    "Service",
    "ServicePort",
    "Signing",
    "Split",
    "SplitDestination",
    "Sticky",
    "Timeouts",
    "authority_variants",
    "parse_endpoint",
]

# A routing key travels in a header, a W3C baggage value (percent-encoding aside) and a
# tracestate value (no ',', '=', spaces). This alphabet is safe in all three untouched.
ROUTING_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
# RFC 9110 token, lowercase: the only header names we accept in configuration.
HEADER_NAME_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
# A W3C baggage key is a token; tracestate keys are narrower (checked by kind below).
BAGGAGE_KEY_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
TRACESTATE_KEY_RE = re.compile(
    r"^(?:[a-z0-9][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})$"
)
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$")
AUTHORITY_RE = re.compile(r"^[a-z0-9.\-_\[\]:]+$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_endpoint(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); raises ValueError with the reason."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"endpoint {text!r}: expected [ipv6]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"endpoint {text!r}: expected host:port")
    if not host:
        raise ValueError(f"endpoint {text!r}: empty host")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"endpoint {text!r}: port must be 1..65535")
    return host, int(port_text)


def authority_variants(authority: str) -> tuple[str, ...]:
    """Every spelling that names the same authority: a bare host also answers for host:80,
    and host:80 also answers for the bare host."""
    if authority.startswith("["):
        end = authority.find("]")
        host, rest = authority[: end + 1], authority[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = authority.partition(":")
    if not port:
        return (host, f"{host}:80")
    if port == "80":
        return (authority, host)
    return (authority,)


def _check_endpoints(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        parse_endpoint(value)
    return values


Endpoints = Annotated[tuple[str, ...], Field(min_length=1)]


class Timeouts(_Frozen):
    """Per-destination timeouts in seconds. `request` bounds the wait for response headers."""

    connect: float = Field(1.0, gt=0, le=60)
    request: float = Field(15.0, gt=0, le=3600)
    idle: float = Field(60.0, gt=0, le=3600)


class CircuitBreakers(_Frozen):
    """Limits per destination, counted across all of this proxy's listeners; a request over
    one is answered 503 `circuit-open` at once instead of queueing behind a sick upstream.
    The defaults are Envoy's (1024, 1024, 1024, 3)."""

    max_connections: int = Field(1024, ge=1, le=1_000_000,
                                 description="upstream connections open to the destination")
    max_pending_requests: int = Field(1024, ge=1, le=1_000_000,
                                      description="requests waiting for a new connection")
    max_requests: int = Field(1024, ge=1, le=1_000_000, description="requests in flight")
    max_retries: int = Field(3, ge=0, le=1_000_000,
                             description="requests in flight that are retrying")


class OutlierDetection(_Frozen):
    """Passive health per endpoint: failures in a row eject it for `base_ejection_seconds`
    times the number of times it has been ejected (capped at `max_ejection_seconds`), never
    more than `max_ejection_percent` of the destination's endpoints at once (but always at
    least one, as Envoy does). Defaults are Envoy's, except that gateway errors (502, 503,
    504, connect failures) count from the first `consecutive_gateway_errors`, 0 = off."""

    consecutive_5xx: int = Field(5, ge=0, le=1000, description="0 = off")
    consecutive_gateway_errors: int = Field(0, ge=0, le=1000, description="0 = off")
    base_ejection_seconds: float = Field(30.0, gt=0, le=3600)
    max_ejection_seconds: float = Field(300.0, gt=0, le=86_400)
    max_ejection_percent: int = Field(10, ge=0, le=100)


RetryOn = Literal[
    "5xx", "gateway-error", "retriable-status-codes",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
]
_PROBE_PATH_RE = re.compile(r"^/[!-~]*$")  # visible ASCII: safe in a request line


class HealthCheck(_Frozen):
    """Active health (Envoy's `health_checks`): every `interval_seconds` (plus up to
    `jitter_seconds`) each endpoint is probed, `http`: a GET of `path` answered with one of
    `expected_statuses` (unset: any 2xx) within `timeout_seconds`; `tcp`: a connection
    opened in time. `unhealthy_threshold` failures in a row take the endpoint out of the
    balancer, `healthy_threshold` successes in a row bring it back. An endpoint starts
    healthy (it is in the snapshot because it is ready). Off unless set."""

    kind: Literal["http", "tcp"] = "http"
    path: str | None = Field(None, max_length=1024, description="http: the path probed")
    expected_statuses: tuple[int, ...] = Field((), max_length=64,
                                               description="http: unset means any 2xx")
    interval_seconds: float = Field(5.0, ge=0.05, le=3600)
    timeout_seconds: float = Field(1.0, gt=0, le=60)
    unhealthy_threshold: int = Field(3, ge=1, le=100)
    healthy_threshold: int = Field(2, ge=1, le=100)
    jitter_seconds: float = Field(0.0, ge=0, le=60)

    @model_validator(mode="after")
    def _kind(self) -> HealthCheck:
        if self.kind == "http":
            if self.path is None:
                raise ValueError("an http health check needs a path")
            if not _PROBE_PATH_RE.fullmatch(self.path):
                raise ValueError(f"path {self.path!r}: starts with '/', visible ASCII only")
            for status in self.expected_statuses:
                if not 100 <= status <= 599:
                    raise ValueError(f"expected status {status}: statuses are 100..599")
        elif self.path is not None or self.expected_statuses:
            raise ValueError("a tcp health check has no path or expected_statuses")
        return self


class RetryPolicy(_Frozen):
    """Retries after an answer, for requests that are safe to send again: an idempotent
    method and no body (the proxy keeps no copy of a body). Off by default (`attempts: 0`).

    `retry_on` (Envoy's words): `5xx`, `gateway-error` (502, 503, 504), and
    `retriable-status-codes` (`statuses`); for gRPC calls also the statuses `cancelled`,
    `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`. A gRPC call is
    retried on those only when the upstream answered trailers-only (nothing went to the
    client yet) and its whole request fit `per_request_buffer_limit_bytes` (kept for the
    retry; whatever its method). A retry goes to another endpoint when there is one. The retries in flight of a destination are bounded by its
    `circuit_breakers.max_retries` and by the budget: `budget_percent` of its requests in
    flight, but at least `min_retry_concurrency`. `per_try_timeout` bounds each attempt's
    wait for the response head (the route's `request` timeout still bounds the whole).
    With `header_overrides` a request's `x-forklane-retry-on` replaces `retry_on`."""

    attempts: int = Field(0, ge=0, le=10, description="retries after the first try")
    retry_on: tuple[RetryOn, ...] = ("gateway-error",)
    statuses: tuple[int, ...] = ()
    per_try_timeout: float | None = Field(None, gt=0, le=3600)
    budget_percent: float = Field(20.0, ge=0, le=100)
    min_retry_concurrency: int = Field(3, ge=0, le=1_000_000)
    header_overrides: bool = False
    per_request_buffer_limit_bytes: int = Field(
        65536, ge=0, le=16 * 1024 * 1024,
        description="request body kept for a gRPC-status retry; a larger request is not "
        "retried on a gRPC status (and never failed for its size)",
    )

    @field_validator("statuses")
    @classmethod
    def _statuses(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        for status in v:
            if not 500 <= status <= 599:
                raise ValueError(f"status {status}: retriable statuses are 500..599")
        return v


class Carrier(_Frozen):
    """Where a routing key may be found, in priority order.

    - `header`: a request header whose whole value is the key (`x-forklane-routing-key`);
    - `baggage`: a member of the W3C `baggage` header (`forklane-routing-key=KEY`);
    - `tracestate`: a member of the W3C `tracestate` header (`forklane=KEY`).
    `emit` says whether the proxy writes the key into this carrier when forwarding.
    """

    kind: Literal["header", "baggage", "tracestate"]
    name: str = Field(description="header name (kind=header) or member key (baggage, tracestate)")
    emit: bool = True

    @model_validator(mode="after")
    def _check_name(self) -> Carrier:
        if self.kind == "header":
            if not HEADER_NAME_RE.fullmatch(self.name):
                raise ValueError(f"header carrier {self.name!r}: must be a lowercase token")
            if self.name in {"baggage", "tracestate", "traceparent", "host", "connection"}:
                raise ValueError(f"header carrier {self.name!r}: reserved header")
        elif self.kind == "baggage" and not BAGGAGE_KEY_RE.fullmatch(self.name):
            raise ValueError(f"baggage carrier {self.name!r}: not a token")
        elif self.kind == "tracestate" and not TRACESTATE_KEY_RE.fullmatch(self.name):
            raise ValueError(f"tracestate carrier {self.name!r}: not a valid tracestate key")
        return self


DEFAULT_CARRIERS: tuple[Carrier, ...] = (
    Carrier(kind="header", name="x-forklane-routing-key"),
    Carrier(kind="baggage", name="forklane-routing-key"),
)


class ServicePort(_Frozen):
    """Traffic dialled to `port` of a service goes to these endpoints instead of the service's
    `endpoints` (a Kubernetes Service with several ports maps each to its own target port)."""

    port: int = Field(ge=1, le=65535)
    endpoints: tuple[str, ...] = ()

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_endpoints(v)


class Service(_Frozen):
    """A baseline service: what names it on the wire and where its baseline runs.

    `endpoints` may be empty (a Kubernetes Service scaled to zero): the service stays known,
    and its baseline answers 503 `no-endpoints` instead of 404 `no-route`.
    """

    name: str
    authorities: tuple[str, ...] = Field(
        default=(), description="Host/:authority values naming it; the name itself is implied"
    )
    endpoints: tuple[str, ...] = ()
    lb: Literal["round_robin", "least_request"] = "round_robin"
    timeouts: Timeouts = Timeouts()
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    outlier_detection: OutlierDetection | None = Field(
        None, description="passive health; unset: the proxy's own defaults (its settings)"
    )
    retry_policy: RetryPolicy = RetryPolicy()
    health_check: HealthCheck | None = Field(
        None, description="active health; unset: no probes"
    )
    namespace: str = Field(
        "", description="Kubernetes namespace of a discovered service ('' for hand-made ones)"
    )
    namespace_authorities: tuple[str, ...] = Field(
        default=(),
        description="authorities only proxies of `namespace` resolve (the bare Service name, "
        "as cluster DNS resolves it only from that namespace); they win over any other "
        "service's authority there",
    )
    ports: tuple[ServicePort, ...] = Field(
        default=(), description="per-port endpoints, for authorities that name one of these ports"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("lowercase letters, digits, '.', '-'")
        return v

    @field_validator("authorities", "namespace_authorities")
    @classmethod
    def _authorities(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(a.strip().lower() for a in v)
        for a in out:
            if not a or not AUTHORITY_RE.fullmatch(a):
                raise ValueError(f"authority {a!r}: host or host:port")
        return out

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_endpoints(v)

    @model_validator(mode="after")
    def _scoped(self) -> Service:
        if self.namespace_authorities and not self.namespace:
            raise ValueError("namespace_authorities need a namespace")
        ports = [p.port for p in self.ports]
        if len(set(ports)) != len(ports):
            raise ValueError("ports: each port at most once")
        return self


class Fork(_Frozen):
    """Requests carrying `routing_key` that reach `service` go to `endpoints`."""

    routing_key: str
    service: str
    endpoints: Endpoints
    fallback: Literal["baseline", "fail"] = Field(
        "fail", description="when every fork endpoint is unreachable: baseline, or 503"
    )
    sandbox: str = Field("", description="the sandbox (or route group) it comes from; for reasons")
    tenant: str = Field("", max_length=253, description="the tenant the key belongs to (signed)")
    expires_at: int | None = Field(
        None, ge=0, description="epoch seconds after which the key no longer reaches the fork"
    )
    lb: Literal["round_robin", "least_request"] = "round_robin"
    timeouts: Timeouts = Timeouts()
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    outlier_detection: OutlierDetection | None = Field(
        None, description="passive health; unset: the proxy's own defaults (its settings)"
    )
    retry_policy: RetryPolicy = RetryPolicy()
    health_check: HealthCheck | None = Field(
        None, description="active health; unset: no probes"
    )

    @field_validator("routing_key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not ROUTING_KEY_RE.fullmatch(v):
            raise ValueError("1-128 of [A-Za-z0-9._-], starting alphanumeric")
        return v

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_endpoints(v)


class HeaderMatch(_Frozen):
    """Exactly one of `exact`, `prefix`, `present` must be set."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> HeaderMatch:
        if not HEADER_NAME_RE.fullmatch(self.name):
            raise ValueError(f"header {self.name!r}: must be a lowercase token")
        if sum(x is not None for x in (self.exact, self.prefix, self.present)) != 1:
            raise ValueError("set exactly one of exact, prefix, present")
        return self


class Match(_Frozen):
    """All given conditions must hold (an empty match matches everything)."""

    headers: tuple[HeaderMatch, ...] = ()
    path_prefix: str | None = None
    methods: tuple[str, ...] = ()

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m.upper() for m in v)

    @field_validator("path_prefix")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("path_prefix must start with '/'")
        return v


class SplitDestination(_Frozen):
    name: str
    weight: int = Field(ge=0, le=1_000_000)
    endpoints: Endpoints
    lb: Literal["round_robin", "least_request"] = "round_robin"
    timeouts: Timeouts = Timeouts()
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    outlier_detection: OutlierDetection | None = Field(
        None, description="passive health; unset: the proxy's own defaults (its settings)"
    )
    retry_policy: RetryPolicy = RetryPolicy()
    health_check: HealthCheck | None = Field(
        None, description="active health; unset: no probes"
    )

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_endpoints(v)


class Sticky(_Frozen):
    """Hash this header or cookie so one user always lands on the same destination."""

    header: str | None = None
    cookie: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Sticky:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("set exactly one of header, cookie")
        if self.header is not None and not HEADER_NAME_RE.fullmatch(self.header):
            raise ValueError(f"header {self.header!r}: must be a lowercase token")
        return self


class Split(_Frozen):
    """Weighted traffic policy for a service (canary, A/B). First matching split wins."""

    name: str
    service: str
    match: Match = Match()
    destinations: tuple[SplitDestination, ...] = Field(min_length=1)
    sticky: Sticky | None = None

    @model_validator(mode="after")
    def _weights(self) -> Split:
        if sum(d.weight for d in self.destinations) <= 0:
            raise ValueError("at least one destination needs a positive weight")
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError("destination names must be unique within a split")
        return self


class Mirror(_Frozen):
    """Copy `percent` % of matching requests to `endpoints`; the copy's answer is discarded."""

    name: str
    service: str
    match: Match = Match()
    percent: float = Field(ge=0, le=100)
    endpoints: Endpoints
    timeouts: Timeouts = Timeouts(request=5.0)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_endpoints(v)


class Fault(_Frozen):
    """For `percent` % of requests carrying `routing_key` to `service`: answer with an HTTP
    status (`abort_status`) or, for gRPC calls, a gRPC status (`grpc_status`; HTTP requests
    get `abort_status`, 503 by default), or hold the request `delay_ms` before forwarding.
    Requests without the key are never touched."""

    routing_key: str
    service: str
    percent: float = Field(100.0, gt=0, le=100)
    abort_status: int | None = Field(None, ge=400, le=599)
    grpc_status: int | None = Field(None, ge=1, le=16)
    delay_ms: int | None = Field(None, ge=1, le=60_000)
    sandbox: str = Field("", description="the sandbox it comes from; for reasons")

    @field_validator("routing_key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not ROUTING_KEY_RE.fullmatch(v):
            raise ValueError("1-128 of [A-Za-z0-9._-], starting alphanumeric")
        return v

    @model_validator(mode="after")
    def _one_effect(self) -> Fault:
        aborts = self.abort_status is not None or self.grpc_status is not None
        if aborts == (self.delay_ms is not None):
            raise ValueError("a fault either aborts (abort_status / grpc_status) or delays "
                             "(delay_ms)")
        return self

class Signing(_Frozen):
    """Signed routing keys (`proxy.context.signing`): with this set, only `KEY.SIGNATURE`
    under one of `secrets` (newest first; during a rotation old and new) reaches a fork, and
    only before the fork's `expires_at`. Everything else goes to the baseline, counted."""

    secrets: tuple[str, ...] = Field(min_length=1, max_length=8)

    @field_validator("secrets")
    @classmethod
    def _strong(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for secret in v:
            if len(secret) < 16:
                raise ValueError("a signing secret has at least 16 characters")
        return v


class RoutingSnapshot(_Frozen):
    """One complete, versioned routing configuration. Replaced whole, never patched."""

    version: str = Field(min_length=1, max_length=128)
    carriers: tuple[Carrier, ...] = DEFAULT_CARRIERS
    services: tuple[Service, ...] = ()
    forks: tuple[Fork, ...] = ()
    splits: tuple[Split, ...] = ()
    mirrors: tuple[Mirror, ...] = ()
    faults: tuple[Fault, ...] = ()
    signing: Signing | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, v: object) -> object:
        # `version: 1` in YAML is a number; a version is an opaque label, so accept it as text.
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _consistent(self) -> RoutingSnapshot:
        names: set[str] = set()
        owner: dict[str, str] = {}
        for svc in self.services:
            if svc.name in names:
                raise ValueError(f"services: duplicate service {svc.name!r}")
            names.add(svc.name)
            for given in (svc.name, *svc.authorities):
                for auth in authority_variants(given):
                    if owner.get(auth, svc.name) != svc.name:
                        raise ValueError(
                            f"services: authority {given!r} names both {owner[auth]!r}"
                            f" and {svc.name!r}"
                        )
                    owner[auth] = svc.name
        scoped: dict[tuple[str, str], str] = {}
        for svc in self.services:
            for given in svc.namespace_authorities:
                for auth in authority_variants(given):
                    other = scoped.setdefault((svc.namespace, auth), svc.name)
                    if other != svc.name:
                        raise ValueError(
                            f"services: authority {given!r} names both {other!r} and"
                            f" {svc.name!r} in namespace {svc.namespace!r}"
                        )
        seen_forks: set[tuple[str, str]] = set()
        for i, fork in enumerate(self.forks):
            if fork.service not in names:
                raise ValueError(f"forks[{i}]: unknown service {fork.service!r}")
            pair = (fork.routing_key, fork.service)
            if pair in seen_forks:
                raise ValueError(
                    f"forks[{i}]: key {fork.routing_key!r} already forks {fork.service!r}"
                )
            seen_forks.add(pair)
        seen_faults: set[tuple[str, str]] = set()
        for i, fault in enumerate(self.faults):
            if fault.service not in names:
                raise ValueError(f"faults[{i}]: unknown service {fault.service!r}")
            pair = (fault.routing_key, fault.service)
            if pair in seen_faults:
                raise ValueError(
                    f"faults[{i}]: key {fault.routing_key!r} already has a fault for "
                    f"{fault.service!r}"
                )
            seen_faults.add(pair)
        claims: dict[str, tuple[str, str, int | None]] = {}
        for i, fork in enumerate(self.forks):
            claim = (fork.sandbox, fork.tenant, fork.expires_at)
            if self.signing is not None and claims.setdefault(fork.routing_key, claim) != claim:
                raise ValueError(
                    f"forks[{i}]: key {fork.routing_key!r} is signed for one sandbox, tenant "
                    "and expiry; its forks disagree"
                )
        policies = (
            ("splits", [(x.service, x.name) for x in self.splits]),
            ("mirrors", [(x.service, x.name) for x in self.mirrors]),
        )
        for kind, pairs in policies:
            seen: set[tuple[str, str]] = set()
            for i, (service, name) in enumerate(pairs):
                if service not in names:
                    raise ValueError(f"{kind}[{i}]: unknown service {service!r}")
                if (service, name) in seen:
                    raise ValueError(f"{kind}[{i}]: duplicate name {name!r}")
                seen.add((service, name))
        carrier_ids = [(c.kind, c.name) for c in self.carriers]
        if len(set(carrier_ids)) != len(carrier_ids):
            raise ValueError("carriers: duplicate carrier")
        return self
