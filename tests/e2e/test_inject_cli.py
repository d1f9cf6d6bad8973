"""`forklane inject -f`, the real CLI as a user runs it: golden output for every workload
kind, injection twice changes nothing, stdin works, every injected object validates against
the Kubernetes 1.31 schemas, bad input is a one-line error with a meaningful exit status,
and the output re-applies cleanly with the real kubectl."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

from tests.support.kubeapi import FakeKube
from tests.support.kubetools import tool

GOLDEN = Path(__file__).parent / "golden"
ARGS = ["--image", "registry.example/forklane:0.1.0",
        "--controlplane", "forklane.forklane.svc:18000"]


def forklane(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forklane", "inject", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_golden_and_idempotent() -> None:
    done = forklane("-f", str(GOLDEN / "inject.input.yaml"), *ARGS)
    assert done.returncode == 0, done.stderr
    expected = GOLDEN / "inject.output.yaml"
    if os.environ.get("FORKLANE_REGEN_GOLDEN") == "1" or not expected.exists():
        expected.write_text(done.stdout)
    assert done.stdout == expected.read_text()

    docs = list(yaml.safe_load_all(done.stdout))
    kinds = {d["kind"]: d for d in docs}
    for kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        names = [c["name"] for c in kinds[kind]["spec"]["template"]["spec"]["containers"]]
        assert names[0] == "forklane-proxy", kind
    cron = kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["containers"][0]["name"] == "forklane-proxy"
    pods = [d for d in docs if d["kind"] == "Pod"]
    assert [len(p["spec"]["containers"]) for p in pods] == [2, 1], "debug injected, opted-out not"
    assert kinds["Service"] == next(d for d in yaml.safe_load_all(
        (GOLDEN / "inject.input.yaml").read_text()) if d["kind"] == "Service")
    for doc in docs:
        kubernetes_validate.validate(doc, "1.31", strict=True)

    again = forklane("-f", "-", *ARGS, stdin=done.stdout)
    assert again.returncode == 0 and again.stdout == done.stdout, "re-injection is a no-op"


def test_errors_are_one_line_with_an_exit_status(tmp_path: Path) -> None:
    missing = forklane("-f", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and missing.stderr.startswith("forklane inject: cannot read")
    bad_yaml = forklane("-f", "-", stdin="a: [1,\n")
    assert bad_yaml.returncode == 6 and "not valid YAML" in bad_yaml.stderr
    bad = forklane("-f", "-", stdin=(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: "
        "{forklane.io/capture: ebpf}}\nspec: {containers: [{name: a, image: b}]}\n"))
    assert bad.returncode == 6
    assert bad.stderr.strip() == ("forklane inject: -: document 1 (Pod p): forklane.io/capture: "
                                  "expected iptables or explicit, not 'ebpf'")
    assert "Traceback" not in bad.stderr + bad_yaml.stderr + missing.stderr


async def test_output_reapplies_cleanly_with_kubectl(tmp_path: Path) -> None:
    injected = forklane("-f", str(GOLDEN / "inject.input.yaml"), *ARGS).stdout
    async with FakeKube() as kube:
        for ns in ("default", "shop", "bank"):
            kube.create("Namespace", {"metadata": {"name": ns}})
        for kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"):
            group, version = ("batch", "v1") if kind in ("Job", "CronJob") else ("apps", "v1")
            from tests.support.kubeapi import ResourceType
            kube.register(ResourceType(group, version, kind, f"{kind.lower()}s", True))
        kc = kube.kubeconfig(tmp_path / "kc")

        def apply() -> str:
            done = subprocess.run(
                [tool("kubectl"), "--kubeconfig", str(kc), "--cache-dir", str(tmp_path / "c"),
                 "apply", "--validate=false", "-f", "-"], input=injected, capture_output=True,
                text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout

        first = await asyncio.to_thread(apply)
        assert "deployment.apps/pricing created" in first
        second = await asyncio.to_thread(apply)
        assert all(line.endswith("unchanged") for line in second.splitlines()), second
