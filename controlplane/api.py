"""The REST API (aiohttp) under `/api/v1`: resources, proxies, tokens, audit, snapshot.

Handlers are thin: parse and validate the request (pydantic wire models), check the policy
(`auth.authorize`), call the store, audit, answer. Every error leaves through one middleware
as a `wire.ErrorBody` with the right status; a bug answers 500 with no traceback.

Invariants:
- a sandbox or route group always has a routing key after create; generated ones are 128
  random bits as 32 characters of `[a-f0-9]`; a key is used by at most one sandbox or route
  group (409 otherwise); an update that omits the key keeps the current one;
- writes name the expected resourceVersion (body `metadata.resourceVersion` or `If-Match`);
  a stale one answers 409 and nothing changes;
- every successful mutation is appended to the audit log;
- what can be judged at once is judged at once: a fork or split naming a service that does
  not exist is a 422 naming the field (`spec.forks[0].service`), and a fork endpoint that
  does not accept a connection comes back as a `Warning: 299` header on the answer;
- a sandbox created without a TTL gets the control plane's default (`default_sandbox_ttl`);
  an update that omits the TTL or the routing key keeps the current one;
- an update that changes nothing writes nothing (no new resourceVersion, no audit entry);
- `?dryRun=All` on create and update runs every check and answers what would be stored,
  storing nothing;
- a developer token acts in its tenant: another tenant's sandbox or route group answers the
  404 a missing one does (the refusal is audited), a colleague's answers 403, and keys are
  shown only to their owners and admins (snapshot view, routes view, a taken key's 409).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDict
from pydantic import BaseModel, ValidationError

from forklane.controlplane import wire
from forklane.controlplane.auth import (
    ANONYMOUS_ADMIN,
    Authenticator,
    Principal,
    Verb,
    authorize,
    create_tenant,
    new_token,
)
from forklane.controlplane.compiler import service_to_schema, split_to_schema
from forklane.controlplane.errors import ApiError, from_store_error, from_validation_error
from forklane.controlplane.events import PROXIES
from forklane.controlplane.openapi import OPENAPI
from forklane.controlplane.publisher import SnapshotPublisher
from forklane.controlplane.ratelimit import RateLimiter
from forklane.controlplane.reconciler import Clock, Probe, tcp_probe, utcnow
from forklane.controlplane.resources import KINDS, TENANTED, ResourceKind, to_wire
from forklane.controlplane.routes import GroupMembers, KeyOwners, list_or_watch_routes
from forklane.controlplane.selector import parse_selector
from forklane.controlplane.store.base import (
    DEFAULT_TENANT,
    AuditEntry,
    Record,
    Store,
    StoreError,
)
from forklane.controlplane.tap import TapHub
from forklane.controlplane.tap_api import post_deliveries, stream_tap
from forklane.controlplane.termination import has_workloads, terminating_status
from forklane.controlplane.watch import serve_watch
from forklane.proxy.jsonlimits import JsonTooDeep, loads_bounded

__all__ = ["ApiContext", "ProxyLister", "build_app"]

log = logging.getLogger("forklane.controlplane.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 1 << 20
MAX_LIMIT = 1000


class DeliveryLister(Protocol):
    urls: tuple[str, ...]

    def deliveries(self) -> list[dict[str, Any]]: ...


class TunnelServer(Protocol):
    async def serve(self, request: web.Request, record: Record,
                    audit: Callable[[], Awaitable[None]]) -> web.StreamResponse: ...


class ProxyLister(Protocol):
    def list(self) -> Sequence[wire.ProxyInfo]: ...

    def events(self) -> Sequence[wire.Event]: ...


@dataclass(frozen=True, slots=True)
class ApiContext:
    store: Store
    publisher: SnapshotPublisher
    proxies: ProxyLister
    authenticator: Authenticator | None  # None: auth disabled (local demo only)
    clock: Clock = utcnow
    default_ttl_seconds: int = 3600
    probe: Probe = tcp_probe
    probe_timeout: float = 1.0
    bookmark_interval: float = 15.0
    replica: str = ""
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    # route group's key -> member sandboxes, as last compiled (the routes view names the member)
    group_members: GroupMembers = dict
    # routing key -> (creator, tenant) of the sandbox or route group holding it, as compiled
    key_owners: KeyOwners = dict
    # per-token request budget (rate 0: off), and the budget of audit entries for calls
    # without a valid token (so a flood of bad tokens cannot fill the audit log)
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(rate=0, burst=0))
    unauthenticated_audits: RateLimiter = field(
        default_factory=lambda: RateLimiter(rate=1.0, burst=60, max_keys=1)
    )
    taps: TapHub = field(default_factory=TapHub)
    webhooks: DeliveryLister | None = None
    tunnels: TunnelServer | None = None  # `forklane connect` (controlplane.tunnel); None: off


class Hidden(ApiError):
    """Another tenant's object: answered as the 404 a missing one gets, audited with why."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(404, message)
        self.why = why


CTX = web.AppKey("ctx", ApiContext)
PRINCIPAL = web.RequestKey("principal", Principal)
_PUBLIC = frozenset({"/healthz", "/readyz", "/version", "/metrics", "/api/v1/openapi.json"})


def _respond(body: Any, status: int = 200, headers: Any = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, separators=(",", ":")),
        content_type="application/json",
        headers=headers,
    )


def _error_response(err: ApiError) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="forklane"'} if err.status == 401 else None
    return _respond(wire.dump(err.body()), err.status, headers)


@web.middleware
async def _errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.path not in _PUBLIC:
            principal = request[PRINCIPAL] = await _authenticate(request)
            ctx = request.app[CTX]
            # admins are not limited (the operator's own tools); every other token is
            wait = 0.0 if principal.role == "admin" else ctx.limiter.take(
                _viewer(principal), time.monotonic())
            if wait > 0:
                err = ApiError(429, f"too many requests for {principal.subject!r}; retry in "
                                    f"{wait:.1f} s")
                await _audit_denied(request, err)
                response = _error_response(err)
                response.headers["Retry-After"] = RateLimiter.retry_after(wait)
                return response
        return await handler(request)
    except ApiError as err:
        if err.status in (401, 403) or isinstance(err, Hidden):
            await _audit_denied(request, err)
        return _error_response(err)
    except StoreError as exc:
        return _error_response(from_store_error(exc))
    except web.HTTPMethodNotAllowed as exc:
        response = _error_response(ApiError(405, f"method {request.method} not allowed"))
        response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))  # RFC 9110 §15.5.6
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: "no such resource or path"}
        return _error_response(ApiError(exc.status, message.get(exc.status, exc.reason)))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(ApiError(500, "internal error; see the control-plane log"))


async def _audit_denied(request: web.Request, err: ApiError) -> None:
    """Every refused call leaves an audit entry: who, what, and why (the reason as `name`).
    Calls without a valid token are audited within a small budget of their own."""
    ctx = request.app[CTX]
    principal = request.get(PRINCIPAL)
    if principal is None:
        if ctx.unauthenticated_audits.take("", time.monotonic()) > 0:
            return
        subject = "(no valid token)"
    else:
        subject = principal.subject
    resource = request.path.removeprefix("/api/v1/").split("/", 1)[0] or request.path
    why = err.why if isinstance(err, Hidden) else err.message
    entry = AuditEntry(ctx.clock(), subject, f"denied-{request.method.lower()}", resource,
                       f"{request.path}: {err.status} {why}"[:500], None, None)
    try:
        await ctx.store.append_audit(entry)
    except StoreError:
        log.warning("could not audit a denied call: %s", entry)


async def _authenticate(request: web.Request) -> Principal:
    authn = request.app[CTX].authenticator
    if authn is None:
        return ANONYMOUS_ADMIN
    header = request.headers.get("Authorization")
    if header is None:
        raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Authorization must be 'Bearer <token>'")
    principal = await authn.authenticate(token.strip())
    if principal is None:
        raise ApiError(401, "invalid or revoked token")
    return principal


def _check(request: web.Request, verb: Verb, resource: str, record: Record | None = None
           ) -> Principal:
    """The principal, when the policy allows `verb` (on `record`, an existing object)."""
    principal: Principal = request[PRINCIPAL]
    owner, tenant = (None, None) if record is None else (record.created_by, record.tenant)
    refusal = authorize(principal, verb, resource, owner, tenant)
    if refusal is None:
        return principal
    if refusal.hidden and record is not None:
        raise Hidden(f"{resource}/{record.name} not found", refusal.reason)
    raise ApiError(403, refusal.reason)


def _visible(principal: Principal, plural: str, record: Record) -> bool:
    return authorize(principal, "get", plural, record.created_by, record.tenant) is None


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, not {request.content_type!r}")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    try:
        data = loads_bounded(raw)
    except JsonTooDeep as exc:
        raise ApiError(400, f"body is not acceptable JSON: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    return data


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """Strict, as JSON: no coercion at the boundary ("3600" is not a number, `true` is not a
    weight), unknown fields rejected (every wire model forbids extras)."""
    try:
        return model.model_validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc


_CLIENT_METADATA = ("name", "labels", "tenant")
# what `metadata` may hold: what the server hands out (set aside on input), nothing else
_METADATA_FIELDS = frozenset(
    f.alias or n for n, f in wire.ServiceMetadata.model_fields.items()
)


def _resource_input(kind: ResourceKind, data: dict[str, Any]) -> Any:
    """Validate a create/update body. An unknown `metadata` field (or a `status` that is not
    an object) is a 422 rather than silently dropped; what the server manages (uid,
    generation, timestamps, status) is set aside, as a document read back and sent again
    carries it; the rest is validated strictly."""
    status = data.get("status")
    if status is not None and not isinstance(status, dict):
        raise ApiError(422, "invalid resource: status: must be an object (it is ignored)",
                       [wire.FieldError(field="status", message="must be an object")])
    data = {k: v for k, v in data.items() if k != "status"}
    meta = data.get("metadata")
    if isinstance(meta, dict):
        unknown = sorted(set(meta) - _METADATA_FIELDS)
        if unknown:
            details = [wire.FieldError(field=f"metadata.{k}", message="Extra inputs are not "
                                       "permitted") for k in unknown]
            raise ApiError(422, f"invalid resource: metadata.{unknown[0]}: unknown field",
                           details)
        if "tenant" in meta and kind.plural not in TENANTED:
            message = f"{kind.plural} are shared by every tenant; only sandboxes and route " \
                      "groups belong to one"
            raise ApiError(422, f"invalid resource: metadata.tenant: {message}",
                           [wire.FieldError(field="metadata.tenant", message=message)])
        data["metadata"] = {k: meta[k] for k in _CLIENT_METADATA if k in meta}
    return _validate(kind.model, data)


def _refuse_discovered(plural: str, current: Record | None, spec: Any) -> None:
    """Discovered services belong to the cluster: the REST API neither makes nor edits them."""
    if plural != "services":
        return
    source = current.spec.get("discovered") if current is not None else None
    if isinstance(source, dict):
        where = f"{source.get('namespace')}/{source.get('name')}"
        raise ApiError(
            409,
            f"services/{current.name if current else ''} is discovered from the Kubernetes "
            f"Service {where}; change that Service in the cluster instead",
        )
    if spec is not None and getattr(spec, "discovered", None) is not None:
        message = "set by the control plane's Kubernetes discovery only"
        raise ApiError(
            422, f"invalid resource: spec.discovered: {message}",
            [wire.FieldError(field="spec.discovered", message=message)],
        )


def _static_checks(plural: str, name: str, spec: Any) -> None:
    """What can be judged from the resource alone is a 422 now, not a status later."""
    try:
        if plural == "services":
            service_to_schema(name, spec)
        elif plural == "splits":
            split_to_schema(name, spec)
    except ValidationError as exc:
        raise from_validation_error(exc, "spec") from exc
    except ValueError as exc:
        raise ApiError(422, str(exc), [wire.FieldError(field="spec", message=str(exc))]) from exc


async def _reference_checks(store: Store, plural: str, spec: Any) -> None:
    """A fork or split naming a service that does not exist is rejected now (422), with the
    field path, instead of being stored and reported as Failed later."""
    if plural == "sandboxes":
        wanted = [(f"spec.forks[{i}].service", f.service) for i, f in enumerate(spec.forks)]
    elif plural == "splits":
        wanted = [("spec.service", spec.service)]
    else:
        return
    known = {r.name for r in (await store.list("services")).items}
    details = [
        wire.FieldError(field=path, message=f"unknown service {name!r}: create it first")
        for path, name in wanted
        if name not in known
    ]
    if details:
        summary = "; ".join(f"{d.field}: {d.message}" for d in details[:3])
        raise ApiError(422, f"invalid resource: {summary}", details)


async def _fork_warnings(ctx: ApiContext, plural: str, spec: Any) -> list[str]:
    """One warning per fork endpoint that does not accept a TCP connection right now; the
    sandbox is still stored (a fork may be starting) and stays Pending until it answers."""
    if plural != "sandboxes":
        return []
    targets = [(f.service, ep) for f in spec.forks for ep in f.endpoints]
    try:
        async with asyncio.timeout(ctx.probe_timeout + 0.5):
            answers = await asyncio.gather(*(ctx.probe(ep, ctx.probe_timeout) for _, ep in targets))
    except TimeoutError:
        return []
    return [
        f"fork {service}: {why} (the sandbox stays Pending until it answers)"
        for (service, _), why in zip(targets, answers, strict=True)
        if why is not None
    ]


def _warning_headers(warnings: list[str], base: dict[str, str]) -> CIMultiDict[str]:
    """RFC 7234 `Warning: 299 - "text"` headers, one per warning (as Kubernetes sends)."""
    headers: CIMultiDict[str] = CIMultiDict(base)
    for text in warnings:
        clean = text.replace("\\", "\\\\").replace('"', "'").replace("\n", " ")
        headers.add("Warning", f'299 - "{clean}"')
    return headers


def _flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter, given at most once: true/1 or false/0, nothing else."""
    values = request.query.getall(name, [])
    if not values:
        return False
    if len(values) > 1 or values[0].lower() not in ("true", "1", "false", "0"):
        raise ApiError(400, f"{name} must be given once, as true or false")
    return values[0].lower() in ("true", "1")


def _dry_run(request: web.Request) -> bool:
    value = request.query.get("dryRun")
    if value is None:
        return False
    if value != "All":
        raise ApiError(400, "dryRun must be 'All' (validate everything, store nothing)")
    return True


async def _routing_key(
    store: Store, plural: str, name: str, wanted: str | None, principal: Principal | None = None
) -> str:
    """The key to store: `wanted` if free, else a new one. Unique across sandboxes and groups.
    A taken key is named to its owner's peers only: an admin, or the creator of the object
    holding it; anyone else learns only that it is taken (keys are not for browsing)."""
    used: dict[str, str] = {}
    owners: dict[str, tuple[str, str]] = {}
    for other in ("sandboxes", "routegroups"):
        for rec in (await store.list(other)).items:
            key = rec.spec.get("routingKey")
            if isinstance(key, str) and (other, rec.name) != (plural, name):
                used[key] = f"{other}/{rec.name}"
                owners[key] = (rec.created_by, rec.tenant)
    if wanted is None:
        wanted = secrets.token_hex(16)
        while wanted in used:  # 2**-128; kept so the invariant holds by construction
            wanted = secrets.token_hex(16)
    elif wanted in used:
        if principal is None or principal.role == "admin" or principal.owns(*owners[wanted]):
            raise ApiError(409, f"routing key {wanted!r} is already used by {used[wanted]}")
        raise ApiError(409, "this routing key is already in use; choose another or omit it")
    return wanted


def _expected_version(request: web.Request, body_version: str | None) -> int | None:
    header = request.headers.get("If-Match")
    values = []
    if header is not None:
        value = header.strip().removeprefix("W/").strip('"')
        if not value:
            raise ApiError(400, "If-Match is empty: name a resourceVersion, or omit the header")
        values.append(value)
    if body_version is not None:
        values.append(body_version)
    if not values:
        return None
    if len(set(values)) > 1:
        raise ApiError(400, "If-Match and metadata.resourceVersion disagree")
    if not values[0].isdigit():
        raise ApiError(400, f"resourceVersion {values[0]!r} is not one this server issues")
    return int(values[0])


def _document(record: Record) -> dict[str, Any]:
    return wire.dump(to_wire(record))


def _etag(record: Record) -> dict[str, str]:
    return {"ETag": f'"{record.resource_version}"'}


async def _audit(
    request: web.Request, principal: Principal, verb: str, plural: str, name: str,
    before: int | None, after: int | None, revision: int | None, at: datetime | None = None,
) -> None:
    """`at`: when the write happened (so the trail and `describe` order it before what the
    reconciler did next); now when not given."""
    ctx = request.app[CTX]
    await ctx.store.append_audit(AuditEntry(
        at or ctx.clock(), principal.subject, verb, plural, name, before, after, revision))  # fmt: skip


def _kind(request: web.Request) -> tuple[str, ResourceKind]:
    plural = request.match_info["plural"]
    return plural, KINDS[plural]


# -- resource handlers ----------------------------------------------------------------------


async def create_resource(request: web.Request) -> web.Response:
    plural, kind = _kind(request)
    principal = _check(request, "create", plural)
    ctx = request.app[CTX]
    obj = _resource_input(kind, await _body(request))
    dry_run = _dry_run(request)
    name = obj.metadata.name
    tenant = DEFAULT_TENANT
    if plural in TENANTED:
        tenant, refusal = create_tenant(principal, obj.metadata.tenant)
        if refusal is not None:
            raise ApiError(403, refusal.reason)
        obj.metadata.tenant = tenant
    _refuse_discovered(plural, None, obj.spec)
    _static_checks(plural, name, obj.spec)
    await _reference_checks(ctx.store, plural, obj.spec)
    status: dict[str, Any] | None = None
    if plural == "sandboxes" and obj.spec.ttl is None:
        obj.spec.ttl = wire.TtlSpec(seconds=ctx.default_ttl_seconds)
    if plural in ("sandboxes", "routegroups"):
        key = await _routing_key(ctx.store, plural, name, obj.spec.routing_key, principal)
        obj.spec.routing_key = key
        status = {"phase": "Pending", "routingKey": key}
    warnings = await _fork_warnings(ctx, plural, obj.spec)
    if dry_run:
        try:
            await ctx.store.get(plural, name)
        except StoreError:
            pass
        else:
            raise ApiError(409, f"{plural}/{name} already exists")
        doc = wire.dump(obj)
        doc["metadata"] = {**doc["metadata"], "generation": 1, "createdBy": principal.subject}
        return _respond(doc, 201, _warning_headers(warnings, {}))
    record = await ctx.store.create(
        plural, name, labels=obj.metadata.labels, spec=wire.dump(obj.spec), status=status,
        created_by=principal.subject, now=ctx.clock(), tenant=tenant,
    )
    await _audit(request, principal, "create", plural, name, None, record.generation,
                 record.resource_version, at=record.created_at)
    return _respond(
        _document(record), 201,
        _warning_headers(warnings, {"Location": f"/api/v1/{plural}/{name}", **_etag(record)}),
    )


async def get_resource(request: web.Request) -> web.Response:
    plural, _ = _kind(request)
    record = await request.app[CTX].store.get(plural, request.match_info["name"])
    _check(request, "get", plural, record)
    return _respond(_document(record), headers=_etag(record))


async def list_resources(request: web.Request) -> web.StreamResponse:
    plural, kind = _kind(request)
    principal = _check(request, "list", plural)
    query = request.query
    try:
        selector = parse_selector(query.get("labelSelector", ""))
    except ValueError as exc:
        raise ApiError(400, f"labelSelector: {exc}") from exc
    in_tenant = _tenant_filter(request, plural)

    def shown(r: Record) -> bool:
        return _visible(principal, plural, r) and in_tenant in (None, r.tenant)

    if _flag(request, "watch"):
        ctx = request.app[CTX]
        watched: web.StreamResponse = await serve_watch(
            request, store=ctx.store, plural=plural, kind=kind.kind, selector=selector,
            visible=shown,
            document=_document, bookmark_interval=ctx.bookmark_interval, closing=ctx.closing,
        )
        return watched
    limit: int | None = None
    if "limit" in query:
        text = query["limit"]
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise ApiError(400, f"limit must be an integer in 1..{MAX_LIMIT}")
        limit = int(text)
    after = None
    if query.get("continue"):
        try:
            after = base64.urlsafe_b64decode(query["continue"].encode()).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise ApiError(400, "continue: not a token this server issued") from exc
    page = await request.app[CTX].store.list(plural, selector=selector, limit=limit, after=after)
    items = [_document(r) for r in page.items if shown(r)]
    meta: dict[str, str] = {"resourceVersion": str(page.revision)}
    if page.continue_after is not None:
        meta["continue"] = base64.urlsafe_b64encode(page.continue_after.encode()).decode()
    return _respond(
        {"apiVersion": wire.API_VERSION, "kind": f"{kind.kind}List", "items": items,
         "metadata": meta}
    )


def _tenant_filter(request: web.Request, plural: str) -> str | None:
    """`?tenant=T` lists one tenant's objects (an admin's view of one team)."""
    values = request.query.getall("tenant", [])
    if not values:
        return None
    if plural not in TENANTED:
        raise ApiError(400, f"tenant: {plural} are shared by every tenant")
    if len(values) > 1:
        raise ApiError(400, "tenant must be given once")
    return values[0]


async def update_resource(request: web.Request) -> web.Response:
    plural, kind = _kind(request)
    ctx = request.app[CTX]
    name = request.match_info["name"]
    data = await _body(request)
    meta = data.get("metadata")
    obj = _resource_input(kind, data)  # strict: a resourceVersion is a string or absent
    body_version = meta.get("resourceVersion") if isinstance(meta, dict) else None
    if obj.metadata.name != name:
        raise ApiError(400, f"metadata.name {obj.metadata.name!r} does not match the URL {name!r}")
    dry_run = _dry_run(request)
    expected = _expected_version(request, body_version)
    current = await ctx.store.get(plural, name)
    principal = _check(request, "update", plural, current)
    if obj.metadata.tenant not in (None, current.tenant) and plural in TENANTED:
        message = (f"cannot change (it is {current.tenant!r}); create the object again in the "
                   "other tenant")
        raise ApiError(422, f"invalid resource: metadata.tenant: {message}",
                       [wire.FieldError(field="metadata.tenant", message=message)])
    _refuse_discovered(plural, current, obj.spec)
    _static_checks(plural, name, obj.spec)
    await _reference_checks(ctx.store, plural, obj.spec)
    if plural == "sandboxes" and obj.spec.ttl is None and current.spec.get("ttl"):
        obj.spec.ttl = wire.TtlSpec.model_validate(current.spec["ttl"])
    if plural in ("sandboxes", "routegroups"):
        wanted = obj.spec.routing_key or current.spec.get("routingKey")
        obj.spec.routing_key = await _routing_key(ctx.store, plural, name, wanted, principal)
    if expected is not None and expected != current.resource_version:
        raise ApiError(
            409, f"{plural}/{name} is at resourceVersion {current.resource_version}, "
            f"not {expected}",
        )
    spec_doc = wire.dump(obj.spec)
    warnings = [] if spec_doc == current.spec else await _fork_warnings(ctx, plural, obj.spec)
    if spec_doc == current.spec and dict(obj.metadata.labels) == dict(current.labels):
        # nothing changes: nothing is written, the resourceVersion stays (apply is idempotent)
        return _respond(_document(current), headers=_etag(current))
    if dry_run:
        doc = _document(current)
        doc["spec"], doc["metadata"]["labels"] = spec_doc, dict(obj.metadata.labels)
        doc["metadata"]["generation"] = current.generation + 1
        return _respond(doc, headers=_warning_headers(warnings, {}))
    before, after = await ctx.store.update(
        plural, name, labels=obj.metadata.labels, spec=wire.dump(obj.spec),
        expected_version=expected, now=ctx.clock(),
    )
    await _audit(request, principal, "update", plural, name, before.generation, after.generation,
                 after.resource_version, at=after.updated_at)
    return _respond(_document(after), headers=_warning_headers(warnings, _etag(after)))


async def delete_resource(request: web.Request) -> web.Response:
    plural, _ = _kind(request)
    ctx = request.app[CTX]
    name = request.match_info["name"]
    expected = _expected_version(request, None)
    current = await ctx.store.get(plural, name)
    principal = _check(request, "delete", plural, current)
    _refuse_discovered(plural, current, None)
    if plural == "sandboxes" and has_workloads(current.status):
        # fork workloads in the cluster: routes go first, then the workloads, then the record
        if expected is not None and expected != current.resource_version:
            raise ApiError(409, f"sandboxes/{name} is at resourceVersion "
                                f"{current.resource_version}, not {expected}")
        marked = await ctx.store.update_status(
            plural, name, status=terminating_status(current.status, ctx.clock()),
            expected_version=current.resource_version)
        await _audit(request, principal, "delete", plural, name, current.generation,
                     current.generation, marked.resource_version)
        return _respond(_document(marked), 202)
    gone = await ctx.store.delete(plural, name, expected_version=expected)
    await _audit(request, principal, "delete", plural, name, gone.generation, None,
                 await ctx.store.revision())
    return _respond(_document(gone))


# -- other endpoints ------------------------------------------------------------------------


async def list_proxies(request: web.Request) -> web.Response:
    _check(request, "list", "proxies")
    proxies = request.app[CTX].proxies.list()
    return _respond(wire.dump(wire.ProxyList(items=proxies)))


async def create_token(request: web.Request) -> web.Response:
    principal = _check(request, "create", "tokens")
    ctx = request.app[CTX]
    if ctx.authenticator is None:
        raise ApiError(400, "auth is disabled on this control plane; tokens would not be checked")
    req: wire.TokenRequest = _validate(wire.TokenRequest, await _body(request))
    if req.tenant is not None and req.role != "developer":
        message = f"only developer tokens act in one tenant; {req.role} tokens act in all"
        raise ApiError(422, f"invalid resource: tenant: {message}",
                       [wire.FieldError(field="tenant", message=message)])
    tenant = (req.tenant or DEFAULT_TENANT) if req.role == "developer" else None
    raw, record = new_token(req.subject, req.role, created_by=principal.subject, now=ctx.clock(),
                            tenant=tenant)
    await ctx.store.add_token(record)
    await _audit(request, principal, "create", "tokens", f"{record.token_id}:{req.subject}",
                 None, None, None)
    reply = wire.TokenResponse(id=record.token_id, subject=req.subject, role=req.role,
                               tenant=tenant, token=raw)
    return _respond(wire.dump(reply), 201)


async def list_tokens(request: web.Request) -> web.Response:
    _check(request, "list", "tokens")
    tokens = await request.app[CTX].store.list_tokens()
    items = [
        wire.TokenInfo.model_validate({"id": t.token_id, "subject": t.subject, "role": t.role,
                                       "tenant": _token_tenant(t.role, t.tenant),
                                       "createdAt": t.created_at, "createdBy": t.created_by})
        for t in tokens
    ]
    return _respond(wire.dump(wire.TokenList(items=items)))


def _token_tenant(role: str, tenant: str | None) -> str | None:
    """Developer tokens act in one tenant (older ones, named none: the default one)."""
    return (tenant or DEFAULT_TENANT) if role == "developer" else None


async def revoke_token(request: web.Request) -> web.Response:
    principal = _check(request, "delete", "tokens")
    ctx = request.app[CTX]
    token_id = request.match_info["token_id"]
    if not await ctx.store.delete_token(token_id):
        raise ApiError(404, f"no token with id {token_id!r}")
    await _audit(request, principal, "delete", "tokens", token_id, None, None, None)
    return _respond({"apiVersion": wire.API_VERSION, "kind": "Token", "id": token_id,
                     "revoked": True})  # fmt: skip


async def whoami(request: web.Request) -> web.Response:
    principal: Principal = request[PRINCIPAL]
    return _respond(wire.dump(wire.Identity(
        subject=principal.subject, role=principal.role,
        tenant=_token_tenant(principal.role, principal.tenant))))  # fmt: skip


async def get_version(request: web.Request) -> web.Response:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("forklane")
    except PackageNotFoundError:
        ours = "unknown"
    ctx = request.app[CTX]
    return _respond(wire.dump(wire.VersionInfo(version=ours, replica=ctx.replica)))


_PAST = {"create": "Created", "update": "Updated", "delete": "Deleted", "expire": "Expired",
         "connect": "Connected"}


async def list_events(request: web.Request) -> web.Response:
    """What happened to one object, from the store (so every replica tells the same): its
    audit trail, its conditions' changes, and the pushes, ACKs and NACKs of every proxy
    since the object last changed. Newest 100, oldest first."""
    plural, _ = _kind(request)
    ctx = request.app[CTX]
    name = request.match_info["name"]
    record = await ctx.store.get(plural, name)
    _check(request, "get", plural, record)
    events: list[wire.Event] = []
    for entry in await ctx.store.list_audit(kind=plural, name=name, limit=MAX_LIMIT):
        if entry.at < record.created_at:
            continue  # an earlier object of the same name
        gen = (f"generation {entry.generation_before} → {entry.generation_after}"
               if entry.generation_before and entry.generation_after
               else f"generation {entry.generation_after or entry.generation_before or '-'}")
        reason = _PAST.get(entry.verb, entry.verb.capitalize())
        events.append(wire.Event(time=entry.at, reason=reason, message=gen, source=entry.subject))
    stored = [
        *await ctx.store.list_events(plural, name, since=record.created_at),
        *await ctx.store.list_events(PROXIES, since=record.updated_at),
    ]
    events += [
        wire.Event.model_validate({"time": e.at, "type": e.type, "reason": e.reason,
                                   "message": e.message, "source": e.source})
        for e in stored
    ]  # fmt: skip
    events.sort(key=lambda e: e.time)
    return _respond(wire.dump(wire.EventList(items=events[-100:])))


async def list_audit(request: web.Request) -> web.Response:
    _check(request, "list", "audit")
    query = request.query
    for param in ("after", "limit"):
        if param in query and not query[param].isdigit():
            raise ApiError(400, f"{param} must be a non-negative integer")
    after = int(query.get("after", "0"))
    limit = min(int(query.get("limit", "100")), MAX_LIMIT)
    entries = await request.app[CTX].store.list_audit(after=after, limit=limit)
    items = [
        wire.AuditRecord(
            seq=e.seq, at=e.at, subject=e.subject, verb=e.verb, resource=e.kind, name=e.name,
            generation_before=e.generation_before, generation_after=e.generation_after,
            resource_version=None if e.revision is None else str(e.revision),
        )
        for e in entries
    ]
    more = str(entries[-1].seq) if len(entries) == limit and entries else None
    return _respond(wire.dump(wire.AuditList(items=items, continue_=more)))


async def get_snapshot(request: web.Request) -> web.Response:
    """The published snapshot. A developer sees only the forks (so the routing keys) of the
    sandboxes and route groups it created in its tenant; admins and proxies see all of it.
    Forks are matched by key, which is unique, not by name (a sandbox and a route group may
    share one)."""
    principal = _check(request, "get", "snapshot")
    ctx = request.app[CTX]
    latest = ctx.publisher.latest
    if latest is None:
        raise ApiError(503, "no snapshot compiled yet")
    doc = latest.model_dump(mode="json")
    if principal.role == "developer":
        own = {rec.spec.get("routingKey") for kind in TENANTED
               for rec in (await ctx.store.list(kind)).items
               if principal.owns(rec.created_by, rec.tenant)}
        doc["forks"] = [f for f in doc["forks"] if f.get("routing_key") in own]
    if doc.get("signing"):
        # the signing secrets go to proxies over the push stream only, never to a reader here
        doc["signing"] = {"secrets": ["<redacted>"] * len(doc["signing"]["secrets"])}
    return _respond(doc)


async def list_routes(request: web.Request) -> web.StreamResponse:
    """The routes view (see `controlplane.routes`): readable with a `consumer` token (every
    key: a consumer judges messages of every tenant); a developer sees its own keys only."""
    principal = _check(request, "list", "routes")
    # malformed watch parameters are a 400 even on a plain list, before the view reads them
    _flag(request, "watch")
    _flag(request, "allowWatchBookmarks")
    timeouts = request.query.getall("timeoutSeconds", [])
    if len(timeouts) > 1 or (timeouts and not timeouts[0].isdigit()):
        raise ApiError(400, "timeoutSeconds must be given once, as a non-negative integer")
    ctx = request.app[CTX]
    try:
        selector = parse_selector(request.query.get("labelSelector", ""))
    except ValueError as exc:
        raise ApiError(400, f"labelSelector: {exc}") from exc
    owners = ctx.key_owners

    def shown(key: str) -> bool:
        owner = owners().get(key)
        return owner is not None and principal.owns(*owner)

    return await list_or_watch_routes(
        request, publisher=ctx.publisher, groups=ctx.group_members, selector=selector,
        bookmark_interval=ctx.bookmark_interval, closing=ctx.closing,
        shown=shown if principal.role == "developer" else None,
    )


async def tap(request: web.Request) -> web.StreamResponse:
    """A live stream of routing decisions (see `controlplane.tap_api`)."""
    ctx = request.app[CTX]
    query = request.query
    sandbox = query.get("sandbox")
    keys: tuple[str, ...] = ()
    if sandbox:
        record = await ctx.store.get("sandboxes", sandbox)
        _check(request, "get", "sandboxes", record)
        key = _routing_key_of(record)
        if key is None:
            raise ApiError(409, f"sandboxes/{sandbox} has no routing key yet")
        if query.get("key") and query["key"] != key:
            raise ApiError(400, f"key {query['key']!r} is not the routing key of {sandbox}")
        keys = (key,)
    else:
        _check(request, "get", "tap")  # any key, or every request: admins only
        keys = (query["key"],) if query.get("key") else ()
    principal: Principal = request[PRINCIPAL]
    return await stream_tap(request, ctx.taps, keys, ctx.closing, _viewer(principal))


def _viewer(principal: Principal) -> str:
    """Who a caller is for its request budget and its tap lines: a developer within its
    tenant (one name in two tenants is two people; `/` is in neither a tenant nor a
    subject)."""
    return f"{principal.tenant}/{principal.subject}" if principal.role == "developer" \
        else principal.subject


async def tap_request_line(request: web.Request) -> web.Response:
    """One request line a tap showed lately (`forklane explain --from-tap ID`)."""
    principal: Principal = request[PRINCIPAL]
    line_id = request.match_info["line_id"]
    found = request.app[CTX].taps.recent(line_id)
    if found is None or (principal.role != "admin" and _viewer(principal) not in found[1]):
        raise ApiError(404, f"no tap line {line_id} (only the last ones shown are kept)")
    return _respond(found[0])


async def tap_deliveries(request: web.Request) -> web.Response:
    """Message deliveries judged by forklane consumers, shown to matching taps."""
    _check(request, "list", "routes")  # the consumer role may report what it reads
    principal: Principal = request[PRINCIPAL]
    ctx = request.app[CTX]
    return _respond(post_deliveries(await _body(request), ctx.taps, principal.subject))


async def webhook_deliveries(request: web.Request) -> web.Response:
    """The last webhook deliveries and their state (admins): pending, delivered, failed."""
    _check(request, "list", "webhooks")
    hooks = request.app[CTX].webhooks
    return _respond({"urls": list(hooks.urls) if hooks else [],
                     "items": hooks.deliveries() if hooks else []})


async def connect_sandbox(request: web.Request) -> web.StreamResponse:
    """`forklane connect`: a WebSocket carrying the tunnel to a developer's machine (see
    `controlplane.tunnel.endpoint`). Allowed to whoever may update the sandbox."""
    ctx = request.app[CTX]
    record = await ctx.store.get("sandboxes", request.match_info["name"])
    principal = _check(request, "update", "sandboxes", record)
    if ctx.tunnels is None:
        raise ApiError(503, "this control plane does not serve forklane connect")

    async def audit() -> None:  # once the WebSocket is up: a refused attempt is not a connect
        await _audit(request, principal, "connect", "sandboxes", record.name, record.generation,
                     record.generation, None)

    return await ctx.tunnels.serve(request, record, audit)


def _routing_key_of(record: Record) -> str | None:
    spec_key = record.spec.get("routingKey")
    if isinstance(spec_key, str) and spec_key:
        return spec_key
    status_key = (record.status or {}).get("routingKey")
    return status_key if isinstance(status_key, str) and status_key else None


async def get_openapi(request: web.Request) -> web.Response:
    return _respond(OPENAPI)


async def healthz(request: web.Request) -> web.Response:
    return _respond({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    try:
        await ctx.store.revision()
    except StoreError as exc:
        raise ApiError(503, "store unavailable") from exc
    if ctx.publisher.latest is None:
        raise ApiError(503, "no snapshot compiled yet")
    return _respond({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: what a ServiceMonitor scrapes (no secrets, so no auth)."""
    ctx = request.app[CTX]
    proxies = ctx.proxies.list()
    latest = ctx.publisher.latest
    version = int(latest.version) if latest is not None and latest.version.isdigit() else 0
    behind = sum(1 for p in proxies if p.acked_version != (latest.version if latest else None))
    lines = [
        "# HELP forklane_controlplane_proxies Proxies connected to this replica.",
        "# TYPE forklane_controlplane_proxies gauge",
        f"forklane_controlplane_proxies {len(proxies)}",
        "# HELP forklane_controlplane_proxies_behind Connected proxies not running the latest"
        " snapshot.",
        "# TYPE forklane_controlplane_proxies_behind gauge",
        f"forklane_controlplane_proxies_behind {behind}",
        "# HELP forklane_controlplane_snapshot_version Version of the latest published snapshot.",
        "# TYPE forklane_controlplane_snapshot_version gauge",
        f"forklane_controlplane_snapshot_version {version}",
        "# HELP forklane_controlplane_services Baseline services in the latest snapshot.",
        "# TYPE forklane_controlplane_services gauge",
        f"forklane_controlplane_services {len(latest.services) if latest else 0}",
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain",
                        charset="utf-8")


def build_app(ctx: ApiContext) -> web.Application:
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=MAX_BODY)
    app[CTX] = ctx
    kinds = "|".join(KINDS)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/openapi.json", get_openapi)
    app.router.add_get("/api/v1/proxies", list_proxies)
    app.router.add_get("/version", get_version)
    app.router.add_get("/api/v1/whoami", whoami)
    app.router.add_post("/api/v1/tokens", create_token)
    app.router.add_get("/api/v1/tokens", list_tokens)
    app.router.add_delete("/api/v1/tokens/{token_id}", revoke_token)
    app.router.add_get("/api/v1/audit", list_audit)
    app.router.add_get("/api/v1/snapshot", get_snapshot)
    app.router.add_get("/api/v1/routes", list_routes)
    app.router.add_get("/api/v1/tap", tap)
    app.router.add_post("/api/v1/tap/deliveries", tap_deliveries)
    app.router.add_get("/api/v1/tap/requests/{line_id}", tap_request_line)
    app.router.add_get("/api/v1/webhooks/deliveries", webhook_deliveries)
    app.router.add_get(f"/api/v1/{{plural:{kinds}}}", list_resources)
    app.router.add_post(f"/api/v1/{{plural:{kinds}}}", create_resource)
    app.router.add_get(f"/api/v1/{{plural:{kinds}}}/{{name}}", get_resource)
    app.router.add_put(f"/api/v1/{{plural:{kinds}}}/{{name}}", update_resource)
    app.router.add_delete(f"/api/v1/{{plural:{kinds}}}/{{name}}", delete_resource)
    app.router.add_get(f"/api/v1/{{plural:{kinds}}}/{{name}}/events", list_events)
    app.router.add_get("/api/v1/sandboxes/{name}/connect", connect_sandbox)

    async def end_watches(_app: web.Application) -> None:
        ctx.closing.set()  # watch streams end, so shutting down never waits on them

    app.on_shutdown.append(end_watches)
    return app
