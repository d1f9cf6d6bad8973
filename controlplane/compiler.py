"""Compiler: every stored resource → one `proxy.schema.RoutingSnapshot`. Pure: no I/O.

Invariants:
- deterministic: the same resources give the same snapshot (everything sorted by name);
- `version` is the store revision the resources were read at;
- a resource that cannot compile (an unknown service, a routing key taken twice, two forks
  of one service in one route group, an authority claimed twice in any of its spellings, a
  bare name claimed twice in one namespace …) is left out and reported
  in `Compiled.problems[(plural, name)]`; it never breaks the snapshot for the others, so
  the result always validates;
- forks of Terminating sandboxes are withdrawn; Pending and Ready ones are compiled;
- every fork carries its sandbox's tenant (a signed claim); a route group joins only sandboxes
  of its own tenant that its creator may use: created by the same subject, or listing it in
  `spec.sharedWith`. Other matches are not selected and only counted (`not_selected`), so a
  developer's key never reaches a fork it was not given;
- a `forkOf` fork is routed to the ready pod endpoints in the sandbox's status, and not at
  all while it has none; a fork `forklane connect` serves is routed to its tunnel endpoint;
- splits of one service apply in split-name order (the proxy takes the first that matches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from forklane.controlplane import wire
from forklane.controlplane.store.base import DEFAULT_TENANT
from forklane.proxy import schema
from forklane.proxy.context.signing import sign_routing_key

__all__ = [
    "Compiled",
    "Inputs",
    "compile_snapshot",
    "error_paths",
    "may_use",
    "service_to_schema",
    "split_to_schema",
    "tenant_of",
]


@dataclass(frozen=True, slots=True)
class Inputs:
    revision: int
    services: Sequence[wire.ServiceResource] = ()
    sandboxes: Sequence[wire.Sandbox] = ()
    routegroups: Sequence[wire.RouteGroup] = ()
    splits: Sequence[wire.Split] = ()


@dataclass(frozen=True, slots=True)
class Compiled:
    snapshot: schema.RoutingSnapshot
    problems: Mapping[tuple[str, str], str] = field(default_factory=dict)
    group_members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    routing_keys: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # With signing on: (plural, name) -> `KEY.SIGNATURE`, the key its owner hands out.
    signed_keys: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # routing key -> (creator, tenant) of the compiled sandbox or route group holding it
    key_owners: Mapping[str, tuple[str | None, str]] = field(default_factory=dict)
    # route group -> how many matching sandboxes of its tenant its creator may not use
    not_selected: Mapping[str, int] = field(default_factory=dict)


def tenant_of(meta: wire.Metadata) -> str:
    """Objects written before tenants existed belong to the default tenant."""
    return meta.tenant or DEFAULT_TENANT


def may_use(creator: str | None, sb: wire.Sandbox) -> bool:
    """Whether a route group made by `creator` may join `sb` (same tenant assumed): its own,
    or shared with it by its owner."""
    if sb.metadata.created_by == creator:
        return True
    return creator is not None and creator in (sb.spec.shared_with or ())


def key_expiry(sb: wire.Sandbox) -> int | None:
    """When a sandbox's key stops reaching its forks (epoch seconds): its TTL's end."""
    ttl, meta = sb.spec.ttl, sb.metadata
    if ttl is None or meta.creation_timestamp is None:
        return None
    since = meta.update_timestamp if ttl.since == "update" else meta.creation_timestamp
    return int((since or meta.creation_timestamp).timestamp()) + ttl.seconds


def error_paths(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """(field path like `spec.forks[0].endpoints[0]`, message) for each error."""
    out: list[tuple[str, str]] = []
    for err in exc.errors():
        path = prefix
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        out.append((path or "(body)", str(err["msg"]).removeprefix("Value error, ")))
    return out


def _reason(exc: ValidationError) -> str:
    return "; ".join(f"{p}: {m}" if p != "(body)" else m for p, m in error_paths(exc))


def _timeouts(spec: wire.TimeoutsSpec | None) -> schema.Timeouts:
    if spec is None:
        return schema.Timeouts()
    return schema.Timeouts(connect=spec.connect, request=spec.request, idle=spec.idle)


def _circuit(spec: wire.CircuitBreakersSpec | None) -> schema.CircuitBreakers:
    if spec is None:
        return schema.CircuitBreakers()
    return schema.CircuitBreakers(**spec.model_dump())


def _outlier(spec: wire.OutlierDetectionSpec | None) -> schema.OutlierDetection | None:
    return None if spec is None else schema.OutlierDetection(**spec.model_dump())


def _retry(spec: wire.RetryPolicySpec | None) -> schema.RetryPolicy:
    if spec is None:
        return schema.RetryPolicy()
    data = spec.model_dump()
    data["retry_on"] = tuple(data["retry_on"])
    data["statuses"] = tuple(data["statuses"])
    return schema.RetryPolicy(**data)


def _health(spec: wire.HealthCheckSpec | None) -> schema.HealthCheck | None:
    if spec is None:
        return None
    data = spec.model_dump()
    data["expected_statuses"] = tuple(data["expected_statuses"])
    return schema.HealthCheck(**data)


def service_to_schema(name: str, spec: wire.ServiceSpec) -> schema.Service:
    """Raises ValidationError when the spec alone is not a valid service."""
    return schema.Service(
        name=name,
        authorities=tuple(spec.authorities),
        endpoints=tuple(spec.endpoints),
        lb=spec.lb,
        timeouts=_timeouts(spec.timeouts),
        circuit_breakers=_circuit(spec.circuit_breakers),
        outlier_detection=_outlier(spec.outlier_detection),
        retry_policy=_retry(spec.retry_policy),
        health_check=_health(spec.health_check),
        namespace=spec.namespace,
        namespace_authorities=tuple(spec.namespace_authorities),
        ports=tuple(
            schema.ServicePort(port=p.port, endpoints=tuple(p.endpoints)) for p in spec.ports
        ),
    )


def _match(spec: wire.MatchSpec | None) -> schema.Match:
    if spec is None:
        return schema.Match()
    return schema.Match(
        headers=tuple(
            schema.HeaderMatch(name=h.name, exact=h.exact, prefix=h.prefix, present=h.present)
            for h in spec.headers
        ),
        path_prefix=spec.path_prefix,
        methods=tuple(spec.methods),
    )


def split_to_schema(
    name: str, spec: wire.SplitSpec
) -> tuple[schema.Split | None, tuple[schema.Mirror, ...]]:
    """Raises ValidationError when the spec alone is invalid (bad weights, header names …)."""
    split = None
    if spec.destinations:
        split = schema.Split(
            name=name,
            service=spec.service,
            match=_match(spec.match),
            destinations=tuple(
                schema.SplitDestination(
                    name=d.name, weight=d.weight, endpoints=tuple(d.endpoints),
                    circuit_breakers=_circuit(d.circuit_breakers),
                    outlier_detection=_outlier(d.outlier_detection),
                    retry_policy=_retry(d.retry_policy),
                    health_check=_health(d.health_check),
                )
                for d in spec.destinations
            ),
            sticky=(
                None
                if spec.sticky is None
                else schema.Sticky(header=spec.sticky.header, cookie=spec.sticky.cookie)
            ),
        )
    mirrors = tuple(
        schema.Mirror(
            name=f"{name}.{m.name}",
            service=spec.service,
            match=_match(m.match if m.match is not None else spec.match),
            percent=m.percent,
            endpoints=tuple(m.endpoints),
        )
        for m in spec.mirrors
    )
    names = [m.name for m in spec.mirrors]
    if len(set(names)) != len(names):
        raise ValueError("mirrors: names must be unique within a split")
    return split, mirrors


def fork_endpoints(sb: wire.Sandbox, fork: wire.ForkSpec) -> tuple[str, ...]:
    """Where a fork's requests go: the tunnel endpoint while `forklane connect` serves it
    (`status.connections`, reconnecting ones included), else its `endpoints`, or for a
    `forkOf` workload the ready pod endpoints the fork controller reported in the status
    (none yet: no route, so keyed requests keep reaching the baseline until the fork can
    answer); a `local` fork nobody is connected to has no route either."""
    for connection in (sb.status.connections or ()) if sb.status is not None else ():
        if connection.service == fork.service:
            return (connection.endpoint,)
    if fork.local:
        return ()
    if fork.fork_of is None:
        return tuple(fork.endpoints)
    for workload in sb.status.workloads if sb.status is not None else ():
        if workload.service == fork.service:
            return tuple(workload.endpoints)
    return ()


def _sandbox_key(sb: wire.Sandbox) -> str | None:
    if sb.spec.routing_key:
        return sb.spec.routing_key
    return sb.status.routing_key if sb.status else None


ServiceCache = dict[int, tuple[wire.ServiceResource, schema.Service]]


def _service(res: wire.ServiceResource, cache: ServiceCache | None) -> schema.Service:
    """`service_to_schema`, memoised on the resource object (models are immutable once read,
    and the reconciler hands the same object back while its resourceVersion is unchanged), so
    a change of one discovered service among thousands validates one, not all."""
    if cache is None:
        return service_to_schema(res.metadata.name, res.spec)
    hit = cache.get(id(res))
    if hit is not None and hit[0] is res:
        return hit[1]
    svc = service_to_schema(res.metadata.name, res.spec)
    cache[id(res)] = (res, svc)
    return svc


def compile_snapshot(
    inputs: Inputs,
    carriers: tuple[schema.Carrier, ...] | None = None,
    service_cache: ServiceCache | None = None,
    signing_secrets: tuple[str, ...] = (),
) -> Compiled:
    """`service_cache` (optional, owned by the caller) memoises per-service validation; the
    caller drops entries of resources it no longer holds. `signing_secrets` (newest first)
    turn signed routing keys on: forks carry the claims the proxies verify, and
    `signed_keys` holds each key's signed form under the newest secret."""
    problems: dict[tuple[str, str], str] = {}
    keys: dict[tuple[str, str], str] = {}

    # services: first (by name) to claim an authority keeps it
    services: dict[str, schema.Service] = {}
    owner: dict[str, str] = {}
    scoped_owner: dict[tuple[str, str], str] = {}
    for res in sorted(inputs.services, key=lambda r: r.metadata.name):
        name = res.metadata.name
        try:
            svc = _service(res, service_cache)
        except ValidationError as exc:
            problems[("services", name)] = _reason(exc)
            continue
        claimed = [v for a in (svc.name, *svc.authorities) for v in schema.authority_variants(a)]
        scoped = [
            (svc.namespace, v)
            for a in svc.namespace_authorities
            for v in schema.authority_variants(a)
        ]
        clash = [a for a in claimed if owner.get(a, name) != name]
        scoped_clash = [a for a in scoped if scoped_owner.get(a, name) != name]
        if clash:
            problems[("services", name)] = (
                f"authority {clash[0]!r} already names service {owner[clash[0]]!r}"
            )
            continue
        if scoped_clash:
            ns, authority = scoped_clash[0]
            problems[("services", name)] = (
                f"authority {authority!r} already names service"
                f" {scoped_owner[scoped_clash[0]]!r} in namespace {ns!r}"
            )
            continue
        for a in claimed:
            owner[a] = name
        for pair in scoped:
            scoped_owner[pair] = name
        services[name] = svc

    # sandboxes
    forks: list[schema.Fork] = []
    faults: list[schema.Fault] = []
    taken: dict[str, str] = {}  # routing key -> "sandboxes/x" or "routegroups/y"
    owners: dict[str, tuple[str | None, str]] = {}
    sandbox_forks: dict[str, list[schema.Fork]] = {}
    sandboxes = sorted(inputs.sandboxes, key=lambda r: r.metadata.name)
    for sb in sandboxes:
        name = sb.metadata.name
        if sb.status is not None and sb.status.phase == "Terminating":
            continue
        key = _sandbox_key(sb)
        if key is None:
            problems[("sandboxes", name)] = "no routing key assigned yet"
            continue
        keys[("sandboxes", name)] = key
        missing = sorted(
            ({f.service for f in sb.spec.forks} | {f.service for f in sb.spec.faults or ()})
            - services.keys()
        )
        if missing:
            problems[("sandboxes", name)] = f"unknown service {missing[0]!r}"
            continue
        if key in taken:
            problems[("sandboxes", name)] = f"routing key already used by {taken[key]}"
            continue
        try:
            mine = [
                schema.Fork(
                    routing_key=key,
                    service=f.service,
                    endpoints=endpoints,
                    fallback=f.fallback or sb.spec.fallback,
                    sandbox=name,
                    tenant=tenant_of(sb.metadata),
                    expires_at=key_expiry(sb),
                    lb=services[f.service].lb,
                    timeouts=services[f.service].timeouts,
                    circuit_breakers=services[f.service].circuit_breakers,
                    outlier_detection=services[f.service].outlier_detection,
                    retry_policy=services[f.service].retry_policy,
                    health_check=services[f.service].health_check,
                )
                for f in sorted(sb.spec.forks, key=lambda f: f.service)
                if (endpoints := fork_endpoints(sb, f))
            ]
        except ValidationError as exc:
            problems[("sandboxes", name)] = _reason(exc)
            continue
        taken[key] = f"sandboxes/{name}"
        owners[key] = (sb.metadata.created_by, tenant_of(sb.metadata))
        sandbox_forks[name] = mine
        forks.extend(mine)
        faults.extend(
            schema.Fault(
                routing_key=key, service=f.service, percent=f.percent,
                abort_status=f.abort_status, grpc_status=f.grpc_status, delay_ms=f.delay_ms,
                sandbox=name,
            )
            for f in sorted(sb.spec.faults or (), key=lambda f: f.service)
        )

    # route groups: the group's key joins the forks of every matching compiled sandbox
    members: dict[str, tuple[str, ...]] = {}
    not_selected: dict[str, int] = {}
    for rg in sorted(inputs.routegroups, key=lambda r: r.metadata.name):
        name = rg.metadata.name
        key = rg.spec.routing_key or (rg.status.routing_key if rg.status else None)
        if key is None:
            problems[("routegroups", name)] = "no routing key assigned yet"
            continue
        keys[("routegroups", name)] = key
        if key in taken:
            problems[("routegroups", name)] = f"routing key already used by {taken[key]}"
            continue
        tenant, creator = tenant_of(rg.metadata), rg.metadata.created_by
        matching = [
            sb for sb in sandboxes
            if sb.metadata.name in sandbox_forks and tenant_of(sb.metadata) == tenant
            and all(sb.metadata.labels.get(k) == v for k, v in rg.spec.selector.items())
        ]
        matched = tuple(sb.metadata.name for sb in matching if may_use(creator, sb))
        if len(matching) > len(matched):
            not_selected[name] = len(matching) - len(matched)
        members[name] = matched
        by_service: dict[str, str] = {}
        group_forks: list[schema.Fork] = []
        problem = None
        for sb_name in matched:
            for fork in sandbox_forks[sb_name]:
                if fork.service in by_service:
                    problem = (
                        f"service {fork.service!r} is forked by both sandboxes "
                        f"{by_service[fork.service]!r} and {sb_name!r}"
                    )
                    break
                by_service[fork.service] = sb_name
                group_forks.append(
                    fork.model_copy(
                        update={"routing_key": key, "sandbox": name, "fallback": rg.spec.fallback,
                                "expires_at": None}
                    )
                )
            if problem:
                break
        if problem:
            problems[("routegroups", name)] = problem
            continue
        taken[key] = f"routegroups/{name}"
        owners[key] = (creator, tenant)
        forks.extend(sorted(group_forks, key=lambda f: f.service))

    # splits and mirrors
    splits: list[schema.Split] = []
    mirrors: list[schema.Mirror] = []
    for sp in sorted(inputs.splits, key=lambda r: r.metadata.name):
        name = sp.metadata.name
        if sp.spec.service not in services:
            problems[("splits", name)] = f"unknown service {sp.spec.service!r}"
            continue
        try:
            split, its_mirrors = split_to_schema(name, sp.spec)
        except (ValidationError, ValueError) as exc:
            problems[("splits", name)] = (
                _reason(exc) if isinstance(exc, ValidationError) else str(exc)
            )
            continue
        if split is not None:
            splits.append(split)
        mirrors.extend(its_mirrors)

    signing = schema.Signing(secrets=signing_secrets) if signing_secrets else None
    signed: dict[tuple[str, str], str] = {}
    if signing_secrets:
        claims = {f.routing_key: f for f in forks}
        for where, key in keys.items():
            claim = claims.get(key)
            if claim is not None:
                signed[where] = sign_routing_key(
                    signing_secrets[0], key, claim.sandbox, claim.tenant, claim.expires_at
                )
    snapshot = schema.RoutingSnapshot(
        version=str(inputs.revision),
        carriers=carriers if carriers is not None else schema.DEFAULT_CARRIERS,
        services=tuple(services[n] for n in sorted(services)),
        forks=tuple(forks),
        splits=tuple(splits),
        mirrors=tuple(mirrors),
        faults=tuple(faults),
        signing=signing,
    )
    return Compiled(snapshot=snapshot, problems=problems, group_members=members, routing_keys=keys,
                    signed_keys=signed, key_owners=owners, not_selected=not_selected)
