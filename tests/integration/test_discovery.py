"""Discovery end to end: Services and EndpointSlices on the fake API server become baseline
services in the pushed snapshot without a REST call, and a real sidecar routes by them.

The control plane runs in the test loop against the fake API server (kubernetes-asyncio over
real HTTP); the sidecar is a real `forklane.proxy` process subscribed over gRPC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from forklane.proxy.schema import RoutingSnapshot, Service
from tests.support.kubeapi import FakeKube
from tests.support.polling import eventually
from tests.support.processes import start_proxy

ADMIN = "discovery-admin-token-0123456789"


def service(name: str, ports: list[dict[str, Any]], cluster_ip: str = "10.96.0.10") -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": ports}}


def endpoint_slice(service_name: str, suffix: str, endpoints: list[dict[str, Any]],
                   ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": f"{service_name}-{suffix}",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports}


def ready(ip: str, **conditions: bool) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": {"ready": True, **conditions}}


@pytest.fixture
async def cluster() -> AsyncIterator[FakeKube]:
    async with FakeKube(bookmark_interval=0.5) as kube:
        kube.create("Namespace", {"metadata": {"name": "shop",
                                               "labels": {"forklane.io/inject": "enabled"}}})
        kube.create("Namespace", {"metadata": {"name": "bank",
                                               "labels": {"forklane.io/inject": "enabled"}}})
        kube.create("Namespace", {"metadata": {"name": "private"}})
        yield kube


@pytest.fixture
async def plane(cluster: FakeKube, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    settings = Settings(
        listen="127.0.0.1:0", grpc="127.0.0.1:0", store="sqlite", data_dir=tmp_path,
        admin_token=ADMIN, reconcile_interval=5.0, replica="test", kubernetes=True,
        kubeconfig=cluster.kubeconfig(tmp_path / "kubeconfig"), namespace="forklane",
    )
    cp = ControlPlane(settings)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.aclose()


def snapshot_service(cp: ControlPlane, name: str) -> Service | None:
    snap: RoutingSnapshot | None = cp.publisher.latest
    return next((s for s in snap.services if s.name == name), None) if snap else None


def check(cp: ControlPlane, name: str, test: Callable[[Service], bool]) -> Callable[[], bool]:
    def probe() -> bool:
        svc = snapshot_service(cp, name)
        return svc is not None and test(svc)
    return probe


async def test_services_of_opted_in_namespaces_reach_the_snapshot(
    cluster: FakeKube, plane: ControlPlane
) -> None:
    http = {"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}
    grpc = {"name": "grpc", "port": 9090, "targetPort": 9090, "protocol": "TCP"}
    for i, ns in enumerate(("shop", "bank", "private")):
        cluster.create("Service", service("pricing", [http, grpc], f"10.96.0.{10 + i}"), ns)
    # the slice controller resolved the named targetPort "web" to 8080 for these pods
    slice_ports = [{"name": "http", "port": 8080, "protocol": "TCP"},
                   {"name": "grpc", "port": 9090, "protocol": "TCP"}]
    cluster.create("EndpointSlice", endpoint_slice("pricing", "a", [
        ready("10.1.0.5"), {"addresses": ["10.1.0.6"], "conditions": {"ready": False}},
    ], slice_ports), "shop")
    cluster.create("EndpointSlice", endpoint_slice("pricing", "a", [ready("10.2.0.5")],
                                                   slice_ports), "bank")

    await eventually(check(plane, "pricing.shop", lambda s: bool(s.endpoints)), 10,
                     "pricing.shop in the snapshot")
    await eventually(check(plane, "pricing.bank", lambda s: bool(s.endpoints)), 10,
                     "pricing.bank in the snapshot")
    shop = snapshot_service(plane, "pricing.shop")
    assert shop is not None
    assert shop.endpoints == ("10.1.0.5:8080",), "only ready endpoints, via the named port"
    assert {p.port: p.endpoints for p in shop.ports} == {80: ("10.1.0.5:8080",),
                                                         9090: ("10.1.0.5:9090",)}
    assert {"pricing.shop.svc.cluster.local:9090", "pricing.shop.svc", "10.96.0.10:80"} <= set(
        shop.authorities)
    assert shop.namespace == "shop" and "pricing" in shop.namespace_authorities
    assert snapshot_service(plane, "pricing.private") is None, "not opted in"

    # a rollout: the ready pod starts terminating while still serving, a new one is ready
    cluster.replace("EndpointSlice", {**cluster.get("EndpointSlice", "pricing-a", "shop"),
        "endpoints": [ready("10.1.0.7"),
                      {"addresses": ["10.1.0.5"],
                       "conditions": {"ready": False, "serving": True, "terminating": True}}]})
    await eventually(check(plane, "pricing.shop", lambda s: s.endpoints == ("10.1.0.7:8080",)),
                     10, "the new pod replaces the terminating one")
    # the last ready pod goes: the serving-but-terminating one drains instead of a cut
    cluster.replace("EndpointSlice", {**cluster.get("EndpointSlice", "pricing-a", "shop"),
        "endpoints": [{"addresses": ["10.1.0.7"],
                       "conditions": {"ready": False, "serving": True, "terminating": True}}]})
    await eventually(check(plane, "pricing.shop", lambda s: s.endpoints == ("10.1.0.7:8080",)
                           and not s.ports[1].endpoints == ()), 10, "drain")
    # gone entirely: known, no endpoints (proxies answer 503 no-endpoints)
    cluster.delete("EndpointSlice", "pricing-a", "shop")
    await eventually(check(plane, "pricing.shop", lambda s: s.endpoints == ()), 10,
                     "no endpoints left")

    # the namespace opts out: its services leave the snapshot
    ns = cluster.get("Namespace", "bank")
    ns["metadata"]["labels"] = {}
    cluster.replace("Namespace", ns)
    await eventually(lambda: snapshot_service(plane, "pricing.bank") is None, 10,
                     "pricing.bank withdrawn")


async def test_relists_after_410_and_sees_what_happened_meanwhile(
    cluster: FakeKube, plane: ControlPlane
) -> None:
    port = {"name": "", "port": 80, "targetPort": 8080}
    cluster.create("Service", service("a", [port]), "shop")
    cluster.create("Service", service("b", [port], "10.96.0.11"), "shop")
    await eventually(lambda: snapshot_service(plane, "b.shop") is not None, 10, "b discovered")
    kube = plane.kube
    assert kube is not None and kube.discovery is not None
    relists_before = kube.discovery.informers["services"].relists

    # while no watch is open, b is deleted and the history compacted: resuming gets 410
    cluster.disconnect_watches(hold=True)
    await eventually(lambda: cluster.open_watches == 0, 10, "watches closed")
    cluster.delete("Service", "b", "shop")
    cluster.compact()
    cluster.release_watches()
    await eventually(lambda: snapshot_service(plane, "b.shop") is None, 10, "b withdrawn")
    assert kube.discovery.informers["services"].relists > relists_before
    assert snapshot_service(plane, "a.shop") is not None


async def test_discovered_services_route_through_a_real_sidecar(
    cluster: FakeKube, plane: ControlPlane, upstreams: Any, tmp_path: Path
) -> None:
    shop_up = await upstreams("pricing-shop")
    bank_up = await upstreams("pricing-bank")
    for i, (ns, up) in enumerate((("shop", shop_up), ("bank", bank_up))):
        cluster.create("Service", service("pricing", [{"port": 80, "targetPort": up.port}],
                                          f"10.96.1.{i + 1}"), ns)
        cluster.create("EndpointSlice", endpoint_slice(
            "pricing", "x", [ready("127.0.0.1")], [{"name": "", "port": up.port}]), ns)
    await eventually(check(plane, "pricing.bank", lambda s: bool(s.endpoints)), 10, "discovered")
    assert plane.grpc_address is not None
    proxy = start_proxy(None, tmp_path / "proxy.log", "--controlplane",
                        f"127.0.0.1:{plane.grpc_address[1]}", "--token", ADMIN,
                        "--namespace", "shop", "--service", "frontend.shop")
    try:
        async def answered_by(host: str) -> str | None:
            async with aiohttp.ClientSession() as s, s.get(
                    proxy.url() + "/", headers={"Host": host}) as r:
                return r.headers.get("x-upstream")

        async def routed() -> bool:
            return await answered_by("pricing") == "pricing-shop"

        await eventually(routed, 15, "the sidecar routes the bare name in its namespace")
        assert await answered_by("pricing.bank.svc.cluster.local") == "pricing-bank"
        assert await answered_by("pricing.shop:80") == "pricing-shop"
    finally:
        proxy.stop()
