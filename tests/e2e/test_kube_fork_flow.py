"""End to end on the simulated cluster, with real processes: the test plays the kubelet.

The fake API server holds the demo's three Deployments (frontend → catalog → pricing, image
`forklane-demo/NAME:v1`) and their Services; its controllers make ReplicaSets, Pods and
EndpointSlices; the kubelet (`DemoRuntime`) runs each Pod as the demo service plus its
sidecar on its own loopback IP. The control plane (in this process) discovers the Services
and runs the fork controller. Then, through the SDK: a sandbox forking `pricing.shop` with
image v2 → the fork Deployment appears → its pod runs → the sandbox is Ready → a keyed
request through frontend reaches pricing v2, an unkeyed one v1 → on exit the sandbox is
deleted → the fork Deployment and its pods are gone and the key reaches v1 again. Also an
image the kubelet cannot pull makes the wait fail with `ImagePullBackOff`.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forklane.client import AsyncClient
from forklane.controlplane.kubernetes.workload import fork_name
from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from forklane.errors import WaitTimeout
from tests.support.kubeapi import FakeKube, Kubelet
from tests.support.podruntime import DemoRuntime
from tests.support.polling import eventually

CHAIN = ("frontend", "catalog", "pricing")


def free_port() -> int:
    """A port no one listens on anywhere (the pods bind it on their own loopback IPs)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def deployment(name: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{
                                      "name": "app", "image": f"forklane-demo/{name}:v1",
                                      "ports": [{"name": "http", "containerPort": port}]}]}}}}


def service(name: str, n: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"app": name}, "clusterIP": f"10.96.0.{n}",
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


@dataclass
class Cluster:
    kube: FakeKube
    plane: ControlPlane
    runtime: DemoRuntime
    port: int

    @property
    def api(self) -> str:
        assert self.plane.api_address is not None
        return f"http://127.0.0.1:{self.plane.api_address[1]}"

    def pods(self, selector: str) -> list[dict[str, Any]]:
        return self.kube.store.list(self.kube.store.kind("Pod"), "shop", label_selector=selector)

    def frontend(self) -> str:
        (pod,) = self.pods("app=frontend")
        return f"http://{pod['status']['podIP']}:{self.port}/"

    def deployments(self) -> list[str]:
        return sorted(d["metadata"]["name"]
                      for d in self.kube.store.list(self.kube.store.kind("Deployment"), "shop"))


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    port = free_port()
    async with FakeKube(bookmark_interval=0.5) as kube:
        kube.create("Namespace", {"metadata": {"name": "shop",
                                               "labels": {"forklane.io/inject": "enabled"}}})
        kube.create("Namespace", {"metadata": {"name": "forklane"}})
        for n, name in enumerate(CHAIN, start=10):
            kube.create("Service", service(name, n), "shop")
            kube.create("Deployment", deployment(name, port), "shop")
        settings = Settings(
            listen="127.0.0.1:0", grpc="127.0.0.1:0", store="sqlite", data_dir=tmp_path,
            auth=False, reconcile_interval=2.0, replica="e2e", kubernetes=True,
            kubeconfig=kube.kubeconfig(tmp_path / "kubeconfig"), namespace="forklane",
            fork_resync_interval=1.0, fork_lease_seconds=5,
        )
        plane = ControlPlane(settings)
        await plane.start()
        assert plane.grpc_address is not None
        logs = tmp_path / "pods"
        logs.mkdir()
        runtime = DemoRuntime(logs, f"127.0.0.1:{plane.grpc_address[1]}")
        kubelet = Kubelet(kube.store, runtime)
        kubelet.start()
        try:
            yield Cluster(kube, plane, runtime, port)
        finally:
            await kubelet.aclose()
            await runtime.aclose()
            await plane.aclose()


async def hops(url: str, headers: dict[str, str] | None = None) -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(
            url, headers=headers or {}, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return [f"{h['service']}:{h['version']}" for h in body["hops"]]


async def baseline_answers(cluster: Cluster) -> None:
    async def chain_up() -> bool:
        if len([p for p in cluster.pods("app") if p.get("status", {}).get("podIP")]) < 3:
            return False
        try:
            return await hops(cluster.frontend()) == ["frontend:v1", "catalog:v1", "pricing:v1"]
        except (aiohttp.ClientError, AssertionError, TimeoutError, ValueError):
            return False

    await eventually(chain_up, within=60, what="the baseline chain answering")


FORK = {"service": "pricing.shop",
        "forkOf": {"kind": "Deployment", "namespace": "shop", "name": "pricing"},
        "customizations": {"containers": [{"name": "app", "image": "forklane-demo/pricing:v2",
                                           "env": [{"name": "LOG_LEVEL", "value": "debug"}]}]}}


async def test_fork_a_deployment_route_by_key_and_delete(cluster: Cluster) -> None:
    await baseline_answers(cluster)
    fork = fork_name("pricing", "pr-481")
    async with AsyncClient(cluster.api) as client:
        async with client.sandbox(forks=[FORK], name="pr-481", timeout=60) as sb:
            assert fork in cluster.deployments()
            (pod,) = cluster.pods(f"forklane.io/fork={fork}")
            assert pod["status"]["phase"] == "Running"
            keyed = await hops(cluster.frontend(), dict(sb.headers))
            assert keyed == ["frontend:v1", "catalog:v1", "pricing:v2"]
            assert await hops(cluster.frontend()) == ["frontend:v1", "catalog:v1", "pricing:v1"]
            key_headers = dict(sb.headers)
            fork_pod = pod["metadata"]["name"]
            assert fork_pod in cluster.runtime.running
    await eventually(lambda: fork not in cluster.deployments()
                     and not cluster.pods(f"forklane.io/fork={fork}"), within=30,
                     what="fork Deployment and pods gone")
    await eventually(lambda: fork_pod not in cluster.runtime.running, within=30,
                     what="the fork's processes stopped")
    for _ in range(5):
        assert await hops(cluster.frontend(), key_headers) == [
            "frontend:v1", "catalog:v1", "pricing:v1"], "no request reaches v2 any more"
    assert cluster.deployments() == ["catalog", "frontend", "pricing"]


async def test_image_that_cannot_be_pulled_fails_the_wait_with_the_reason(
        cluster: Cluster) -> None:
    await baseline_answers(cluster)
    bad = {**FORK, "customizations": {"containers": [{"name": "app",
                                                      "image": "forklane-demo/pricing:nope"}]}}
    async with AsyncClient(cluster.api) as client:
        with pytest.raises(WaitTimeout) as info:
            async with client.sandbox(forks=[bad], name="bad-image", timeout=8):
                pass
    assert "ImagePullBackOff" in str(info.value)
    await eventually(lambda: cluster.deployments() == ["catalog", "frontend", "pricing"],
                     within=30, what="the failed sandbox's fork removed with it")
