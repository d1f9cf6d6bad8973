"""The fork controller against the fake cluster: a sandbox that forks a Deployment gets a fork
Deployment whose pods the baseline Service never selects, becomes Ready once a pod is, is
routed to that pod, and loses its fork when deleted, expired, or edited to drop it; stuck pods
and a missing baseline are reasons in the status; a restart mid-way ends in one fork; two
replicas on PostgreSQL create it once; orphans are collected.

The control plane runs in the test loop with kubernetes-asyncio over real HTTP to the fake
API server; the kubelet is scripted (no process per pod here; tests/e2e runs real ones).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from forklane.controlplane.kubernetes.workload import fork_name
from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from forklane.controlplane.store.postgres import PostgresStore
from tests.support.forkfixtures import BASELINE, SERVICE, HeldRuntime, fork_body
from tests.support.kubeapi import FakeKube, Kubelet
from tests.support.kubeapi._objects import Event
from tests.support.polling import eventually

ADMIN = "forks-admin-token-0123456789abcdef"
@pytest.fixture
async def cluster() -> AsyncIterator[tuple[FakeKube, HeldRuntime]]:
    async with FakeKube(bookmark_interval=0.5) as kube:
        kube.create("Namespace", {"metadata": {"name": "shop",
                                               "labels": {"forklane.io/inject": "enabled"}}})
        kube.create("Namespace", {"metadata": {"name": "forklane"}})
        kube.create("Service", SERVICE, "shop")
        kube.create("Deployment", BASELINE, "shop")
        runtime = HeldRuntime()
        kubelet = Kubelet(kube.store, runtime)
        kubelet.start()
        try:
            yield kube, runtime
        finally:
            await kubelet.aclose()


def settings_for(kube: FakeKube, tmp_path: Path, **extra: Any) -> Settings:
    return Settings(**{
        "listen": "127.0.0.1:0", "grpc": "127.0.0.1:0", "store": "sqlite",
        "data_dir": tmp_path, "admin_token": ADMIN, "reconcile_interval": 2.0,
        "replica": "test", "kubernetes": True,
        "kubeconfig": kube.kubeconfig(tmp_path / "kubeconfig"), "namespace": "forklane",
        "fork_resync_interval": 1.0, "fork_lease_seconds": 3, **extra})


class Plane:
    def __init__(self, cp: ControlPlane, session: aiohttp.ClientSession) -> None:
        self.cp, self.session = cp, session
        assert cp.api_address is not None
        self.base = f"http://127.0.0.1:{cp.api_address[1]}/api/v1"

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, json=body,
                                        headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            return r.status, await r.json()

    async def sandbox(self, name: str) -> dict[str, Any]:
        status, doc = await self.call("GET", f"/sandboxes/{name}")
        assert status == 200, doc
        return doc  # type: ignore[no-any-return]

    async def conditions(self, name: str) -> dict[str, tuple[str, str]]:
        doc = await self.sandbox(name)
        return {c["type"]: (c["status"], c["reason"])
                for c in (doc.get("status") or {}).get("conditions", ())}

    def fork_route(self, sandbox: str) -> tuple[str, ...] | None:
        snap = self.cp.publisher.latest
        for fork in snap.forks if snap else ():
            if fork.sandbox == sandbox and fork.service == "pricing.shop":
                return fork.endpoints
        return None


async def started(settings: Settings, **kwargs: Any) -> ControlPlane:
    """A control plane that has discovered the baseline service (forks name it)."""
    cp = ControlPlane(settings, **kwargs)
    await cp.start()

    def discovered() -> bool:
        snap = cp.publisher.latest
        return snap is not None and any(s.name == "pricing.shop" for s in snap.services)

    await eventually(discovered, within=20, what="pricing.shop discovered")
    return cp


@pytest.fixture
async def plane(cluster: tuple[FakeKube, HeldRuntime], tmp_path: Path) -> AsyncIterator[Plane]:
    cp = await started(settings_for(cluster[0], tmp_path))
    try:
        async with aiohttp.ClientSession() as session:
            yield Plane(cp, session)
    finally:
        await cp.aclose()


def forks_in(kube: FakeKube) -> list[dict[str, Any]]:
    return [d for d in kube.store.list(kube.store.kind("Deployment"), "shop")
            if d["metadata"]["name"] != "pricing"]


def pods_of(kube: FakeKube, deployment: str) -> list[dict[str, Any]]:
    return kube.store.list(kube.store.kind("Pod"), "shop",
                           label_selector=f"forklane.io/fork={deployment}")


def is_ready(plane: Plane, name: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await plane.sandbox(name)).get("status", {}).get("phase") == "Ready"
    return check


async def test_fork_created_routed_and_removed_with_the_sandbox(
        cluster: tuple[FakeKube, HeldRuntime], plane: Plane) -> None:
    kube, _ = cluster
    status, doc = await plane.call("POST", "/sandboxes", fork_body("pr-481"))
    assert status == 201, doc
    await eventually(is_ready(plane, "pr-481"), within=20, what="sandbox Ready")
    name = fork_name("pricing", "pr-481")
    (dep,) = forks_in(kube)
    assert dep["metadata"]["name"] == name
    assert dep["metadata"]["labels"]["forklane.io/sandbox"] == "pr-481"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    key = doc["spec"]["routingKey"]
    assert container["image"] == "pricing:v2"
    assert env == {"LOG_LEVEL": "debug", "FORKLANE_SANDBOX": "pr-481",
                   "FORKLANE_ROUTING_KEY": key}
    (pod,) = pods_of(kube, name)
    ip = pod["status"]["podIP"]
    assert plane.fork_route("pr-481") == (f"{ip}:8080",), "routed to the fork pod"
    baseline_slice = kube.get("EndpointSlice", "pricing-fake", "shop")
    assert ip not in {a for e in baseline_slice["endpoints"] for a in e["addresses"]}, \
        "the baseline Service never selects the fork"
    got = await plane.sandbox("pr-481")
    conds = {c["type"]: c["status"] for c in got["status"]["conditions"]}
    assert conds["ForkCreated"] == conds["ForkAvailable"] == conds["Routed"] == "True"
    (workload,) = got["status"]["workloads"]
    assert workload["name"] == name and workload["available"]
    assert workload["pods"][0]["name"] == pod["metadata"]["name"]
    assert workload["pods"][0]["ready"] and workload["endpoints"] == [f"{ip}:8080"]

    routed_when_deleted: list[tuple[str, ...] | None] = []

    def on_event(event: Event) -> None:
        if event.type == "DELETED" and event.object["metadata"]["name"] == name:
            routed_when_deleted.append(plane.fork_route("pr-481"))

    kube.store.listeners.append(on_event)
    status, doc = await plane.call("DELETE", "/sandboxes/pr-481")
    assert status == 202, doc
    assert doc["status"]["phase"] == "Terminating" and doc["metadata"]["deletionTimestamp"]
    await eventually(lambda: not forks_in(kube) and not pods_of(kube, name), within=20,
                     what="fork Deployment and pods gone")
    assert routed_when_deleted == [None], "routes were withdrawn before the workload went"

    async def record_gone() -> bool:
        return (await plane.call("GET", "/sandboxes/pr-481"))[0] == 404

    await eventually(record_gone, within=20, what="the sandbox record deleted last")


async def test_stuck_pod_and_missing_baseline_are_reasons_in_the_status(
        cluster: tuple[FakeKube, HeldRuntime], plane: Plane) -> None:
    kube, _ = cluster
    assert (await plane.call("POST", "/sandboxes", fork_body("broken", "pricing:broken")))[0] \
        == 201

    async def pull_failed() -> bool:
        return (await plane.conditions("broken")).get("ForkAvailable") == (
            "False", "ImagePullBackOff")

    await eventually(pull_failed, within=20, what="ImagePullBackOff in ForkAvailable")
    doc = await plane.sandbox("broken")
    assert doc["status"]["phase"] == "Pending"
    assert doc["status"]["workloads"][0]["pods"][0]["reason"] == "ImagePullBackOff"
    assert plane.fork_route("broken") is None, "nothing routed to a pod that is not ready"

    missing = fork_body("ghost")
    missing["spec"]["forks"][0]["forkOf"]["name"] = "nope"
    assert (await plane.call("POST", "/sandboxes", missing))[0] == 201

    async def not_found() -> bool:
        return (await plane.conditions("ghost")).get("ForkCreated") == (
            "False", "BaselineNotFound")

    await eventually(not_found, within=20, what="BaselineNotFound")
    assert (await plane.sandbox("ghost"))["status"]["phase"] == "Failed"

    typo = fork_body("typo")
    typo["spec"]["forks"][0]["customizations"]["containers"][0]["name"] = "ap"

    async def invalid() -> bool:
        return (await plane.conditions("typo")).get("ForkCreated") == (
            "False", "InvalidCustomization")

    assert (await plane.call("POST", "/sandboxes", typo))[0] == 201
    await eventually(invalid, within=20, what="InvalidCustomization")
    assert [d["metadata"]["name"] for d in forks_in(kube)] == [fork_name("pricing", "broken")]


async def test_fork_removed_from_spec_expired_and_orphans_collected(
        cluster: tuple[FakeKube, HeldRuntime], plane: Plane) -> None:
    kube, _ = cluster
    body = fork_body("edit")
    assert (await plane.call("POST", "/sandboxes", body))[0] == 201
    await eventually(is_ready(plane, "edit"), within=20, what="Ready")
    got = await plane.sandbox("edit")
    body["metadata"]["resourceVersion"] = got["metadata"]["resourceVersion"]
    body["spec"]["routingKey"] = got["spec"]["routingKey"]
    body["spec"]["forks"] = [{"service": "pricing.shop", "endpoints": ["127.0.0.1:9"]}]
    status, doc = await plane.call("PUT", "/sandboxes/edit", body)
    assert status == 200, doc
    await eventually(lambda: not forks_in(kube), within=20, what="dropped fork removed")

    assert (await plane.call("POST", "/sandboxes", fork_body("short", ttl={"seconds": 3})))[0] \
        == 201
    await eventually(lambda: len(forks_in(kube)) == 1, within=20, what="fork of 'short'")
    await eventually(lambda: not forks_in(kube), within=30, what="expired sandbox's fork gone")

    orphan = {**BASELINE, "metadata": {
        "name": "pricing-fl-deadbeef", "namespace": "shop",
        "labels": {"forklane.io/managed-by": "forklane", "forklane.io/sandbox": "gone",
                   "forklane.io/sandbox-uid": "0"}}}
    kube.create("Deployment", orphan, "shop")
    foreign = {**BASELINE, "metadata": {"name": "pricing-copy", "namespace": "shop"}}
    kube.create("Deployment", foreign, "shop")
    await eventually(lambda: [d["metadata"]["name"] for d in forks_in(kube)]
                     == ["pricing-copy"], within=20, what="orphan collected, foreign kept")


async def test_restart_between_created_and_routed_leaves_exactly_one_fork(
        cluster: tuple[FakeKube, HeldRuntime], tmp_path: Path) -> None:
    kube, runtime = cluster
    first = await started(settings_for(kube, tmp_path))
    async with aiohttp.ClientSession() as session:
        plane = Plane(first, session)
        assert (await plane.call("POST", "/sandboxes", fork_body("r", "pricing:held")))[0] \
            == 201
        await eventually(lambda: len(forks_in(kube)) == 1, within=20, what="fork created")
        await first.aclose()  # before the pod is ready, so before Routed
        runtime.release.set()
        second = await started(settings_for(kube, tmp_path))
        try:
            plane = Plane(second, session)
            await eventually(is_ready(plane, "r"), within=30, what="Ready after restart")
            (dep,) = forks_in(kube)
            assert len(pods_of(kube, dep["metadata"]["name"])) == 1
            creates = [p for m, p in kube.requests
                       if m == "POST" and p.endswith("/deployments")]
            assert len(creates) == 1, "the restarted replica adopted the fork"
        finally:
            await second.aclose()


PG_DSNS = ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test")


@pytest.fixture
async def pg_schema() -> AsyncIterator[tuple[str, str]]:
    """A fresh schema on the local PostgreSQL (dropped afterwards), or a skip saying why."""
    for dsn in PG_DSNS:
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            continue
        schema = f"fl_forks_{uuid.uuid4().hex[:10]}"
        try:
            yield dsn, schema
        finally:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()
        return
    pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (db test)")


@pytest.mark.postgres
async def test_two_replicas_on_postgres_create_one_fork(
        cluster: tuple[FakeKube, HeldRuntime], tmp_path: Path,
        pg_schema: tuple[str, str]) -> None:
    kube, _ = cluster
    dsn, schema = pg_schema
    planes: list[ControlPlane] = []
    try:
        for i in range(2):
            planes.append(await started(settings_for(kube, tmp_path, store=dsn,
                                                     replica=f"r{i}"),
                                        store=PostgresStore(dsn, schema=schema)))
        async with aiohttp.ClientSession() as session:
            one = Plane(planes[0], session)
            assert (await one.call("POST", "/sandboxes", fork_body("pg")))[0] == 201
            await eventually(is_ready(one, "pg"), within=30, what="Ready")
            await eventually(is_ready(Plane(planes[1], session), "pg"), within=30,
                             what="Ready seen by the other replica")
        leaders = [cp for cp in planes if cp.kube.elector.leading]
        assert len(leaders) == 1
        assert len(forks_in(kube)) == 1
        creates = [p for m, p in kube.requests if m == "POST" and p.endswith("/deployments")]
        assert len(creates) == 1, "only the Lease holder creates"
    finally:
        for cp in planes:
            await cp.aclose()
