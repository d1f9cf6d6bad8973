"""The injection webhook for real: the control plane serves it over HTTPS with a certificate
it generated, stores in a Secret and puts into the MutatingWebhookConfiguration's caBundle;
the fake API server calls it on Pod creation exactly as kube-apiserver does (TLS verified
against that caBundle, namespaceSelector, failurePolicy). A namespace labelled for
injection gets sidecars on new pods; the others do not.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from forklane.controlplane.kubernetes.certs import CertBundle, plan, webhook_dns_names
from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from tests.support.kubeapi import ApiStatus, FakeKube

NS = "forklane"


def webhook_config(failure_policy: str = "Fail") -> dict[str, Any]:
    """What the chart renders (caBundle left to the control plane)."""
    not_system = {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                  "values": ["kube-system", "kube-public", "kube-node-lease", NS]}
    rules = [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
              "resources": ["pods"], "scope": "Namespaced"}]

    def hook(name: str, path: str, label_op: str) -> dict[str, Any]:
        return {"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": failure_policy, "reinvocationPolicy": "IfNeeded",
                "timeoutSeconds": 5, "rules": rules,
                "clientConfig": {"service": {"name": "forklane", "namespace": NS, "path": path,
                                             "port": 443}},
                "namespaceSelector": {"matchExpressions": [
                    not_system, {"key": "forklane.io/inject", "operator": label_op,
                                 "values": ["enabled"]}]}}

    return {"apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration", "metadata": {"name": "forklane"},
            "webhooks": [hook("namespace.inject.forklane.io", "/inject/namespace-enabled", "In"),
                         hook("pod.inject.forklane.io", "/inject", "NotIn")]}


def pod(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations or {}},
            "spec": {"containers": [{"name": name, "image": f"{name}:v1",
                                     "ports": [{"containerPort": 8080}]}]}}


@pytest.fixture
async def cluster() -> AsyncIterator[FakeKube]:
    async with FakeKube() as kube:
        for name, labels in ((NS, {}), ("shop", {"forklane.io/inject": "enabled"}),
                             ("lab", {}), ("kube-system", {})):
            kube.create("Namespace", {"metadata": {"name": name, "labels": labels}})
        kube.create("Secret", {"metadata": {"name": "forklane-webhook-tls"}, "type": "Opaque"},
                    NS)
        kube.create("MutatingWebhookConfiguration", webhook_config())
        yield kube


@pytest.fixture
async def plane(cluster: FakeKube, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    settings = Settings(
        listen="127.0.0.1:0", grpc="127.0.0.1:0", data_dir=tmp_path, replica="t",
        admin_token="webhook-admin-token-0123456789", kubernetes=True, namespace=NS,
        kubeconfig=cluster.kubeconfig(tmp_path / "kubeconfig"), webhook_listen="127.0.0.1:0",
        sidecar_image="forklane:test",
    )
    cp = ControlPlane(settings)
    await cp.start()
    assert cp.kube is not None and cp.kube.webhook is not None
    assert cp.kube.webhook.address is not None
    cluster.admission.service_addresses[(NS, "forklane")] = cp.kube.webhook.address
    try:
        yield cp
    finally:
        await cp.aclose()


def _containers(obj: dict[str, Any]) -> list[str]:
    return [c["name"] for c in obj["spec"]["containers"]]


async def _create(cluster: FakeKube, obj: dict[str, Any], namespace: str,
                  dry_run: bool = False) -> dict[str, Any]:
    query = "?dryRun=All" if dry_run else ""
    async with aiohttp.ClientSession() as s, s.post(
            f"{cluster.url}/api/v1/namespaces/{namespace}/pods{query}", json=obj) as r:
        body: dict[str, Any] = await r.json()
        if r.status >= 400:
            raise ApiStatus(r.status, body.get("reason", ""), body.get("message", ""))
        return body


async def test_labelled_namespace_gets_sidecars(cluster: FakeKube, plane: ControlPlane) -> None:
    config = cluster.get("MutatingWebhookConfiguration", "forklane")
    bundles = {h["clientConfig"].get("caBundle") for h in config["webhooks"]}
    assert len(bundles) == 1 and None not in bundles, "the control plane set every caBundle"
    secret = cluster.get("Secret", "forklane-webhook-tls", NS)
    assert {"ca.crt", "tls.crt", "tls.key", "bundle.crt"} <= set(secret["data"])

    made = await _create(cluster, pod("pricing"), "shop")
    assert _containers(made) == ["forklane-proxy", "pricing"]
    assert made["metadata"]["annotations"]["forklane.io/injected"] == "1"
    env = {e["name"]: e.get("value") for e in made["spec"]["containers"][0]["env"]}
    assert env["FORKLANE_SERVICE"] == "pricing.shop"
    assert env["FORKLANE_CONTROLPLANE"] == "forklane.forklane.svc:18000"

    opted_out = await _create(cluster, pod("batch", {"forklane.io/inject": "false"}), "shop")
    assert _containers(opted_out) == ["batch"]
    plain = await _create(cluster, pod("notebook"), "lab")
    assert _containers(plain) == ["notebook"]
    annotated = await _create(cluster, pod("exp", {"forklane.io/inject": "true"}), "lab")
    assert _containers(annotated) == ["forklane-proxy", "exp"]
    system = await _create(cluster, pod("dns", {"forklane.io/inject": "true"}), "kube-system")
    assert _containers(system) == ["dns"]
    own = await _create(cluster, pod("forklane", {"forklane.io/inject": "true"}), NS)
    assert _containers(own) == ["forklane"]

    dry = await _create(cluster, pod("preview"), "shop", dry_run=True)
    assert _containers(dry) == ["forklane-proxy", "preview"]
    assert cluster.store.list(cluster.store.kind("Pod"), "shop", field_selector=(
        "metadata.name=preview")) == [], "dry run stored nothing"

    with pytest.raises(ApiStatus) as info:
        await _create(cluster, pod("bad", {"forklane.io/capture": "ebpf"}), "shop")
    assert info.value.code == 400 and "forklane.io/capture" in info.value.message


async def test_failure_policy_when_the_webhook_is_down(cluster: FakeKube,
                                                      plane: ControlPlane) -> None:
    assert plane.kube is not None and plane.kube.webhook is not None
    await plane.kube.webhook.aclose()
    with pytest.raises(ApiStatus) as info:
        await _create(cluster, pod("pricing"), "shop")
    assert info.value.code == 500 and "failed calling webhook" in info.value.message
    config = cluster.get("MutatingWebhookConfiguration", "forklane")
    for hook in config["webhooks"]:
        hook["failurePolicy"] = "Ignore"
    cluster.replace("MutatingWebhookConfiguration", config)
    made = await _create(cluster, pod("pricing"), "shop")
    assert _containers(made) == ["pricing"], "Ignore: the pod starts without a sidecar"


async def test_malformed_review_is_a_400_over_https(plane: ControlPlane) -> None:
    assert plane.kube is not None and plane.kube.webhook is not None
    webhook = plane.kube.webhook
    assert webhook.address is not None
    ctx = ssl.create_default_context(cadata=webhook.bundle)
    url = f"https://127.0.0.1:{webhook.address[1]}/inject"
    async with aiohttp.ClientSession() as s, s.post(
            url, data=b"{not json", server_hostname="forklane.forklane.svc", ssl=ctx) as r:
        assert r.status == 400
        assert "not an AdmissionReview" in (await r.json())["error"]


async def test_rotation_keeps_trust_and_reloads(cluster: FakeKube, plane: ControlPlane) -> None:
    assert plane.kube is not None and plane.kube.webhook is not None
    webhook = plane.kube.webhook
    # a Secret whose CA was issued 2,500 days ago: less than a third of its ten years is
    # left, so the next check issues a new CA, and the bundle trusts both
    names = webhook_dns_names("forklane", NS, "cluster.local")
    aged = plan(CertBundle(), names, datetime.now(UTC) - timedelta(days=2500))
    secret = cluster.get("Secret", "forklane-webhook-tls", NS)
    secret["data"] = {k: base64.b64encode(v.encode()).decode()
                      for k, v in aged.as_data().items()}
    cluster.replace("Secret", secret)
    old_ca = aged.ca_crt
    await webhook.ensure()
    after = cluster.get("Secret", "forklane-webhook-tls", NS)["data"]
    new_ca = base64.b64decode(after["ca.crt"]).decode()
    assert new_ca != old_ca
    bundle = base64.b64decode(after["bundle.crt"]).decode()
    assert new_ca in bundle and old_ca in bundle
    config = cluster.get("MutatingWebhookConfiguration", "forklane")
    assert base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]).decode() == bundle
    made = await _create(cluster, pod("pricing"), "shop")  # the reloaded cert is trusted
    assert _containers(made) == ["forklane-proxy", "pricing"]


def test_plan_rotates_only_what_is_due() -> None:
    names = webhook_dns_names("forklane", NS, "cluster.local")
    now = datetime.now(UTC)
    first = plan(CertBundle(), names, now)
    assert plan(first, names, now + timedelta(days=30)) == first, "nothing due: unchanged"
    renewed = plan(first, names, now + timedelta(days=300))  # serving cert past 2/3
    assert renewed.ca_crt == first.ca_crt and renewed.tls_crt != first.tls_crt
    moved = plan(first, [*names, "forklane.other.svc"], now)
    cert = x509.load_pem_x509_certificate(moved.tls_crt.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "forklane.other.svc" in san.get_values_for_type(x509.DNSName)


async def test_webhook_reviews_count(plane: ControlPlane, cluster: FakeKube) -> None:
    assert plane.kube is not None and plane.kube.webhook is not None
    before = plane.kube.webhook.reviews
    await asyncio.gather(*(_create(cluster, pod(f"p{i}"), "shop") for i in range(5)))
    assert plane.kube.webhook.reviews == before + 5
    assert all(c["dryRun"] is False for c in cluster.admission.calls[-5:])
    json.dumps(cluster.admission.calls[-1])  # the request the fake sent is plain JSON
