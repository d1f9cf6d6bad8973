"""The read-only routes view: which routing keys fork a service, for message consumers.

A consumer of a queue or stream has no sidecar; it asks the control plane which keys fork
its service and takes (or hands on) each message by that answer. The view is derived from the
*published* snapshot, the one the proxies run, so a message and an HTTP request with the same
key go to the same side. A route group's key names the member sandbox that forks the service.

`GET /api/v1/routes[?labelSelector=service=NAME]` lists the routes (labels `service`,
`sandbox`, and `routeGroup` for a group's key) with the carriers the proxies read and the
snapshot version as `metadata.resourceVersion`. `?watch=true` streams Kubernetes-style events
(ADDED / MODIFIED / DELETED, BOOKMARK with `allowWatchBookmarks=true`, `timeoutSeconds`), one
batch per published snapshot, as the resource watches do. History is not kept: a watch from a
version other than the current one answers 410 Gone (list again, then watch from the list's
version), which costs one small list. A developer's view holds only the keys of its own
sandboxes and route groups (`shown`); consumers and admins see every key.

Pure: `routes_of` and `route_events`; the handlers only wait on the publisher and write lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from forklane.controlplane import wire
from forklane.controlplane.errors import ApiError
from forklane.controlplane.publisher import SnapshotPublisher
from forklane.controlplane.selector import Selector
from forklane.proxy.schema import RoutingSnapshot

__all__ = ["GroupMembers", "KeyOwners", "list_or_watch_routes", "route_events", "routes_of"]

# a route group's routing key -> its member sandboxes (by key: a group and a sandbox may
# share a name)
GroupMembers = Callable[[], Mapping[str, tuple[str, ...]]]
# routing key -> (creator, tenant) of the sandbox or route group that holds it
KeyOwners = Callable[[], Mapping[str, tuple[str | None, str]]]
Routes = dict[str, wire.Route]


def routes_of(snapshot: RoutingSnapshot, groups: Mapping[str, tuple[str, ...]],
              shown: Callable[[str], bool] | None = None) -> Routes:
    """Every (service, key) fork of `snapshot` (whose key is `shown`, when given), by route
    name `<service>/<key>`."""
    own = {(f.sandbox, f.service) for f in snapshot.forks}
    out: Routes = {}
    for fork in snapshot.forks:
        if shown is not None and not shown(fork.routing_key):
            continue
        group: str | None = None
        sandbox = fork.sandbox
        members = groups.get(fork.routing_key)
        if members is not None:
            owner = next((m for m in members if (m, fork.service) in own), None)
            if owner is not None:
                group, sandbox = fork.sandbox, owner
        labels = {"service": fork.service, "sandbox": sandbox}
        if group is not None:
            labels["routeGroup"] = group
        name = f"{fork.service}/{fork.routing_key}"
        out[name] = wire.Route(
            metadata=wire.RouteMetadata(name=name, labels=labels,
                                        resource_version=snapshot.version),
            spec=wire.RouteSpec(service=fork.service, routing_key=fork.routing_key,
                                sandbox=sandbox, route_group=group),
        )  # fmt: skip
    return out


def _select(routes: Routes, selector: Selector) -> Routes:
    return {n: r for n, r in routes.items() if selector.matches(r.metadata.labels)}


def route_events(before: Routes, after: Routes) -> list[tuple[str, wire.Route]]:
    """What a watcher that saw `before` must be told to see `after`, in name order."""
    events: list[tuple[str, wire.Route]] = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if new is None:
            assert old is not None
            events.append(("DELETED", old))
        elif old is None:
            events.append(("ADDED", new))
        elif old.spec != new.spec or old.metadata.labels != new.metadata.labels:
            events.append(("MODIFIED", new))
    return events


def _carriers(snapshot: RoutingSnapshot) -> list[wire.RouteCarrier]:
    return [wire.RouteCarrier(kind=c.kind, name=c.name) for c in snapshot.carriers]


def _line(event_type: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


async def list_or_watch_routes(
    request: web.Request, *, publisher: SnapshotPublisher, groups: GroupMembers,
    selector: Selector, bookmark_interval: float, closing: asyncio.Event,
    shown: Callable[[str], bool] | None = None,
) -> web.StreamResponse:
    snapshot = publisher.latest
    if snapshot is None:
        raise ApiError(503, "no snapshot compiled yet")
    current = _select(routes_of(snapshot, groups(), shown), selector)
    query = request.query
    if query.get("watch", "").lower() not in ("true", "1"):
        body = wire.RouteList(metadata=wire.ListMeta(resource_version=snapshot.version),
                              carriers=_carriers(snapshot),
                              items=[current[n] for n in sorted(current)])  # fmt: skip
        return web.json_response(wire.dump(body))
    rv = query.get("resourceVersion", "")
    timeout_text = query.get("timeoutSeconds", "")
    bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
    if rv and not rv.isdigit():
        raise ApiError(400, f"resourceVersion {rv!r} is not one this server issues")
    if timeout_text and not timeout_text.isdigit():
        raise ApiError(400, "timeoutSeconds must be a non-negative integer")
    if rv not in ("", "0") and rv != snapshot.version:
        raise ApiError(
            410, f"resourceVersion {rv} is not the current routes version {snapshot.version}: "
            "list again and watch from its resourceVersion",
        )
    response = web.StreamResponse(headers={"Content-Type": "application/json;stream=watch"})
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    ends = loop.time() + int(timeout_text) if timeout_text else None
    seen: Routes = {} if rv in ("", "0") else current
    version = snapshot.version
    with contextlib.suppress(ConnectionError):
        for event_type, route in route_events(seen, current):
            await response.write(_line(event_type, wire.dump(route)))
        seen = current
        while not closing.is_set():
            wait = bookmark_interval if ends is None else min(bookmark_interval, ends - loop.time())
            if wait <= 0:
                break
            newer = await _newer(publisher, version, closing, wait)
            if newer is None:
                if bookmarks and not closing.is_set():
                    mark = {"apiVersion": wire.API_VERSION, "kind": "Route",
                            "metadata": {"resourceVersion": version}}  # fmt: skip
                    await response.write(_line("BOOKMARK", mark))
                continue
            version = newer.version
            now = _select(routes_of(newer, groups(), shown), selector)
            for event_type, route in route_events(seen, now):
                await response.write(_line(event_type, wire.dump(route)))
            seen = now
        await response.write_eof()
    return response


async def _newer(publisher: SnapshotPublisher, than: str, closing: asyncio.Event,
                 within: float) -> RoutingSnapshot | None:
    """The next published snapshot within `within` seconds (None: none, or shutting down)."""
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(publisher.wait_newer(than)),
                                          asyncio.ensure_future(closing.wait())]  # fmt: skip
    try:
        done, _ = await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    first = waiters[0]
    if first in done and not first.cancelled():
        newer: RoutingSnapshot = first.result()
        return newer
    return None
