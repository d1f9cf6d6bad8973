"""An in-process fake Kubernetes API server, over real HTTP on 127.0.0.1 (port 0).

Paths, verbs, status codes and bodies follow the API reference and the API concepts page:
- discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/GROUP`, `/apis/GROUP/VERSION`;
- `/api/v1/…` and `/apis/GROUP/VERSION/…`, namespaced (`namespaces/NS/PLURAL[/NAME]`) and
  cluster-wide (`PLURAL[/NAME]`, which for a namespaced type lists every namespace);
- GET (get, list with `labelSelector`, `fieldSelector`, `limit`/`continue`), `watch=true`
  (from `resourceVersion`, exclusive; none or "0" starts with synthetic ADDED events;
  `allowWatchBookmarks=true` adds BOOKMARK events every `bookmark_interval` seconds;
  `timeoutSeconds` ends the stream; a compacted resourceVersion gets an ERROR event carrying
  a 410 `Expired` Status, as the real server sends it on a started watch), POST (create,
  `dryRun=All` stores nothing), PUT (update, `/status` subresource), PATCH (JSON, merge and
  strategic merge), DELETE (with `preconditions.resourceVersion`, finalizers);
- every error is a `Status` object (`kind: Status`, `status: Failure`, `reason`, `code`,
  `details`); an unknown path is a 404 Status, an unsupported verb a 405 Status;
- TokenReview (`authentication.k8s.io/v1`) answers from `tokens`, with audiences;
- creating a Pod runs the mutating webhooks registered in the fake (see `_admission`);
- Deployments and ReplicaSets (apps/v1) are served and, unless `controllers=False`, driven by
  the fake controllers of `_controllers` (ReplicaSets, Pods, statuses, garbage collection);
  Pods then wait for a kubelet (`_kubelet`) to run them;
- with `require_token` set, a request without that bearer token gets 401 Unauthorized.

Extend it with `register(ResourceType(...))` and the store's `on_create`/`on_delete` hooks
(Deployments, ReplicaSets, ownerReference garbage collection) without editing this module.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.support.kubeapi._admission import Admission
from tests.support.kubeapi._controllers import APPS_TYPES, Controllers
from tests.support.kubeapi._objects import (
    BUILTIN_TYPES,
    JSON,
    ApiStatus,
    Event,
    ObjectStore,
    ResourceType,
    match_fields,
    match_labels,
    parse_label_selector,
)
from tests.support.kubeapi._patch import apply_patch

__all__ = ["FakeKube", "TokenIdentity"]


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    """Who a bearer token is, for TokenReview: `system:serviceaccount:NS:NAME` and audiences."""

    username: str
    audiences: tuple[str, ...] = ("https://kubernetes.default.svc",)
    uid: str = ""
    groups: tuple[str, ...] = ("system:serviceaccounts", "system:authenticated")
    extra: dict[str, list[str]] = field(default_factory=dict)


def _flag(value: str | None) -> bool:
    """A boolean query parameter as the API server parses it (Go's strconv.ParseBool)."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def _status_response(err: ApiStatus) -> web.Response:
    return web.json_response(err.body(), status=err.code)


class FakeKube:
    def __init__(self, *, bookmark_interval: float = 60.0, controllers: bool = True) -> None:
        self.store = ObjectStore()
        for rt in (*BUILTIN_TYPES, *APPS_TYPES):
            self.store.register(rt)
        self.admission = Admission(self.store)
        self.controllers = Controllers(self.store, self.admission) if controllers else None
        self.tokens: dict[str, TokenIdentity] = {}
        self.token_reviews: list[JSON] = []  # every TokenReview spec asked, for tests
        self.require_token: str | None = None
        self.bookmark_interval = bookmark_interval
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self._runner: web.AppRunner | None = None
        self._watchers: set[asyncio.Queue[Event | None]] = set()
        self.watches_open = asyncio.Event()  # cleared: new watch requests wait (hold_watches)
        self.watches_open.set()
        self.port = 0

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> FakeKube:
        app = web.Application(middlewares=[self._middleware], client_max_size=8 << 20)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.store.listeners.append(self._fan_out)
        if self.controllers is not None:
            self.controllers.start()
        return self

    async def aclose(self) -> None:
        if self.controllers is not None:
            await self.controllers.aclose()
        for queue in tuple(self._watchers):
            queue.put_nowait(None)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeKube:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig that points kubectl or kubernetes-asyncio at this server."""
        user: JSON = {"token": token} if token else {}
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                       "namespace": "default"}}],
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    # -- direct access for tests (no HTTP) --------------------------------------------------
    def register(self, rt: ResourceType) -> None:
        self.store.register(rt)

    def create(self, kind: str, obj: JSON, namespace: str = "") -> JSON:
        rt = self.store.kind(kind)
        return self.store.create(rt, namespace or obj.get("metadata", {}).get("namespace", ""),
                                 obj)

    def get(self, kind: str, name: str, namespace: str = "") -> JSON:
        return self.store.get(self.store.kind(kind), namespace, name)

    def replace(self, kind: str, obj: JSON) -> JSON:
        rt = self.store.kind(kind)
        meta = obj["metadata"]
        return self.store.update(rt, meta.get("namespace", ""), meta["name"], obj)

    def delete(self, kind: str, name: str, namespace: str = "") -> JSON:
        return self.store.delete(self.store.kind(kind), namespace, name)

    def compact(self, keep: int = 0) -> None:
        self.store.compact(keep)

    # -- HTTP -------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.require_token is not None and request.path != "/version":
            if request.headers.get("Authorization") != f"Bearer {self.require_token}":
                return _status_response(ApiStatus(401, "Unauthorized", "Unauthorized"))
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ApiStatus as err:
            return _status_response(err)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake",
                                      "platform": "linux/amd64"})
        if parts and parts[0] == "api":
            if len(parts) == 1:
                return web.json_response({"kind": "APIVersions", "versions": ["v1"],
                                          "serverAddressByClientCIDRs": []})
            group, version, rest = "", parts[1], parts[2:]
        elif parts and parts[0] == "apis":
            if len(parts) == 1:
                return web.json_response(self._group_list())
            if len(parts) == 2:
                return web.json_response(self._group(parts[1]))
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return web.json_response(self._resource_list(group, version))
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        plural, name, sub = rest[0], rest[1] if len(rest) > 1 else "", rest[2:]
        rt = self.store.type_of(group, plural)
        if rt.version != version:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        if namespace is not None and not rt.namespaced:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        if namespace is None and rt.kind == "Namespace" and name and sub:
            namespace, sub = name, sub  # /api/v1/namespaces/NAME/status
        subresource = sub[0] if sub else ""
        if subresource and subresource not in rt.subresources:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        return await self._verb(request, rt, namespace, name, subresource)

    async def _verb(self, request: web.Request, rt: ResourceType, namespace: str | None,
                    name: str, subresource: str) -> web.StreamResponse:
        method = request.method
        ns = namespace or ""
        if rt.namespaced and name and namespace is None:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        if rt.kind == "Namespace" and name:
            ns = ""
        if method == "GET" and not name:
            if _flag(request.query.get("watch")):
                return await self._watch(request, rt, namespace)
            return web.json_response(self._list(request, rt, namespace))
        if method == "GET":
            return web.json_response(self.store.get(rt, ns, name))
        if method == "POST" and not name:
            body = await self._json(request)
            if rt.kind == "TokenReview":
                return web.json_response(self._token_review(body), status=201)
            return await self._create(request, rt, ns, body)
        if method == "PUT" and name:
            body = await self._json(request)
            return web.json_response(self.store.update(rt, ns, name, body, subresource))
        if method == "PATCH" and name:
            current = self.store.get(rt, ns, name)
            patched = apply_patch(current, request.content_type, await self._json(request))
            patched.setdefault("metadata", {}).pop("resourceVersion", None)
            if subresource == "status":
                return web.json_response(self.store.update(rt, ns, name, patched, "status"))
            return web.json_response(self.store.update(rt, ns, name, patched))
        if method == "DELETE" and name:
            options = await self._json(request) if request.can_read_body else {}
            pre = (options.get("preconditions") or {}).get("resourceVersion")
            return web.json_response(self.store.delete(rt, ns, name, pre))
        raise ApiStatus(405, "MethodNotAllowed",
                        "the server does not allow this method on the requested resource")

    async def _json(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return {}
        try:
            if "yaml" in request.content_type:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiStatus(400, "BadRequest", f"the body cannot be decoded: {exc}") from exc

    async def _create(self, request: web.Request, rt: ResourceType, namespace: str,
                      body: JSON) -> web.Response:
        if not isinstance(body, dict):
            raise ApiStatus(400, "BadRequest", "the body must be an object")
        body_kind = body.get("kind")
        if body_kind not in (None, rt.kind):
            raise ApiStatus(400, "BadRequest",
                            f"the API version in the data ({body.get('apiVersion')}) does not "
                            f"match the expected API version ({rt.api_version})")
        dry_run = request.query.get("dryRun") == "All"
        if rt.kind == "Pod":
            body = await self.admission.mutate(rt, namespace, body, dry_run=dry_run,
                                               username="system:admin")
        if dry_run:
            return web.json_response(body, status=201)
        return web.json_response(self.store.create(rt, namespace, body), status=201)

    def _list(self, request: web.Request, rt: ResourceType, namespace: str | None) -> JSON:
        query = request.query
        items = self.store.list(rt, namespace, query.get("labelSelector", ""),
                                query.get("fieldSelector", ""))
        start = 0
        if query.get("continue"):
            try:
                start = int(base64.urlsafe_b64decode(query["continue"]).decode())
            except ValueError as exc:
                raise ApiStatus(400, "BadRequest", "continue: not a token we issued") from exc
        meta: JSON = {"resourceVersion": str(self.store.revision)}
        if query.get("limit", "").isdigit() and int(query["limit"]) > 0:
            end = start + int(query["limit"])
            if end < len(items):
                meta["continue"] = base64.urlsafe_b64encode(str(end).encode()).decode()
                meta["remainingItemCount"] = len(items) - end
            items = items[start:end]
        else:
            items = items[start:]
        for item in items:  # list items carry no apiVersion/kind, as the real server sends
            item.pop("apiVersion", None)
            item.pop("kind", None)
        return {"apiVersion": rt.api_version, "kind": f"{rt.kind}List", "metadata": meta,
                "items": items}

    async def _watch(self, request: web.Request, rt: ResourceType,
                     namespace: str | None) -> web.StreamResponse:
        await self.watches_open.wait()
        query = request.query
        selector = parse_label_selector(query.get("labelSelector", ""))
        fields = query.get("fieldSelector", "")
        bookmarks = _flag(query.get("allowWatchBookmarks"))
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        rv_text = query.get("resourceVersion", "")

        def wanted(event: Event) -> bool:
            if (event.rt.group, event.rt.plural) != (rt.group, rt.plural):
                return False
            if namespace is not None and event.namespace != namespace:
                return False
            labels = event.object.get("metadata", {}).get("labels") or {}
            return match_labels(labels, selector) and (
                not fields or match_fields(event.object, fields))

        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        backlog: list[JSON] = []
        error: ApiStatus | None = None
        if rv_text in ("", "0"):
            backlog = [{"type": "ADDED", "object": obj}
                       for obj in self.store.list(rt, namespace, query.get("labelSelector", ""),
                                                  fields)]
        else:
            if not rv_text.isdigit():
                raise ApiStatus(400, "BadRequest", f"invalid resource version: {rv_text!r}")
            try:
                backlog = [{"type": e.type, "object": e.object}
                           for e in self.store.events_since(int(rv_text)) if wanted(e)]
            except ApiStatus as exc:
                error = exc
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)

        async def send(event: JSON) -> None:
            await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")

        if error is not None:
            await send({"type": "ERROR", "object": error.body()})
            return response
        self._watchers.add(queue)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            for event in backlog:
                await send(event)
            while True:
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    wait = left if wait is None else min(wait, left)
                try:
                    async with asyncio.timeout(wait):
                        item = await queue.get()
                except TimeoutError:
                    if bookmarks:
                        await send({"type": "BOOKMARK", "object": {
                            "kind": rt.kind, "apiVersion": rt.api_version,
                            "metadata": {"resourceVersion": str(self.store.revision)}}})
                    continue
                if item is None:
                    break
                if wanted(item):
                    await send({"type": item.type, "object": item.object})
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.discard(queue)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _fan_out(self, event: Event) -> None:
        for queue in self._watchers:
            queue.put_nowait(event)

    def disconnect_watches(self, *, hold: bool = False) -> None:
        """End every open watch stream (as an API server restart or a load balancer would);
        with `hold`, new watch requests wait until `release_watches()`."""
        if hold:
            self.watches_open.clear()
        for queue in tuple(self._watchers):
            queue.put_nowait(None)

    def release_watches(self) -> None:
        self.watches_open.set()

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    def _token_review(self, body: JSON) -> JSON:
        spec = body.get("spec") or {}
        self.token_reviews.append(spec)
        token = spec.get("token", "")
        wanted = list(spec.get("audiences") or ())
        status: JSON
        identity = self.tokens.get(token)
        if identity is None:
            status = {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
        else:
            granted = [a for a in identity.audiences if not wanted or a in wanted]
            if not granted:
                status = {"user": {}, "error": "[invalid bearer token, token audiences "
                                                f"{list(identity.audiences)} is invalid for the "
                                                f"target audiences {wanted}]"}
            else:
                status = {"authenticated": True, "audiences": granted, "user": {
                    "username": identity.username, "uid": identity.uid,
                    "groups": list(identity.groups), "extra": identity.extra}}
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}

    # -- discovery documents ----------------------------------------------------------------
    def _groups(self) -> dict[str, set[str]]:
        groups: dict[str, set[str]] = {}
        for rt in self.store.types.values():
            if rt.group:
                groups.setdefault(rt.group, set()).add(rt.version)
        return groups

    def _group(self, name: str) -> JSON:
        versions = self._groups().get(name)
        if not versions:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in sorted(versions)]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": entries,
                "preferredVersion": entries[-1]}

    def _group_list(self) -> JSON:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self._group(g) for g in sorted(self._groups())]}

    def _resource_list(self, group: str, version: str) -> JSON:
        resources: list[JSON] = []
        for rt in sorted(self.store.types.values(), key=lambda r: r.plural):
            if (rt.group, rt.version) != (group, version):
                continue
            resources.append({"name": rt.plural, "singularName": rt.singular,
                              "namespaced": rt.namespaced, "kind": rt.kind,
                              "verbs": list(rt.verbs), "shortNames": list(rt.short_names)})
            for sub in rt.subresources:
                resources.append({"name": f"{rt.plural}/{sub}", "singularName": "",
                                  "namespaced": rt.namespaced, "kind": rt.kind,
                                  "verbs": ["get", "patch", "update"]})
        if not resources:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources}


@contextlib.asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[FakeKube]:
    fake = FakeKube(**kwargs)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.aclose()
