"""`forklane sandbox create --fork NAME.NAMESPACE --image … --env … --wait` and `sandbox get`
against a control plane forking Deployments on the fake cluster (scripted kubelet): the wait
says what it waits for (the pod's reason when stuck), a stuck pod makes it exit 8 naming
the reason, and `get` shows the fork workload and its pods."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forklane.controlplane.kubernetes.workload import fork_name
from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from tests.support.forkfixtures import BASELINE, SERVICE, HeldRuntime
from tests.support.kubeapi import FakeKube, Kubelet
from tests.support.polling import eventually

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def api_url(tmp_path: Path) -> AsyncIterator[tuple[str, FakeKube]]:
    async with FakeKube(bookmark_interval=0.5) as kube:
        kube.create("Namespace", {"metadata": {"name": "shop",
                                               "labels": {"forklane.io/inject": "enabled"}}})
        kube.create("Namespace", {"metadata": {"name": "forklane"}})
        kube.create("Service", SERVICE, "shop")
        kube.create("Deployment", BASELINE, "shop")
        kubelet = Kubelet(kube.store, HeldRuntime())
        kubelet.start()
        plane = ControlPlane(Settings(
            listen="127.0.0.1:0", grpc="127.0.0.1:0", store="sqlite", data_dir=tmp_path,
            auth=False, reconcile_interval=2.0, replica="cli", kubernetes=True,
            kubeconfig=kube.kubeconfig(tmp_path / "kubeconfig"), namespace="forklane",
            fork_resync_interval=1.0, fork_lease_seconds=3))
        await plane.start()

        def discovered() -> bool:
            snap = plane.publisher.latest
            return snap is not None and any(s.name == "pricing.shop" for s in snap.services)

        try:
            await eventually(discovered, within=20, what="pricing.shop discovered")
            assert plane.api_address is not None
            yield f"http://127.0.0.1:{plane.api_address[1]}", kube
        finally:
            await plane.aclose()
            await kubelet.aclose()


async def cli(url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKLANE_")}
    env.update(HOME=str(home), FORKLANE_CONFIG=str(home / "forklane.yaml"), COLUMNS="160",
               PYTHONPATH=str(REPO), FORKLANE_URL=url)
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "forklane", *args], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=90, check=False)


async def test_create_with_image_env_replicas_waits_condition_by_condition(
        api_url: tuple[str, FakeKube], tmp_path: Path) -> None:
    url, kube = api_url
    done = await cli(url, tmp_path, "sandbox", "create", "--name", "pr-481",
                     "--fork", "pricing.shop", "--image", "app=pricing:pr-481",
                     "--env", "LOG_LEVEL=debug", "--replicas", "2", "--wait", "--timeout", "30")
    assert done.returncode == 0, done.stderr
    waiting = [line for line in done.stderr.splitlines() if line.startswith("waiting for")]
    assert all(line.startswith("waiting for sandbox pr-481: ") for line in waiting), waiting
    assert "pricing.shop<shop/pricing" in done.stdout and "Ready" in done.stdout
    dep = kube.get("Deployment", fork_name("pricing", "pr-481"), "shop")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "pricing:pr-481" and dep["spec"]["replicas"] == 2
    assert {"name": "LOG_LEVEL", "value": "debug"} in container["env"]

    got = await cli(url, tmp_path, "sandbox", "get", "pr-481")
    assert got.returncode == 0, got.stderr
    assert f"shop/{fork_name('pricing', 'pr-481')}" in got.stdout
    assert got.stdout.count(fork_name("pricing", "pr-481") + "-") == 2, "both pods listed"
    assert "2/2" in got.stdout

    gone = await cli(url, tmp_path, "sandbox", "delete", "pr-481", "--wait", "--timeout", "30")
    assert gone.returncode == 0, gone.stderr
    lines = gone.stderr.strip().splitlines()
    assert any(line.startswith("sandbox pr-481: Terminating: routes withdrawn, removing 1 ")
               for line in lines), lines
    assert lines[-1] == "sandbox pr-481 deleted"
    forks = kube.store.list(kube.store.kind("Deployment"), "shop", "forklane.io/sandbox=pr-481")
    assert forks == [], "the fork Deployment goes before the sandbox's record"


async def test_stuck_pod_exits_8_with_the_reason_and_bad_flags_exit_2(
        api_url: tuple[str, FakeKube], tmp_path: Path) -> None:
    url, _ = api_url
    done = await cli(url, tmp_path, "sandbox", "create", "--name", "broken",
                     "--fork", "pricing.shop", "--image", "app=pricing:broken", "--wait",
                     "--timeout", "6")
    assert done.returncode == 8, done.stderr
    # the wait says what it waits for, condition by condition, with the pod's reason
    assert "waiting for sandbox broken: Pending: ImagePullBackOff (pricing.shop: pod " \
        in done.stderr
    assert "ImagePullBackOff" in done.stderr.strip().splitlines()[-1]

    for args, needle in [
        (["--fork", "pricing", "--image", "app=x:1"], "NAME.NAMESPACE"),
        (["--fork", "pricing.shop", "--image", "app"], "CONTAINER=IMAGE"),
        (["--fork", "a.shop", "--fork", "b.shop", "--env", "K=V"], "exactly one"),
        (["--fork", "pricing.shop", "--env", "K=V"], "say which container"),
    ]:
        bad = await cli(url, tmp_path, "sandbox", "create", *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert needle in bad.stderr and "Traceback" not in bad.stderr
