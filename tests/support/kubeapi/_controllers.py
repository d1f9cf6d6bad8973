"""The fake cluster's controllers: Deployments → ReplicaSets → Pods with the status transitions
the real controllers make, and ownerReference garbage collection.

Written from the API reference (apps/v1 Deployment, ReplicaSet; core/v1 Pod) and the
Deployments, ReplicaSet and garbage-collection concept pages:
- a Deployment gets one ReplicaSet per pod template, named `<deployment>-<pod-template-hash>`,
  labelled `pod-template-hash`, owned by the Deployment (`ownerReferences`, `controller:
  true`); a new template scales the old ReplicaSets to 0 (strategy Recreate or RollingUpdate,
  without surge accounting);
- a ReplicaSet keeps `spec.replicas` Pods named `<replicaset>-<5 chars>`, owned by it, created
  through admission as the real controller's creates are (the injection webhook runs);
- new Pods are `Pending` with `PodScheduled`; a kubelet (tests/support/kubeapi/_kubelet.py,
  or a test) moves them on: containerStatuses, `Ready`, `podIP`;
- statuses are recomputed from the Pods: a ReplicaSet's `replicas`, `readyReplicas`,
  `availableReplicas`; a Deployment's `observedGeneration`, `replicas`, `updatedReplicas`,
  `readyReplicas`, `availableReplicas`, `unavailableReplicas`, and the conditions `Available`
  (MinimumReplicasAvailable / MinimumReplicasUnavailable) and `Progressing`
  (NewReplicaSetCreated, NewReplicaSetAvailable, ReplicaSetUpdated);
- deleting an owner deletes its dependents (background propagation): a Deployment's
  ReplicaSets, then their Pods;
- the EndpointSlice controller keeps one slice per Service with a selector
  (`<service>-fake`, label `kubernetes.io/service-name`, owned by the Service): the Pods the
  selector matches that have an IP, `conditions.ready` from their `Ready` condition, ports
  from the Service's `targetPort` (a name resolved against the Pod's containerPorts).

Like the real ones, these controllers are asynchronous: they react to watch events on a task
of their own, so a client sees the Deployment first and its Pods a moment later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from typing import Any

from tests.support.kubeapi._objects import (
    JSON,
    ApiStatus,
    Event,
    ObjectStore,
    ResourceType,
    now_text,
)

__all__ = ["APPS_TYPES", "Controllers"]

APPS_TYPES: tuple[ResourceType, ...] = (
    ResourceType("apps", "v1", "Deployment", "deployments", True, short_names=("deploy",),
                 subresources=("status", "scale")),
    ResourceType("apps", "v1", "ReplicaSet", "replicasets", True, short_names=("rs",),
                 subresources=("status", "scale")),
)


def _template_hash(template: JSON) -> str:
    raw = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:10]


def _owner_ref(obj: JSON) -> JSON:
    meta = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def _controlled_by(obj: JSON, owner_uid: str) -> bool:
    return any(ref.get("uid") == owner_uid and ref.get("controller")
               for ref in obj["metadata"].get("ownerReferences") or ())


def _condition(obj: JSON, type_: str) -> JSON | None:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return None


def pod_ready(pod: JSON) -> bool:
    cond = _condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


class Controllers:
    """Runs the Deployment, ReplicaSet and garbage-collector loops against one store."""

    def __init__(self, store: ObjectStore, admission: Any = None) -> None:
        self.store = store
        self.admission = admission
        for rt in APPS_TYPES:
            if (rt.group, rt.plural) not in store.types:
                store.register(rt)
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.errors: list[str] = []

    def start(self) -> None:
        self.store.listeners.append(self._queue.put_nowait)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fake-kube-ctl")

    async def aclose(self) -> None:
        with contextlib.suppress(ValueError):
            self.store.listeners.remove(self._queue.put_nowait)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._handle(event)
            except ApiStatus as exc:  # a conflict with a concurrent writer: the next event
                self.errors.append(f"{event.rt.kind} {event.type}: {exc.message}")

    # -- reactions ----------------------------------------------------------------------------
    async def _handle(self, event: Event) -> None:
        kind, obj, ns = event.rt.kind, event.object, event.namespace
        if event.type == "DELETED":
            self._collect(obj, ns)
            if kind == "Pod":
                self._pods_changed(obj, ns)
            return
        if kind == "Deployment":
            await self._sync_deployment(ns, obj["metadata"]["name"])
        elif kind == "ReplicaSet":
            await self._sync_replicaset(ns, obj["metadata"]["name"])
        elif kind == "Pod":
            self._pods_changed(obj, ns)
        elif kind == "Service":
            self._sync_slice(ns, obj["metadata"]["name"])

    def _get(self, kind: str, ns: str, name: str) -> JSON | None:
        try:
            return self.store.get(self.store.kind(kind), ns, name)
        except ApiStatus:
            return None

    def _children(self, kind: str, ns: str, owner_uid: str) -> list[JSON]:
        return [o for o in self.store.list(self.store.kind(kind), ns)
                if _controlled_by(o, owner_uid)]

    def _collect(self, owner: JSON, ns: str) -> None:
        """Background cascading deletion: dependents of a deleted owner go too."""
        uid = owner.get("metadata", {}).get("uid")
        if not uid:
            return
        for kind in ("ReplicaSet", "Pod", "EndpointSlice"):
            rt = self.store.kind(kind)
            for child in self.store.list(rt, ns):
                refs = child["metadata"].get("ownerReferences") or ()
                if any(r.get("uid") == uid for r in refs):
                    with contextlib.suppress(ApiStatus):
                        self.store.delete(rt, ns, child["metadata"]["name"])

    async def _sync_deployment(self, ns: str, name: str) -> None:
        deploy = self._get("Deployment", ns, name)
        if deploy is None or deploy["metadata"].get("deletionTimestamp"):
            return
        spec = deploy.get("spec") or {}
        template = spec.get("template") or {}
        wanted = int(spec.get("replicas", 1))
        thash = _template_hash(template)
        rs_rt = self.store.kind("ReplicaSet")
        sets = self._children("ReplicaSet", ns, deploy["metadata"]["uid"])
        current = next((rs for rs in sets
                        if rs["metadata"]["labels"].get("pod-template-hash") == thash), None)
        created = False
        if current is None:
            labels = {**(template.get("metadata", {}).get("labels") or {}),
                      "pod-template-hash": thash}
            selector = json.loads(json.dumps(spec.get("selector") or {}))
            selector.setdefault("matchLabels", {})["pod-template-hash"] = thash
            rs_template = json.loads(json.dumps(template))
            rs_template.setdefault("metadata", {})["labels"] = labels
            current = self.store.create(rs_rt, ns, {
                "metadata": {"name": f"{name}-{thash}", "namespace": ns, "labels": labels,
                             "ownerReferences": [_owner_ref(deploy)]},
                "spec": {"replicas": wanted, "selector": selector, "template": rs_template},
            })
            created = True
        elif int(current["spec"].get("replicas", 0)) != wanted:
            current["spec"]["replicas"] = wanted
            self.store.update(rs_rt, ns, current["metadata"]["name"], current)
        for old in sets:
            if old["metadata"]["name"] != current["metadata"]["name"] and \
                    int(old["spec"].get("replicas", 0)) != 0:
                old["spec"]["replicas"] = 0
                self.store.update(rs_rt, ns, old["metadata"]["name"], old)
        self._deployment_status(ns, name, created_rs=created)

    async def _sync_replicaset(self, ns: str, name: str) -> None:
        rs = self._get("ReplicaSet", ns, name)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return
        wanted = int(rs["spec"].get("replicas", 0))
        pod_rt = self.store.kind("Pod")
        pods = [p for p in self._children("Pod", ns, rs["metadata"]["uid"])
                if not p["metadata"].get("deletionTimestamp")]
        for pod in pods[wanted:]:
            with contextlib.suppress(ApiStatus):
                self.store.delete(pod_rt, ns, pod["metadata"]["name"])
        for _ in range(wanted - len(pods)):
            template = json.loads(json.dumps(rs["spec"].get("template") or {}))
            body: JSON = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {**template.get("metadata", {}),
                             "name": f"{name}-{uuid.uuid4().hex[:5]}", "namespace": ns,
                             "ownerReferences": [_owner_ref(rs)]},
                "spec": template.get("spec") or {},
            }
            if self.admission is not None:
                body = await self.admission.mutate(pod_rt, ns, body, dry_run=False,
                                                   username="system:serviceaccount:kube-system:"
                                                            "replicaset-controller")
            made = self.store.create(pod_rt, ns, body)
            made["status"] = {
                "phase": "Pending", "qosClass": "BestEffort",
                "conditions": [{"type": "PodScheduled", "status": "True",
                                "lastTransitionTime": made["metadata"]["creationTimestamp"]}],
            }
            self.store.update(pod_rt, ns, made["metadata"]["name"], made, "status")
        self._replicaset_status(ns, name)

    def _sync_slice(self, ns: str, name: str) -> None:
        svc = self._get("Service", ns, name)
        selector = ((svc or {}).get("spec") or {}).get("selector") or {}
        if svc is None or not selector:
            return
        pods = [p for p in self.store.list(self.store.kind("Pod"), ns)
                if all((p["metadata"].get("labels") or {}).get(k) == v
                       for k, v in selector.items())
                and (p.get("status") or {}).get("podIP")]
        endpoints, ports = [], []
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            ready = pod_ready(pod) and not terminating
            endpoints.append({
                "addresses": [pod["status"]["podIP"]],
                "conditions": {"ready": ready, "serving": pod_ready(pod),
                               "terminating": terminating},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"],
                              "uid": pod["metadata"]["uid"]},
            })
        for port in svc["spec"].get("ports") or ():
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, str) and not target.isdigit():
                target = next((cp["containerPort"] for p in pods
                               for c in p["spec"].get("containers") or ()
                               for cp in c.get("ports") or () if cp.get("name") == target),
                              None)
            if target is not None:
                ports.append({"name": port.get("name", ""), "port": int(target),
                              "protocol": port.get("protocol", "TCP")})
        rt = self.store.kind("EndpointSlice")
        body: JSON = {
            "metadata": {"name": f"{name}-fake", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": name,
                                    "endpointslice.kubernetes.io/managed-by":
                                        "endpointslice-controller.k8s.io"},
                         "ownerReferences": [_owner_ref(svc)]},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
        }
        current = self._get("EndpointSlice", ns, f"{name}-fake")
        if current is None:
            self.store.create(rt, ns, body)
        elif (current.get("endpoints"), current.get("ports")) != (endpoints, ports):
            current["endpoints"], current["ports"] = endpoints, ports
            self.store.update(rt, ns, f"{name}-fake", current)

    def _pods_changed(self, pod: JSON, ns: str) -> None:
        for svc in self.store.list(self.store.kind("Service"), ns):
            self._sync_slice(ns, svc["metadata"]["name"])
        for ref in pod["metadata"].get("ownerReferences") or ():
            if ref.get("kind") == "ReplicaSet":
                self._replicaset_status(ns, ref["name"])
                rs = self._get("ReplicaSet", ns, ref["name"])
                if rs is None:
                    continue
                if len([p for p in self._children("Pod", ns, rs["metadata"]["uid"])
                        if not p["metadata"].get("deletionTimestamp")]) != \
                        int(rs["spec"].get("replicas", 0)):
                    self._queue.put_nowait(Event(self.store.revision, "MODIFIED",
                                                 self.store.kind("ReplicaSet"), ns, rs))

    def _replicaset_status(self, ns: str, name: str) -> None:
        rs = self._get("ReplicaSet", ns, name)
        if rs is None:
            return
        pods = [p for p in self._children("Pod", ns, rs["metadata"]["uid"])
                if not p["metadata"].get("deletionTimestamp")]
        ready = sum(1 for p in pods if pod_ready(p))
        rs["status"] = {"replicas": len(pods), "readyReplicas": ready,
                        "availableReplicas": ready, "fullyLabeledReplicas": len(pods),
                        "observedGeneration": rs["metadata"]["generation"]}
        self.store.update(self.store.kind("ReplicaSet"), ns, name, rs, "status")
        for ref in rs["metadata"].get("ownerReferences") or ():
            if ref.get("kind") == "Deployment":
                self._deployment_status(ns, ref["name"])

    def _deployment_status(self, ns: str, name: str, *, created_rs: bool = False) -> None:
        deploy = self._get("Deployment", ns, name)
        if deploy is None:
            return
        spec = deploy.get("spec") or {}
        wanted = int(spec.get("replicas", 1))
        thash = _template_hash(spec.get("template") or {})
        sets = self._children("ReplicaSet", ns, deploy["metadata"]["uid"])
        replicas = ready = updated = 0
        new_rs = ""
        for rs in sets:
            st = rs.get("status") or {}
            replicas += int(st.get("replicas") or 0)
            ready += int(st.get("readyReplicas") or 0)
            if rs["metadata"]["labels"].get("pod-template-hash") == thash:
                updated += int(st.get("replicas") or 0)
                new_rs = rs["metadata"]["name"]
        old = deploy.get("status") or {}
        now = now_text()

        def cond(type_: str, status: str, reason: str, message: str) -> JSON:
            prev = _condition(deploy, type_)
            at = prev["lastTransitionTime"] if prev and prev.get("status") == status else now
            return {"type": type_, "status": status, "reason": reason, "message": message,
                    "lastUpdateTime": now, "lastTransitionTime": at}

        available = ready >= wanted
        if available:
            avail = cond("Available", "True", "MinimumReplicasAvailable",
                         "Deployment has minimum availability.")
        else:
            avail = cond("Available", "False", "MinimumReplicasUnavailable",
                         "Deployment does not have minimum availability.")
        if available and updated >= wanted:
            prog = cond("Progressing", "True", "NewReplicaSetAvailable",
                        f'ReplicaSet "{new_rs}" has successfully progressed.')
        elif created_rs:
            prog = cond("Progressing", "True", "NewReplicaSetCreated",
                        f'Created new replica set "{new_rs}"')
        else:
            prog = cond("Progressing", "True", "ReplicaSetUpdated",
                        f'ReplicaSet "{new_rs}" is progressing.')
        status: JSON = {"observedGeneration": deploy["metadata"]["generation"],
                        "replicas": replicas, "updatedReplicas": updated,
                        "readyReplicas": ready, "availableReplicas": ready,
                        "unavailableReplicas": max(0, wanted - ready),
                        "conditions": [avail, prog]}
        if {k: v for k, v in status.items() if k != "conditions"} == \
                {k: v for k, v in old.items() if k != "conditions"} and \
                [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == \
                [(c["type"], c["status"], c["reason"]) for c in old.get("conditions") or ()]:
            return
        deploy["status"] = status
        self.store.update(self.store.kind("Deployment"), ns, name, deploy, "status")
