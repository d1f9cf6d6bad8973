"""Fork controller: keeps one fork Deployment per `forkOf` fork of every sandbox, and nothing
else, and reports what it sees in the sandbox's `status.workloads`.

One pass (`run_once`) reads the sandboxes from the store and the Deployments and Pods that
forklane manages from the API server, then:
1. for each `forkOf` fork: reads the baseline Deployment and the Services selecting its pods,
   builds the fork Deployment (`workload.fork_deployment`), creates it when missing, replaces
   it when its spec hash differs, adopts it when it is already there (a restart), and deletes
   one of the same name left by an older sandbox of the same name (another uid);
2. deletes every managed Deployment no sandbox wants any more (sandbox deleted or expired,
   fork removed from the spec, an orphan left by a crash), but only once no published route
   points at its pods (`routed`), so traffic leaves a fork before the fork goes;
3. writes each sandbox's `status.workloads` when it differs (with the resourceVersion read,
   so a concurrent writer wins and the next pass retries);
4. for a Terminating sandbox (`termination`): its workloads are no longer wanted (2. removes
   them once their routes are withdrawn), and once none is left, the record is deleted.

Passes run when the store changes, when a managed Deployment or Pod changes (one watch per
kind), and at least every `interval` seconds. With a `LeaseElector`, only the replica holding
the Lease acts; the others stay idle, so two replicas never both create a fork.

Invariants:
- what the controller owns is found by labels (`forklane.io/managed-by`, `forklane.io/sandbox`,
  `forklane.io/sandbox-uid`): ownership survives restarts and needs no memory;
- a Deployment without forklane's labels is never changed or deleted, even under a fork's name;
- the baseline is only read, never written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from forklane.controlplane import wire
from forklane.controlplane.kubernetes.client import (
    DEPLOYMENTS,
    PODS,
    SERVICES,
    Kind,
    KubeClient,
    KubeError,
    KubeUnavailable,
)
from forklane.controlplane.kubernetes.election import LeaseElector
from forklane.controlplane.kubernetes.workload import (
    FORK_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SPEC_HASH_ANNOTATION,
    Owner,
    WorkloadError,
    fork_deployment,
    fork_name,
    observe,
    owner_of,
    selects,
)
from forklane.controlplane.resources import to_wire
from forklane.controlplane.store.base import Conflict, NotFound, Record, Store, StoreError
from forklane.controlplane.termination import terminating

__all__ = ["ForkController"]

log = logging.getLogger("forklane.controlplane.forks")
JSON = dict[str, Any]
MANAGED = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
Routed = Callable[[], frozenset[str]]  # endpoints some published fork route points at


def _no_routes() -> frozenset[str]:
    return frozenset()


def target_port(service: Mapping[str, Any], template: Mapping[str, Any]) -> int | None:
    """The port the Service's first port sends to, resolved against the pod template's
    containerPorts when it is a name."""
    ports = (service.get("spec") or {}).get("ports") or ()
    if not ports:
        return None
    target = ports[0].get("targetPort", ports[0].get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for container in ((template.get("spec") or {}).get("containers") or ()):
        for port in container.get("ports") or ():
            if port.get("name") == target:
                return int(port["containerPort"])
    return None


class ForkController:
    def __init__(self, kube: KubeClient, store: Store, *, elector: LeaseElector | None = None,
                 interval: float = 5.0, routed: Routed = _no_routes) -> None:
        self._kube = kube
        self._store = store
        self._elector = elector
        self._interval = interval
        self._routed = routed
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.passes = 0
        self.last_error: str | None = None

    # -- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._store.add_listener(self._on_change)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name="forklane-forks"),
            loop.create_task(self._watch(DEPLOYMENTS), name="forklane-forks-watch-deploy"),
            loop.create_task(self._watch(PODS), name="forklane-forks-watch-pods"),
        ]

    async def aclose(self) -> None:
        self._store.remove_listener(self._on_change)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _on_change(self, revision: int) -> None:
        self._wake.set()

    def kick(self) -> None:
        self._wake.set()

    def set_elector(self, elector: LeaseElector) -> None:
        self._elector = elector

    @property
    def leading(self) -> bool:
        return self._elector is None or self._elector.leading

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if self.leading:
                try:
                    await self.run_once()
                    self.last_error = None
                except (KubeError, KubeUnavailable, StoreError) as exc:
                    if str(exc) != self.last_error:
                        log.warning("fork pass failed: %s", exc)
                    self.last_error = str(exc)
                except Exception:
                    log.exception("fork pass failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()

    async def _watch(self, kind: Kind) -> None:
        """Wake the pass whenever a managed object of `kind` changes (resume, relist on 410)."""
        version = ""
        backoff = 0.5
        while True:
            try:
                if not version:
                    listed = await self._kube.list(kind, labelSelector=MANAGED)
                    version = listed["metadata"]["resourceVersion"]
                    self.kick()
                async for event in self._kube.watch(kind, version, label_selector=MANAGED):
                    version = (event.get("object") or {}).get("metadata", {}).get(
                        "resourceVersion", version)
                    if event.get("type") != "BOOKMARK":
                        self.kick()
                backoff = 0.5
            except KubeError as exc:
                if exc.status == 410:
                    version = ""
                    continue
                log.warning("watch %s: %s", kind.plural, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            except KubeUnavailable:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    # -- one pass -----------------------------------------------------------------------------
    async def run_once(self) -> None:
        _, records = await self._store.list_all()
        sandboxes = [r for r in records if r.kind == "sandboxes"]
        managed = (await self._kube.list(DEPLOYMENTS, labelSelector=MANAGED))["items"]
        pods = (await self._kube.list(PODS, labelSelector=MANAGED))["items"]
        existing: dict[tuple[str, str], JSON] = {
            (d["metadata"]["namespace"], d["metadata"]["name"]): d for d in managed}
        wanted: set[tuple[str, str]] = set()
        for record in sandboxes:
            model = to_wire(record)
            assert isinstance(model, wire.Sandbox)
            forks = [f for f in model.spec.forks if f.fork_of is not None]
            if terminating(record.status):
                await self._finish(record, model, forks, existing, pods)
                continue
            if not forks and not (record.status or {}).get("workloads"):
                continue
            workloads = []
            for fork in forks:
                assert fork.fork_of is not None
                key = (fork.fork_of.namespace, fork_name(fork.fork_of.name, record.name))
                wanted.add(key)
                workloads.append(await self._sync_fork(record, model, fork, existing.get(key),
                                                       pods))
            await self._write_workloads(record, workloads)
        await self._collect(existing, wanted)
        self.passes += 1

    async def _sync_fork(self, record: Record, sb: wire.Sandbox, fork: wire.ForkSpec,
                         current: JSON | None, pods: list[JSON]) -> wire.WorkloadStatus:
        assert fork.fork_of is not None
        ref = fork.fork_of
        name = fork_name(ref.name, record.name)

        def failed(reason: str, message: str) -> wire.WorkloadStatus:
            return wire.WorkloadStatus(
                service=fork.service, namespace=ref.namespace, name=name,
                fork_of=f"{ref.namespace}/{ref.name}", generation=record.generation,
                reason=reason, message=message)

        try:
            baseline = await self._kube.get(DEPLOYMENTS, ref.name, ref.namespace)
        except KubeError as exc:
            if exc.status != 404:
                raise
            return failed("BaselineNotFound",
                          f"Deployment {ref.namespace}/{ref.name} does not exist")
        template = (baseline.get("spec") or {}).get("template") or {}
        pod_labels = (template.get("metadata") or {}).get("labels") or {}
        services = (await self._kube.list(SERVICES, ref.namespace))["items"]
        selecting = [s for s in services
                     if selects((s.get("spec") or {}).get("selector") or {}, pod_labels)]
        own_service = fork.service.split(".", 1)[0]
        port_of = next((s for s in selecting if s["metadata"]["name"] == own_service),
                       selecting[0] if selecting else None)
        key = (sb.status.routing_key if sb.status else None) or sb.spec.routing_key or ""
        try:
            desired = fork_deployment(
                baseline, fork, sandbox=record.name, sandbox_uid=record.uid, routing_key=key,
                generation=record.generation,
                service_selectors=[(s.get("spec") or {}).get("selector") or {}
                                   for s in selecting])
        except WorkloadError as exc:
            return failed("InvalidCustomization", str(exc))
        if current is not None:
            owner = owner_of(current)
            if owner is None or owner.sandbox != record.name or owner.uid != record.uid:
                # left by an older sandbox of the same name: it goes first (a later pass
                # creates ours)
                await self._delete(current)
                return failed("NotCreated", f"replacing {name} left by an older sandbox")
            if (current["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION) != \
                    desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION]:
                desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                current = await self._kube.replace(DEPLOYMENTS, desired, ref.namespace)
                log.info("fork %s/%s of sandbox %s updated", ref.namespace, name, record.name)
        else:
            try:
                current = await self._kube.create(DEPLOYMENTS, desired, ref.namespace)
                log.info("fork %s/%s of sandbox %s created", ref.namespace, name, record.name)
            except KubeError as exc:
                if exc.status != 409:
                    raise
                taken = await self._kube.get(DEPLOYMENTS, name, ref.namespace)
                if owner_of(taken) is None:
                    return failed("NameTaken",
                                  f"Deployment {ref.namespace}/{name} exists and is not "
                                  "forklane's")
                current = taken  # another writer made it a moment ago: adopt
        mine = [p for p in pods
                if (p["metadata"].get("labels") or {}).get(FORK_LABEL) == name
                and p["metadata"].get("namespace") == ref.namespace]
        return observe(current, mine, fork=fork, sandbox=record.name,
                       generation=record.generation,
                       port=target_port(port_of, template) if port_of else None)

    async def _finish(self, record: Record, sb: wire.Sandbox, forks: list[wire.ForkSpec],
                      existing: Mapping[tuple[str, str], JSON], pods: list[JSON]) -> None:
        """A Terminating sandbox: report what is left of its workloads (the pass's `_collect`
        removes them once their routes are gone); with nothing left, delete the record."""
        workloads = []
        for fork in forks:
            assert fork.fork_of is not None
            key = (fork.fork_of.namespace, fork_name(fork.fork_of.name, record.name))
            mine = [p for p in pods
                    if (p["metadata"].get("labels") or {}).get(FORK_LABEL) == key[1]
                    and p["metadata"].get("namespace") == key[0]]
            current = existing.get(key)
            if current is not None and owner_of(current) is not None and \
                    owner_of(current) != Owner(record.name, record.uid, fork.service):
                current = None  # not this sandbox's
            if current is not None or mine:
                workloads.append(observe(current, mine, fork=fork, sandbox=record.name,
                                         generation=record.generation, port=None))
        if workloads:
            await self._write_workloads(record, workloads)
            self.kick_later()
            return
        try:
            await self._store.delete("sandboxes", record.name,
                                     expected_version=record.resource_version)
            log.info("sandbox %s: fork workloads gone, deleted", record.name)
        except (Conflict, NotFound):
            self.kick()

    async def _delete(self, deployment: JSON) -> None:
        meta = deployment["metadata"]
        with contextlib.suppress(KubeError):
            await self._kube.delete(DEPLOYMENTS, meta["name"], meta["namespace"],
                                    resource_version=meta["resourceVersion"])
            log.info("fork %s/%s deleted", meta["namespace"], meta["name"])

    async def _collect(self, existing: Mapping[tuple[str, str], JSON],
                       wanted: Iterable[tuple[str, str]]) -> None:
        keep = set(wanted)
        routed = self._routed()
        for key, deployment in existing.items():
            if key in keep or owner_of(deployment) is None:
                continue
            ips = await self._pod_ips(deployment)
            if any(ep.rsplit(":", 1)[0] in ips for ep in routed):
                self.kick_later()
                continue  # routes are withdrawn first; the workload goes on a later pass
            await self._delete(deployment)

    def kick_later(self) -> None:
        """A deletion waits for routes to go: look again soon."""
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, self._wake.set)

    async def _pod_ips(self, deployment: JSON) -> set[str]:
        name = deployment["metadata"]["name"]
        pods = (await self._kube.list(PODS, deployment["metadata"]["namespace"],
                                      labelSelector=f"{FORK_LABEL}={name}"))["items"]
        return {p.get("status", {}).get("podIP") for p in pods} - {None}

    async def _write_workloads(self, record: Record,
                               workloads: list[wire.WorkloadStatus]) -> None:
        status = dict(record.status or {})
        docs = [wire.dump(w) for w in workloads]
        if status.get("workloads", []) == docs:
            return
        status["workloads"] = docs
        try:
            await self._store.update_status("sandboxes", record.name, status=status,
                                            expected_version=record.resource_version)
        except (Conflict, NotFound):
            self.kick()  # someone wrote in between: read again
