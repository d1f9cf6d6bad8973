"""Forking a Deployment, shown on a SIMULATED cluster (no Kubernetes needed).

What is simulated: the Kubernetes API server (the in-process fake the tests use, with its
Deployment/ReplicaSet/EndpointSlice controllers) and the kubelet, which runs each pod as
local processes (the demo's sample service and its forklane sidecar, each pod on its own
loopback IP). What is real: the forklane control plane (discovery, the fork controller, the
reconciler, the gRPC push), the sidecars and every request.

    .venv/bin/python examples/kube_fork_demo.py

It deploys frontend → catalog → pricing (v1), creates a sandbox that forks the `pricing`
Deployment with image `forklane-demo/pricing:v2` (as `forklane sandbox create --fork
pricing.shop --image app=forklane-demo/pricing:v2 --wait` would), shows the fork's
conditions as they change, sends one request with the routing key and one without through
frontend, deletes the sandbox and shows the fork gone. Runs from a checkout of the
repository (it uses the fake cluster in tests/support).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forklane._core import ROUTING_KEY_HEADER, build_sandbox, handle_for  # noqa: E402
from forklane._forks import condition_lines, workload_fork  # noqa: E402
from forklane.client import AsyncClient  # noqa: E402
from forklane.controlplane.server import ControlPlane  # noqa: E402
from forklane.controlplane.settings import Settings  # noqa: E402
from forklane.controlplane.wire import Sandbox  # noqa: E402
from tests.support.kubeapi import FakeKube, Kubelet  # noqa: E402
from tests.support.podruntime import DemoRuntime  # noqa: E402

CHAIN = ("frontend", "catalog", "pricing")


def say(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


async def until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo failed: {what} did not happen within {within:g} s")
        await asyncio.sleep(0.05)


async def ask(url: str, headers: dict[str, str] | None = None) -> str:
    async with aiohttp.ClientSession() as session, session.get(
            url, headers=headers or {}, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        body = await resp.json()
    if resp.status != 200:
        return f"{resp.status} {body}"
    return " → ".join(f"{h['service']} {h['version']}" for h in body["hops"]) + \
        f"   price {body['price']}"


async def main() -> None:
    say("forklane: forking a Deployment — on a SIMULATED cluster (fake API server and "
        "kubelet, real forklane processes)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        async with FakeKube(bookmark_interval=0.5) as kube:
            kube.create("Namespace", {"metadata": {"name": "shop", "labels": {
                "forklane.io/inject": "enabled"}}})
            kube.create("Namespace", {"metadata": {"name": "forklane"}})
            for n, name in enumerate(CHAIN, start=10):
                kube.create("Service", {"metadata": {"name": name, "namespace": "shop"},
                                        "spec": {"selector": {"app": name},
                                                 "clusterIP": f"10.96.0.{n}",
                                                 "ports": [{"port": 80, "targetPort": "http"}]}},
                            "shop")
                kube.create("Deployment", {
                    "metadata": {"name": name, "namespace": "shop"},
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                             "template": {"metadata": {"labels": {"app": name}}, "spec": {
                                 "containers": [{"name": "app",
                                                 "image": f"forklane-demo/{name}:v1",
                                                 "ports": [{"name": "http",
                                                            "containerPort": port}]}]}}}},
                    "shop")
            plane = ControlPlane(Settings(
                listen="127.0.0.1:0", grpc="127.0.0.1:0", store="sqlite", data_dir=data,
                auth=False, reconcile_interval=2.0, replica="demo", kubernetes=True,
                kubeconfig=kube.kubeconfig(data / "kubeconfig"), namespace="forklane",
                fork_resync_interval=1.0))
            await plane.start()
            assert plane.grpc_address is not None and plane.api_address is not None
            (data / "pods").mkdir()
            runtime = DemoRuntime(data / "pods", f"127.0.0.1:{plane.grpc_address[1]}")
            kubelet = Kubelet(kube.store, runtime)
            kubelet.start()
            pods = kube.store.kind("Pod")
            try:
                def frontend() -> str | None:
                    got = kube.store.list(pods, "shop", label_selector="app=frontend")
                    ip = got[0].get("status", {}).get("podIP") if got else None
                    return f"http://{ip}:{port}/" if ip else None

                async def baseline_up() -> bool:
                    url = frontend()
                    try:
                        return url is not None and "pricing v1" in await ask(url)
                    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                        return False

                await until(baseline_up, 90, "the baseline answering")
                say("1. baseline running: frontend → catalog → pricing (v1), one pod each, "
                    "discovered as NAME.shop")
                fork = workload_fork("pricing.shop",
                                     images={"app": "forklane-demo/pricing:v2"},
                                     env=["LOG_LEVEL=debug"])
                say("2. sandbox create --fork pricing.shop --image app=forklane-demo/pricing:v2"
                    " --env LOG_LEVEL=debug --wait")
                seen: dict[str, tuple[str, str]] = {}

                def progress(sb: Sandbox) -> None:
                    nonlocal seen
                    lines, seen = condition_lines(seen, sb)
                    for line in lines:
                        say(f"     {line}")

                url = frontend()
                assert url is not None
                async with AsyncClient(f"http://127.0.0.1:{plane.api_address[1]}") as client:
                    await client.sandboxes.create(build_sandbox([fork], name="pr-481"))
                    ready = await client.sandboxes.wait_ready("pr-481", 90, progress)
                    (workload,) = ready.status.workloads if ready.status else []
                    say(f"3. fork Deployment {workload.namespace}/{workload.name}: "
                        f"{workload.ready_replicas}/{workload.replicas} ready, pod "
                        f"{workload.pods[0].name} at {workload.endpoints[0]}")
                    key = {ROUTING_KEY_HEADER: handle_for(ready).routing_key}
                    say(f"4. with the key:    {await ask(url, key)}")
                    say(f"   without the key: {await ask(url)}")
                    await client.sandboxes.delete("pr-481")
                    say("5. sandbox deleted")

                    async def gone() -> bool:
                        return not kube.store.list(pods, "shop",
                                                   label_selector="forklane.io/sandbox=pr-481")

                    await until(gone, 60, "the fork's pods gone")
                    names = [d["metadata"]["name"] for d in
                             kube.store.list(kube.store.kind("Deployment"), "shop")]
                    say(f"   Deployments left: {', '.join(sorted(names))}")
                    say(f"   the old key now:  {await ask(url, key)}")
            finally:
                await kubelet.aclose()
                await runtime.aclose()
                await plane.aclose()
    say("done (simulated cluster)")


if __name__ == "__main__":
    asyncio.run(main())
