"""The fake cluster's Deployments, ReplicaSets, Pods, garbage collection and Leases against
real clients: kubernetes-asyncio's typed AppsV1/CoreV1/CoordinationV1 APIs and `kubectl
rollout status` (which reads the Deployment status fields the real controller writes)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from tests.support.kubeapi import FakeKube, Kubelet, ScriptedRuntime, Stuck
from tests.support.kubetools import tool
from tests.support.polling import eventually


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    async with FakeKube(bookmark_interval=0.2) as kube:
        kube.create("Namespace", {"metadata": {"name": "shop"}})
        yield kube


@pytest.fixture
async def runtime(fake: FakeKube) -> AsyncIterator[ScriptedRuntime]:
    scripted = ScriptedRuntime({"pricing:broken": Stuck("ImagePullBackOff"),
                                "pricing:crash": Stuck("CrashLoopBackOff")})
    kubelet = Kubelet(fake.store, scripted)
    kubelet.start()
    yield scripted
    await kubelet.aclose()


@pytest.fixture
async def api(fake: FakeKube, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    conf = client.Configuration()
    await config.load_kube_config(config_file=str(fake.kubeconfig(tmp_path / "kc")),
                                  client_configuration=conf)
    async with client.ApiClient(conf) as api_client:
        yield api_client


def deployment(name: str, image: str, replicas: int = 2) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}}


async def test_deployment_to_ready_pods_and_cascading_delete(
        api: client.ApiClient, runtime: ScriptedRuntime) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    await apps.create_namespaced_deployment("shop", deployment("pricing", "pricing:v1"))

    async def available() -> bool:
        got = await apps.read_namespaced_deployment_status("pricing", "shop")
        conds = {c.type: c for c in got.status.conditions or ()}
        return bool(got.status.available_replicas == 2 and "Available" in conds
                    and conds["Available"].status == "True")

    await eventually(available, what="Deployment Available")
    got = await apps.read_namespaced_deployment("pricing", "shop")
    assert got.status.observed_generation == got.metadata.generation == 1
    assert got.status.updated_replicas == got.status.ready_replicas == 2
    progressing = next(c for c in got.status.conditions if c.type == "Progressing")
    assert progressing.reason == "NewReplicaSetAvailable"
    (rs,) = (await apps.list_namespaced_replica_set("shop")).items
    assert rs.metadata.owner_references[0].uid == got.metadata.uid
    assert rs.metadata.owner_references[0].controller is True
    thash = rs.metadata.labels["pod-template-hash"]
    assert rs.metadata.name == f"pricing-{thash}"
    pods = (await core.list_namespaced_pod("shop", label_selector="app=pricing")).items
    assert len(pods) == 2 and all(p.metadata.name.startswith(rs.metadata.name) for p in pods)
    assert all(p.status.phase == "Running" and p.status.pod_ip for p in pods)
    assert {p.metadata.owner_references[0].name for p in pods} == {rs.metadata.name}

    # a new template: a new ReplicaSet, the old one scaled to 0
    await apps.patch_namespaced_deployment(
        "pricing", "shop",
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "pricing:v2"}]}}}})

    async def rolled() -> bool:
        sets = (await apps.list_namespaced_replica_set("shop")).items
        return sorted(s.spec.replicas for s in sets) == [0, 2] and await available()

    await eventually(rolled, what="rollout to v2")
    images = {p.spec.containers[0].image
              for p in (await core.list_namespaced_pod("shop")).items}
    assert images == {"pricing:v2"}

    await apps.delete_namespaced_deployment("pricing", "shop")

    async def collected() -> bool:
        sets = (await apps.list_namespaced_replica_set("shop")).items
        return not sets and not (await core.list_namespaced_pod("shop")).items

    await eventually(collected, what="garbage collection of ReplicaSets and Pods")
    assert runtime.running == set(), "the kubelet stopped every container"


async def test_stuck_pods_carry_the_kubelet_reason(
        api: client.ApiClient, runtime: ScriptedRuntime) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    await apps.create_namespaced_deployment("shop", deployment("broken", "pricing:broken", 1))
    await apps.create_namespaced_deployment("shop", deployment("crash", "pricing:crash", 1))

    async def reasons() -> dict[str, str]:
        out = {}
        for pod in (await core.list_namespaced_pod("shop")).items:
            for cs in pod.status.container_statuses or ():
                if cs.state.waiting is not None:
                    out[pod.metadata.labels["app"]] = cs.state.waiting.reason
        return out

    async def stuck() -> bool:
        return await reasons() == {"broken": "ImagePullBackOff", "crash": "CrashLoopBackOff"}

    await eventually(stuck, what="ImagePullBackOff and CrashLoopBackOff")
    got = await apps.read_namespaced_deployment("broken", "shop")
    available = next(c for c in got.status.conditions if c.type == "Available")
    assert available.status == "False" and available.reason == "MinimumReplicasUnavailable"
    assert got.status.unavailable_replicas == 1


async def test_finalizers_hold_deletion_and_leases_conflict(api: client.ApiClient) -> None:
    core, coord = client.CoreV1Api(api), client.CoordinationV1Api(api)
    await core.create_namespaced_config_map("shop", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="held", finalizers=["forklane.io/cleanup"])))
    await core.delete_namespaced_config_map("held", "shop")
    held = await core.read_namespaced_config_map("held", "shop")
    assert held.metadata.deletion_timestamp is not None
    await core.patch_namespaced_config_map("held", "shop", {"metadata": {"finalizers": None}})
    with pytest.raises(client.ApiException) as info:
        await core.read_namespaced_config_map("held", "shop")
    assert info.value.status == 404

    lease = await coord.create_namespaced_lease("shop", client.V1Lease(
        metadata=client.V1ObjectMeta(name="forks"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15)))
    lease.spec.holder_identity = "b"
    await coord.replace_namespaced_lease("forks", "shop", lease)
    lease.spec.holder_identity = "c"  # the resourceVersion read before b's write
    with pytest.raises(client.ApiException) as info:
        await coord.replace_namespaced_lease("forks", "shop", lease)
    assert info.value.status == 409


async def test_kubectl_rollout_status_and_get(fake: FakeKube, runtime: ScriptedRuntime,
                                              tmp_path: Path) -> None:
    kc = fake.kubeconfig(tmp_path / "kc")
    fake.create("Deployment", deployment("pricing", "pricing:v1"), "shop")

    def run(*args: str) -> str:
        done = subprocess.run([tool("kubectl"), "--kubeconfig", str(kc), "--cache-dir",
                               str(tmp_path / "cache"), "-n", "shop", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = await asyncio.to_thread(run, "rollout", "status", "deployment/pricing",
                                  "--timeout=30s")
    assert 'deployment "pricing" successfully rolled out' in out
    # the fake serves no server-side Table, so columns come from the objects themselves
    ready = await asyncio.to_thread(run, "get", "deploy", "pricing", "-o",
                                    "jsonpath={.status.readyReplicas}/{.spec.replicas}")
    assert ready == "2/2"
    phases = await asyncio.to_thread(run, "get", "pods", "-l", "app=pricing", "-o",
                                     "jsonpath={.items[*].status.phase}")
    assert phases.split() == ["Running", "Running"]
    names = await asyncio.to_thread(run, "get", "rs", "-o", "name")
    assert names.strip().startswith("replicaset.apps/pricing-")
