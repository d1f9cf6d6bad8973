"""Discovery: Services and EndpointSlices of opted-in namespaces → discovered services in the
store, without a REST call. The store write is what reaches proxies: the reconciler compiles
and pushes it as it does any other change.

Three informers (Namespaces, Services, EndpointSlices, cluster-wide) each list, then watch
from the list's resourceVersion with bookmarks; a stream that ends is resumed from the last
resourceVersion seen (an event's or a bookmark's); `410 Gone` (the version was compacted)
means a full relist, then a watch from the new list's version; an unreachable API server is
retried with a capped backoff. Every change marks the Services it touches; one writer task
coalesces the marks and writes only what differs from the store.

A namespace is opted in when it carries `forklane.io/inject=enabled` or
`forklane.io/discovery=enabled`, or is listed in the `discovery_namespaces` setting.

Invariants:
- a discovered service is written only when its spec differs from the stored one, with the
  stored resourceVersion (a concurrent writer makes it retry on the next pass);
- a hand-made service of the same name is never overwritten (discovery skips it and logs);
- once every informer has listed, discovered services that no longer exist (Service gone,
  namespace opted out) are deleted;
- several control-plane replicas may all run discovery: each writes the same content it
  reads from the same API server, and identical content is never written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from forklane.controlplane import wire
from forklane.controlplane.kubernetes.client import (
    ENDPOINT_SLICES,
    NAMESPACES,
    SERVICES,
    Kind,
    KubeClient,
    KubeError,
    KubeUnavailable,
)
from forklane.controlplane.kubernetes.identity import (
    SERVICE_NAME_LABEL,
    ServiceKey,
    discovered_spec,
    service_name,
)
from forklane.controlplane.store.base import (
    AlreadyExists,
    Conflict,
    NotFound,
    Record,
    Store,
    StoreError,
)

__all__ = ["OPT_IN_LABELS", "Discovery"]

log = logging.getLogger("forklane.controlplane.discovery")

JSON = dict[str, Any]
OPT_IN_LABELS = (("forklane.io/inject", "enabled"), ("forklane.io/discovery", "enabled"))
CREATED_BY = "system:discovery"
_PREFETCH_FROM = 20  # a write pass over more services than this reads them all at once


@dataclass
class _Informer:
    """The cache of one resource type, kept by list + watch."""

    kind: Kind
    objects: dict[tuple[str, str], JSON] = field(default_factory=dict)
    resource_version: str = ""
    synced: bool = False
    relists: int = 0


def _key(obj: JSON) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


class Discovery:
    def __init__(
        self,
        kube: KubeClient,
        store: Store,
        *,
        cluster_domain: str = "cluster.local",
        namespaces: Iterable[str] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        retry_cap: float = 5.0,
    ) -> None:
        self._kube = kube
        self._store = store
        self._domain = cluster_domain
        self._listed_namespaces = frozenset(namespaces)
        self._clock = clock
        self._retry_cap = retry_cap
        self.informers = {k.plural: _Informer(k) for k in (NAMESPACES, SERVICES, ENDPOINT_SLICES)}
        self._dirty: set[ServiceKey] = set()
        self._everything_dirty = True
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._skipped: set[str] = set()
        self._stored_keys: set[ServiceKey] = set()  # discovered records known in the store
        self.writes = 0  # store writes made (creates, updates, deletes)
        self.synced = asyncio.Event()  # set after the first full write pass

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        for informer in self.informers.values():
            self._tasks.append(asyncio.create_task(self._inform(informer),
                                                   name=f"forklane-watch-{informer.kind.plural}"))
        self._tasks.append(asyncio.create_task(self._write_loop(), name="forklane-discovery"))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- opt-in -----------------------------------------------------------------------------
    def opted_in(self, namespace: str) -> bool:
        if namespace in self._listed_namespaces:
            return True
        ns = self.informers["namespaces"].objects.get(("", namespace))
        labels = ((ns or {}).get("metadata") or {}).get("labels") or {}
        return any(labels.get(k) == v for k, v in OPT_IN_LABELS)

    # -- informers --------------------------------------------------------------------------
    async def _inform(self, informer: _Informer) -> None:
        attempt = 0
        while True:
            try:
                if not informer.resource_version:
                    await self._relist(informer)
                async for event in self._kube.watch(informer.kind, informer.resource_version):
                    self._apply(informer, event)
                attempt = 0  # a stream that ended normally: resume from where it was
            except KubeError as exc:
                if exc.status == 410:
                    log.info("watch %s: %s; relisting", informer.kind.plural, exc.message)
                    informer.resource_version = ""
                    continue
                log.warning("watch %s failed: %s", informer.kind.plural, exc)
                informer.resource_version = ""
            except KubeUnavailable as exc:
                log.warning("watch %s: %s", informer.kind.plural, exc)
            attempt += 1
            await asyncio.sleep(min(self._retry_cap, 0.1 * 2 ** min(attempt, 10)))

    async def _relist(self, informer: _Informer) -> None:
        page = await self._kube.list(informer.kind)
        fresh = {_key(obj): obj for obj in page.get("items") or ()}
        for gone in informer.objects.keys() - fresh.keys():
            self._touch(informer, informer.objects[gone])
        for key, obj in fresh.items():
            if informer.objects.get(key) != obj:
                self._touch(informer, obj)
        informer.objects = fresh
        informer.resource_version = str((page.get("metadata") or {}).get("resourceVersion", ""))
        informer.relists += 1
        if not informer.synced:
            informer.synced = True
            self._everything_dirty = True
        self._wake.set()

    def _apply(self, informer: _Informer, event: JSON) -> None:
        obj = event.get("object") or {}
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            informer.resource_version = str(version)
        kind = event.get("type")
        if kind == "BOOKMARK":
            return
        key = _key(obj)
        if kind == "DELETED":
            informer.objects.pop(key, None)
        elif kind in ("ADDED", "MODIFIED"):
            informer.objects[key] = obj
        else:
            return
        self._touch(informer, obj)
        self._wake.set()

    def _touch(self, informer: _Informer, obj: JSON) -> None:
        namespace, name = _key(obj)
        plural = informer.kind.plural
        if plural == "namespaces":
            self._dirty.update(k for k in self._service_keys() if k.namespace == name)
            self._dirty.update(k for k in self._stored_keys if k.namespace == name)
        elif plural == "services":
            self._dirty.add(ServiceKey(namespace, name))
        else:
            owner = ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
            if owner:
                self._dirty.add(ServiceKey(namespace, owner))

    def _service_keys(self) -> set[ServiceKey]:
        return {ServiceKey(ns, n) for ns, n in self.informers["services"].objects}

    # -- what the store should hold ---------------------------------------------------------
    def desired(self, key: ServiceKey) -> wire.ServiceSpec | None:
        if not self.opted_in(key.namespace):
            return None
        service = self.informers["services"].objects.get((key.namespace, key.name))
        if service is None:
            return None
        slices = [
            s for (ns, _), s in self.informers["endpointslices"].objects.items()
            if ns == key.namespace
            and ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL) == key.name
        ]
        return discovered_spec(service, slices, self._domain)

    @property
    def all_synced(self) -> bool:
        return all(i.synced for i in self.informers.values())

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.all_synced:
                continue
            try:
                await self.write_pass()
            except StoreError as exc:
                log.warning("discovery: store write failed, retrying: %s", exc)
                self._everything_dirty = True
                await asyncio.sleep(1.0)
                self._wake.set()

    async def write_pass(self) -> None:
        """Write every marked service whose stored spec differs (all of them after a sync)."""
        if self._everything_dirty:
            self._everything_dirty = False
            page = await self._store.list("services")
            stored = {
                ServiceKey(r.spec["discovered"]["namespace"], r.spec["discovered"]["name"])
                for r in page.items if isinstance(r.spec.get("discovered"), dict)
            }
            self._stored_keys = stored
            self._dirty |= stored | self._service_keys()
        dirty, self._dirty = self._dirty, set()
        known: dict[str, Record | None] | None = None
        if len(dirty) > _PREFETCH_FROM:  # one read instead of a read per service
            known = {r.name: r for r in (await self._store.list("services")).items}
        for key in sorted(dirty):
            try:
                await self._write(key, known)
            except Conflict:
                self._dirty.add(key)  # someone wrote between our read and write: again
                self._wake.set()
        self.synced.set()

    async def _write(self, key: ServiceKey, known: dict[str, Record | None] | None) -> None:
        name = service_name(key)
        spec = self.desired(key)
        if known is not None:
            current = known.get(name)
        else:
            try:
                current = await self._store.get("services", name)
            except NotFound:
                current = None
        if current is not None and not isinstance(current.spec.get("discovered"), dict):
            if spec is not None and name not in self._skipped:
                self._skipped.add(name)
                log.warning("discovery: services/%s exists and was made by hand; the Kubernetes "
                            "Service %s/%s is not discovered over it", name, key.namespace,
                            key.name)
            return
        if spec is None:
            if current is not None:
                with contextlib.suppress(NotFound):
                    await self._store.delete("services", name,
                                             expected_version=current.resource_version)
                    self.writes += 1
                self._stored_keys.discard(key)
            return
        doc = wire.dump(spec)
        if current is None:
            try:
                await self._store.create("services", name, labels={}, spec=doc, status=None,
                                         created_by=CREATED_BY, now=self._clock())
            except AlreadyExists as exc:
                raise Conflict(str(exc)) from exc
        elif current.spec != doc:
            await self._store.update("services", name, labels=current.labels, spec=doc,
                                     expected_version=current.resource_version, now=self._clock())
        else:
            return
        self.writes += 1
        self._stored_keys.add(key)
