"""Forks of a Deployment on the simulated cluster: how long sandbox create → Ready takes, and
how many fork objects are left behind after create/delete cycles with a restart.

Everything runs on this machine: the fake API server with its controllers, a control plane
(in this process, SQLite), and the kubelet. `ready` uses the kubelet that runs each pod as
real processes (the demo service and its sidecar, `tests/support/podruntime.py`), so the
figure includes starting two Python processes per fork pod; it reports the p50 of RUNS runs
and splits it into: until the fork Deployment exists, the fake kubelet's share (Pod created
→ Pod Ready: process start), and the rest (status, routing, ACKs). `orphans` runs CYCLES
create/delete cycles (scripted kubelet: no processes; every other sandbox is deleted
before it is Ready), replaces the control plane by a new one on the same store halfway
through, then counts fork Deployments, ReplicaSets and Pods, and sandbox records (a stuck
Terminating one would be a leak too), once everything settled (must be 0).

    .venv/bin/python bench/fork_bench.py                 # both, 20 runs and 50 cycles
    .venv/bin/python bench/fork_bench.py ready --runs 5

Not part of the test suite. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forklane._core import build_sandbox  # noqa: E402
from forklane.client import AsyncClient  # noqa: E402
from forklane.controlplane.kubernetes.workload import fork_name  # noqa: E402
from forklane.controlplane.server import ControlPlane  # noqa: E402
from forklane.controlplane.settings import Settings  # noqa: E402
from tests.support.forkfixtures import BASELINE, SERVICE  # noqa: E402
from tests.support.kubeapi import FakeKube, Kubelet, ScriptedRuntime  # noqa: E402
from tests.support.kubeapi._objects import Event  # noqa: E402
from tests.support.podruntime import DemoRuntime  # noqa: E402


async def wait_for(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not (await check() if asyncio.iscoroutinefunction(check) else check()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


def settings(kube: FakeKube, data: Path, replica: str) -> Settings:
    return Settings(listen="127.0.0.1:0", grpc="127.0.0.1:0", store="sqlite", data_dir=data,
                    auth=False, reconcile_interval=2.0, replica=replica, kubernetes=True,
                    kubeconfig=kube.kubeconfig(data / "kubeconfig"), namespace="forklane",
                    fork_resync_interval=1.0, fork_lease_seconds=3)


async def cluster(kube: FakeKube, image: str) -> None:
    kube.create("Namespace", {"metadata": {"name": "shop",
                                           "labels": {"forklane.io/inject": "enabled"}}})
    kube.create("Namespace", {"metadata": {"name": "forklane"}})
    kube.create("Service", SERVICE, "shop")
    base = {**BASELINE, "spec": {**BASELINE["spec"], "template": {
        **BASELINE["spec"]["template"], "spec": {"containers": [{
            "name": "app", "image": image, "ports": [{"name": "http", "containerPort": 18321}]}]}}}}
    kube.create("Deployment", base, "shop")


async def start_plane(kube: FakeKube, data: Path, replica: str) -> ControlPlane:
    plane = ControlPlane(settings(kube, data, replica))
    await plane.start()

    def discovered() -> bool:
        snap = plane.publisher.latest
        return snap is not None and any(s.name == "pricing.shop" for s in snap.services)

    await wait_for(discovered, 30, "pricing.shop discovered")
    return plane


def fork_spec(image: str) -> dict[str, Any]:
    return {"service": "pricing.shop",
            "forkOf": {"kind": "Deployment", "namespace": "shop", "name": "pricing"},
            "customizations": {"containers": [{"name": "app", "image": image}]}}


async def bench_ready(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        async with FakeKube(bookmark_interval=0.5) as kube:
            await cluster(kube, "forklane-demo/pricing:v1")
            plane = await start_plane(kube, data, "bench")
            assert plane.grpc_address is not None and plane.api_address is not None
            (data / "pods").mkdir()
            runtime = DemoRuntime(data / "pods", f"127.0.0.1:{plane.grpc_address[1]}")
            kubelet = Kubelet(kube.store, runtime)
            kubelet.start()
            seen: dict[str, float] = {}

            def on_event(event: Event) -> None:
                meta = event.object.get("metadata", {})
                labels = meta.get("labels") or {}
                fork = labels.get("forklane.io/fork")
                if not fork:
                    return
                kind = event.rt.kind
                if kind == "Deployment" and event.type == "ADDED":
                    seen.setdefault(f"{fork}/created", time.monotonic())
                if kind == "Pod" and event.type == "ADDED":
                    seen.setdefault(f"{fork}/pod", time.monotonic())
                conds = (event.object.get("status") or {}).get("conditions") or ()
                if kind == "Pod" and any(c.get("type") == "Ready" and c.get("status") == "True"
                                         for c in conds):
                    seen.setdefault(f"{fork}/pod-ready", time.monotonic())

            kube.store.listeners.append(on_event)
            totals, created, kubelet_part = [], [], []
            try:
                async with AsyncClient(f"http://127.0.0.1:{plane.api_address[1]}") as client:
                    for i in range(runs):
                        name = f"bench-{i}"
                        fork = fork_name("pricing", name)
                        t0 = time.monotonic()
                        async with client.sandbox(forks=[fork_spec("forklane-demo/pricing:v2")],
                                                  name=name, timeout=60):
                            t1 = time.monotonic()
                        totals.append(t1 - t0)
                        created.append(seen[f"{fork}/created"] - t0)
                        kubelet_part.append(seen[f"{fork}/pod-ready"] - seen[f"{fork}/pod"])
                        await wait_for(lambda f=fork: not kube.store.list(
                            kube.store.kind("Pod"), "shop", f"forklane.io/fork={f}"), 30,
                            "fork pods gone")
            finally:
                await kubelet.aclose()
                await runtime.aclose()
                await plane.aclose()
    p50 = statistics.median
    print(f"create → Ready with a fork Deployment, {runs} runs (real pod processes):")
    print(f"  p50 {p50(totals) * 1000:.0f} ms (min {min(totals) * 1000:.0f}, "
          f"max {max(totals) * 1000:.0f})")
    print(f"  of which: until the fork Deployment exists p50 {p50(created) * 1000:.0f} ms; "
          f"the fake kubelet (Pod created → Ready, starting app + sidecar) "
          f"p50 {p50(kubelet_part) * 1000:.0f} ms; the rest is the controller's status, the "
          "route and the ACKs")


def left_over(kube: FakeKube) -> list[str]:
    """Every fork object (by forklane's label) still in the cluster."""
    return [f"{kind}/{obj['metadata']['name']}"
            for kind in ("Deployment", "ReplicaSet", "Pod")
            for obj in kube.store.list(kube.store.kind(kind), "shop",
                                       "forklane.io/managed-by=forklane")]


async def bench_orphans(cycles: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        async with FakeKube(bookmark_interval=0.5) as kube:
            await cluster(kube, "pricing:v1")
            kubelet = Kubelet(kube.store, ScriptedRuntime())
            kubelet.start()
            plane = await start_plane(kube, data, "first")
            settle = 0.0
            try:
                for i in range(cycles):
                    if i == cycles // 2:
                        await plane.aclose()
                        plane = await start_plane(kube, data, "second")
                    assert plane.api_address is not None
                    async with AsyncClient(f"http://127.0.0.1:{plane.api_address[1]}") as client:
                        await client.sandboxes.create(build_sandbox(
                            [fork_spec("pricing:v2")], name=f"cycle-{i}"))
                        if i % 2 == 0:  # every other one is deleted before it is Ready
                            await client.sandboxes.wait_ready(f"cycle-{i}", 30)
                        await client.sandboxes.delete(f"cycle-{i}")

                started = time.monotonic()

                async def settled() -> bool:
                    _, records = await plane.store.list_all()
                    return not left_over(kube) and not any(r.kind == "sandboxes"
                                                           for r in records)

                try:
                    await wait_for(settled, 60, "fork objects and sandboxes gone")
                except TimeoutError:
                    pass
                settle = time.monotonic() - started
            finally:
                _, records = await plane.store.list_all()
                remaining = left_over(kube) + [f"sandbox/{r.name}" for r in records
                                               if r.kind == "sandboxes"]
                await plane.aclose()
                await kubelet.aclose()
    print(f"orphaned fork objects after {cycles} create/delete cycles with a control-plane "
          f"restart at cycle {cycles // 2}: {len(remaining)} {remaining or ''}"
          f"(Deployments, ReplicaSets, Pods and sandbox records; settled {settle:.1f} s after "
          "the last delete)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=("ready", "orphans", "all"), default="all")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--cycles", type=int, default=50)
    args = parser.parse_args()
    if args.what in ("ready", "all"):
        asyncio.run(bench_ready(args.runs))
    if args.what in ("orphans", "all"):
        asyncio.run(bench_orphans(args.cycles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
