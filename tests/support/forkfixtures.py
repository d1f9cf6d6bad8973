"""What the fork tests share: a baseline `pricing` Deployment and its Service in `shop`, a
sandbox body that forks it, and a scripted runtime whose `pricing:held` pods wait for a
signal (to stop a control plane between "Deployment created" and "Routed")."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.kubeapi import ScriptedRuntime, Started, Stuck

__all__ = ["BASELINE", "SERVICE", "HeldRuntime", "fork_body"]

BASELINE: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "pricing", "namespace": "shop", "labels": {"app": "pricing"}},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "pricing"}},
             "template": {"metadata": {"labels": {"app": "pricing", "version": "v1"}},
                          "spec": {"containers": [{
                              "name": "app", "image": "pricing:v1",
                              "ports": [{"name": "http", "containerPort": 8080}]}]}}},
}
SERVICE = {"metadata": {"name": "pricing", "namespace": "shop"},
           "spec": {"selector": {"app": "pricing"}, "clusterIP": "10.96.0.20",
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def fork_body(name: str, image: str = "pricing:v2", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"forks": [{
        "service": "pricing.shop",
        "forkOf": {"kind": "Deployment", "namespace": "shop", "name": "pricing"},
        "customizations": {"containers": [{"name": "app", "image": image,
                                           "env": [{"name": "LOG_LEVEL", "value": "debug"}]}]},
    }], **spec}}


class HeldRuntime(ScriptedRuntime):
    """Pods of `held` images stay ContainerCreating until `release` is set."""

    def __init__(self) -> None:
        super().__init__({"pricing:broken": Stuck("ImagePullBackOff"),
                          "pricing:crash": Stuck("CrashLoopBackOff")})
        self.release = asyncio.Event()
        self.held = {"pricing:held"}

    async def run(self, pod: dict[str, Any], ip: str) -> Started | Stuck:
        if any(c.get("image") in self.held for c in pod["spec"]["containers"]):
            await self.release.wait()
        return await super().run(pod, ip)
