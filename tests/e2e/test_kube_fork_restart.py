"""A control-plane process killed (SIGKILL) between "fork Deployment created" and "Routed"
ends, after a restart on the same store, in exactly one fork: the new process waits out the
dead one's Lease, adopts the Deployment it finds by its labels, and routes to its pod."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from forklane.controlplane.kubernetes.workload import fork_name
from tests.support.forkfixtures import BASELINE, SERVICE, HeldRuntime, fork_body
from tests.support.kubeapi import FakeKube, Kubelet
from tests.support.polling import eventually
from tests.support.processes import Proc, spawn, wait_for_line

_READY = re.compile(r"listening on http://(\S+) ")


async def start_plane(kube: FakeKube, tmp_path: Path, n: int) -> tuple[Proc, str]:
    cmd = [sys.executable, "-m", "forklane.controlplane", "serve", "--no-auth",
           "--listen", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--store", "sqlite",
           "--data-dir", str(tmp_path / "data"), "--kubernetes",
           "--kubeconfig", str(kube.kubeconfig(tmp_path / "kubeconfig")),
           "--namespace", "forklane", "--fork-lease-seconds", "3",
           "--fork-resync-interval", "1", "--replica", f"cp{n}"]
    proc = spawn(cmd, tmp_path / f"cp{n}.log")
    line = await asyncio.to_thread(wait_for_line, proc, "forklane controlplane listening", 30)
    found = _READY.search(line)
    assert found, line
    return proc, f"http://{found.group(1)}/api/v1"


async def test_kill_between_created_and_routed_leaves_one_fork(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    async with FakeKube(bookmark_interval=0.5) as kube:
        kube.create("Namespace", {"metadata": {"name": "shop",
                                               "labels": {"forklane.io/inject": "enabled"}}})
        kube.create("Namespace", {"metadata": {"name": "forklane"}})
        kube.create("Service", SERVICE, "shop")
        kube.create("Deployment", BASELINE, "shop")
        runtime = HeldRuntime()
        kubelet = Kubelet(kube.store, runtime)
        kubelet.start()
        procs: list[Proc] = []
        try:
            first, api = await start_plane(kube, tmp_path, 1)
            procs.append(first)
            async with aiohttp.ClientSession() as session:
                async def create() -> bool:
                    async with session.post(f"{api}/sandboxes",
                                            json=fork_body("r", "pricing:held")) as resp:
                        return resp.status == 201  # 422 until pricing.shop is discovered

                await eventually(create, within=30, what="sandbox created")
                name = fork_name("pricing", "r")
                deployments = kube.store.kind("Deployment")
                await eventually(lambda: any(d["metadata"]["name"] == name
                                             for d in kube.store.list(deployments, "shop")),
                                 within=30, what="fork Deployment created")
                first.popen.send_signal(signal.SIGKILL)  # no cleanup, the Lease stays held
                first.popen.wait(10)
                runtime.release.set()
                second, api = await start_plane(kube, tmp_path, 2)
                procs.append(second)

                async def ready() -> bool:
                    async with session.get(f"{api}/sandboxes/r") as resp:
                        doc: dict[str, Any] = await resp.json()
                    return bool(doc.get("status", {}).get("phase") == "Ready")

                await eventually(ready, within=60, what="Ready after the restart")
            forks = [d for d in kube.store.list(deployments, "shop")
                     if d["metadata"]["name"] != "pricing"]
            assert [d["metadata"]["name"] for d in forks] == [name]
            pods = kube.store.list(kube.store.kind("Pod"), "shop",
                                   label_selector=f"forklane.io/fork={name}")
            assert len(pods) == 1
            creates = [p for m, p in kube.requests if m == "POST" and p.endswith("/deployments")]
            assert len(creates) == 1
            lease = kube.get("Lease", "forklane-forks", "forklane")
            assert lease["spec"]["holderIdentity"].startswith("cp2-")
            assert lease["spec"]["leaseTransitions"] >= 1
        finally:
            for proc in procs:
                proc.stop()
            await kubelet.aclose()
