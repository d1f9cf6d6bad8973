"""A kubelet for the fake cluster: it watches Pods and runs them through a `Runtime`, writing
the Pod status transitions a real kubelet writes (pod lifecycle and container-state pages):

- `Pending` + `ContainerCreating` (waiting) while the runtime starts the containers;
- started: `Running`, `podIP`, containers `running`, conditions `Initialized`,
  `ContainersReady`, `Ready` True;
- an image the runtime cannot pull: `Pending`, waiting `ErrImagePull` then
  `ImagePullBackOff` with the message the kubelet gives (`Back-off pulling image "…"`);
- a container that exits: `Running` with waiting `CrashLoopBackOff`, `restartCount` ≥ 1,
  `Ready` False;
- a deleted Pod's containers are stopped (`Runtime.stop`).

The runtime decides what an image is: `ScriptedRuntime` answers from a table (for tests that
need no process); the end-to-end harness starts real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tests.support.kubeapi._objects import JSON, ApiStatus, Event, ObjectStore, now_text

__all__ = ["Kubelet", "PodAddress", "Runtime", "ScriptedRuntime", "Started", "Stuck"]


@dataclass(frozen=True, slots=True)
class Started:
    ip: str


@dataclass(frozen=True, slots=True)
class Stuck:
    reason: str  # ImagePullBackOff | CrashLoopBackOff | …
    message: str = ""


class Runtime(Protocol):
    async def run(self, pod: JSON, ip: str) -> Started | Stuck: ...

    async def stop(self, pod: JSON) -> None: ...


class PodAddress:
    """Pod IPs on loopback (127.77.0.0/16) so each pod can bind its own containerPort."""

    def __init__(self, prefix: str = "127.77") -> None:
        self._next = itertools.count(2)
        self._prefix = prefix

    def allocate(self) -> str:
        n = next(self._next)
        return f"{self._prefix}.{n // 250}.{n % 250 + 1}"


class ScriptedRuntime:
    """Images named in `stuck` get that outcome; every other image starts at once."""

    def __init__(self, stuck: Mapping[str, Stuck] | None = None) -> None:
        self.stuck = dict(stuck or {})
        self.running: set[str] = set()

    async def run(self, pod: JSON, ip: str) -> Started | Stuck:
        for container in pod["spec"].get("containers") or ():
            outcome = self.stuck.get(container.get("image", ""))
            if outcome is not None:
                return outcome
        self.running.add(pod["metadata"]["name"])
        return Started(ip)

    async def stop(self, pod: JSON) -> None:
        self.running.discard(pod["metadata"]["name"])


def _waiting(pod: JSON, reason: str, message: str, restarts: int = 0) -> list[JSON]:
    return [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
             "restartCount": restarts, "started": False,
             "state": {"waiting": {"reason": reason, "message": message}}}
            for c in pod["spec"].get("containers") or ()]


class Kubelet:
    def __init__(self, store: ObjectStore, runtime: Runtime, *,
                 addresses: PodAddress | None = None, namespaces: tuple[str, ...] = ()) -> None:
        self.store = store
        self.runtime = runtime
        self.addresses = addresses or PodAddress()
        self.namespaces = namespaces
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._pods: dict[tuple[str, str], asyncio.Task[None]] = {}

    def start(self) -> None:
        self.store.listeners.append(self._queue.put_nowait)
        rt = self.store.kind("Pod")
        for pod in self.store.list(rt, None):  # pods made before the kubelet came up
            self._queue.put_nowait(Event(self.store.revision, "ADDED", rt,
                                         pod["metadata"]["namespace"], pod))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fake-kubelet")

    async def aclose(self) -> None:
        with contextlib.suppress(ValueError):
            self.store.listeners.remove(self._queue.put_nowait)
        tasks = [t for t in (self._task, *self._pods.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._pods.clear()

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            if event.rt.kind != "Pod":
                continue
            if self.namespaces and event.namespace not in self.namespaces:
                continue
            key = (event.namespace, event.object["metadata"]["name"])
            gone = event.type == "DELETED" or event.object["metadata"].get("deletionTimestamp")
            if gone:
                task = self._pods.pop(key, None)
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await self.runtime.stop(event.object)
                if event.type != "DELETED":  # graceful deletion: the kubelet ends it
                    with contextlib.suppress(ApiStatus):
                        pod = self.store.get(event.rt, *key)
                        pod["metadata"]["finalizers"] = []
                        self.store.update(event.rt, key[0], key[1], pod)
                continue
            if key not in self._pods and event.type == "ADDED":
                self._pods[key] = asyncio.get_running_loop().create_task(
                    self._start(key), name=f"fake-kubelet-{key[1]}")

    def _write_status(self, key: tuple[str, str], status: JSON) -> None:
        rt = self.store.kind("Pod")
        with contextlib.suppress(ApiStatus):
            pod = self.store.get(rt, *key)
            pod["status"] = {**(pod.get("status") or {}), **status}
            self.store.update(rt, key[0], key[1], pod, "status")

    async def _start(self, key: tuple[str, str]) -> None:
        rt = self.store.kind("Pod")
        try:
            pod = self.store.get(rt, *key)
        except ApiStatus:
            return
        ip = self.addresses.allocate()
        self._write_status(key, {"phase": "Pending", "hostIP": "127.0.0.1",
                                 "startTime": now_text(),
                                 "containerStatuses": _waiting(pod, "ContainerCreating", "")})
        outcome = await self.runtime.run(pod, ip)
        at = now_text()
        if isinstance(outcome, Stuck) and outcome.reason in ("ImagePullBackOff", "ErrImagePull"):
            image = next((c.get("image", "") for c in pod["spec"].get("containers") or ()), "")
            message = outcome.message or f'Back-off pulling image "{image}"'
            self._write_status(key, {"containerStatuses": _waiting(pod, "ErrImagePull", message)})
            self._write_status(key, {
                "containerStatuses": _waiting(pod, "ImagePullBackOff", message),
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": at},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": at},
                    {"type": "ContainersReady", "status": "False", "lastTransitionTime": at,
                     "reason": "ContainersNotReady"},
                    {"type": "Ready", "status": "False", "lastTransitionTime": at,
                     "reason": "ContainersNotReady"},
                ]})
            return
        if isinstance(outcome, Stuck):
            message = outcome.message or "back-off 10s restarting failed container"
            self._write_status(key, {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "containerStatuses": _waiting(pod, outcome.reason, message, restarts=1),
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": at},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": at},
                    {"type": "ContainersReady", "status": "False", "lastTransitionTime": at,
                     "reason": "ContainersNotReady"},
                    {"type": "Ready", "status": "False", "lastTransitionTime": at,
                     "reason": "ContainersNotReady"},
                ]})
            return
        self._write_status(key, {
            "phase": "Running", "podIP": outcome.ip, "podIPs": [{"ip": outcome.ip}],
            "containerStatuses": [
                {"name": c["name"], "image": c.get("image", ""), "ready": True,
                 "imageID": f"docker.io/{c.get('image', '')}@sha256:{'0' * 64}",
                 "containerID": f"containerd://{key[1]}-{c['name']}",
                 "restartCount": 0, "started": True, "state": {"running": {"startedAt": at}}}
                for c in pod["spec"].get("containers") or ()],
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": at},
                {"type": "Initialized", "status": "True", "lastTransitionTime": at},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": at},
                {"type": "Ready", "status": "True", "lastTransitionTime": at},
            ]})
