"""charts/forklane, rendered and linted with the real `helm` in its three variants (defaults,
PostgreSQL with three replicas, cert-manager), every object validated against the
Kubernetes 1.31 schemas (kubernetes-validate; the cert-manager and Prometheus Operator
kinds, which have no upstream schema, are checked by shape), the settings the Deployment
sets checked against the control plane's real settings, and values.schema.json rejecting bad
values with a message that names them."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from forklane.controlplane.settings import Settings
from tests.support.kubetools import tool

CHART = Path(__file__).resolve().parents[2] / "charts" / "forklane"
VARIANTS = {
    "default": [],
    "postgres-3-replicas": ["--set", "replicas=3", "--set", "store.existingSecret=forklane-pg"],
    "cert-manager": ["--set", "webhook.certManager.enabled=true",
                     "--set", "metrics.serviceMonitor=true"],
}
CRD_KINDS = {("cert-manager.io/v1", "Certificate"), ("cert-manager.io/v1", "Issuer"),
             ("monitoring.coreos.com/v1", "ServiceMonitor")}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=120)


def render(args: list[str]) -> list[dict[str, Any]]:
    done = helm("template", "demo", str(CHART), "--namespace", "forklane", *args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_renders_lints_and_validates(variant: str) -> None:
    args = VARIANTS[variant]
    lint = helm("lint", "--strict", str(CHART), *args)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    objs = render(args)
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            assert obj["metadata"]["name"] and obj["spec"], obj
            continue
        kubernetes_validate.validate(obj, "1.31", strict=True)

    (deploy,) = by_kind(objs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsUser"] == 1337 and pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in container["env"]}
    fields = set(Settings.model_fields)
    for name in env:  # values mirror settings: every variable names a real setting
        assert name.startswith("FORKLANE_") and name.removeprefix("FORKLANE_").lower() in fields
    plain = {k.removeprefix("FORKLANE_").lower(): e["value"] for k, e in env.items() if "value" in e}
    settings = Settings(**plain)  # the rendered settings are valid settings
    assert settings.kubernetes and settings.webhook_listen == "0.0.0.0:9443"
    assert settings.sidecar_controlplane_address() == "demo-forklane.forklane.svc:18000"

    (config,) = by_kind(objs, "MutatingWebhookConfiguration")
    for hook in config["webhooks"]:
        assert hook["sideEffects"] == "None" and hook["admissionReviewVersions"] == ["v1"]
        assert hook["failurePolicy"] == "Fail"
        excluded = hook["namespaceSelector"]["matchExpressions"][0]
        assert {"kube-system", "forklane"} <= set(excluded["values"])
        assert hook["clientConfig"]["service"]["name"] == "demo-forklane"
    (role,) = by_kind(objs, "ClusterRole")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        allowed = {"get", "list", "watch", "create", "update"}
        if rule["resources"] == ["deployments"]:  # fork Deployments are ours to remove
            allowed.add("delete")
        assert set(rule["verbs"]) <= allowed
    granted = {r for rule in role["rules"] for r in rule["resources"]}
    forks = {"deployments", "pods"}
    roles = {r["metadata"]["name"]: r for r in by_kind(objs, "Role")}
    lease_role = roles.pop("demo-forklane-forks")
    assert lease_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                    "verbs": ["get", "create", "update"]}]
    if variant == "cert-manager":
        assert granted == {"services", "namespaces", "endpointslices", "tokenreviews", *forks}
        assert not roles, "cert-manager: no Secret access at all"
        assert "cert-manager.io/inject-ca-from" in config["metadata"]["annotations"]
        assert env["FORKLANE_WEBHOOK_CERT_DIR"]["value"] == "/etc/forklane/webhook"
        assert by_kind(objs, "ServiceMonitor")
    else:
        assert granted == {"services", "namespaces", "endpointslices", "tokenreviews",
                           "mutatingwebhookconfigurations", *forks}
        (ns_role,) = roles.values()
        assert ns_role["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                                     "resourceNames": ["demo-forklane-webhook-tls"],
                                     "verbs": ["get", "update"]}]
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    if variant == "postgres-3-replicas":
        assert deploy["spec"]["replicas"] == 3 and pdb["spec"]["minAvailable"] == 1
        assert env["FORKLANE_STORE"]["valueFrom"]["secretKeyRef"]["name"] == "forklane-pg"
        assert not by_kind(objs, "PersistentVolumeClaim")
    elif variant == "default":
        assert by_kind(objs, "PersistentVolumeClaim") and "FORKLANE_STORE" not in env
        assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "webhook.failurePolicy=Sometimes"],
     'webhook.failurePolicy must be one of the following: "Fail", "Ignore"'),
    (["--set", "replicas=0"], "replicas: Must be greater than or equal to 1"),
    (["--set", "sidecar.capture=ebpf"], "sidecar.capture must be one of the following"),
    (["--set-string", "settings.listen=8080"], "settings.listen: Does not match pattern"),
    (["--set", "settingz.listen=0.0.0.0:1"], "Additional property settingz is not allowed"),
    (["--set", "replicas=2"], "replicas > 1 needs store.url or store.existingSecret"),
])
def test_bad_values_are_rejected_with_a_clear_message(args: list[str], message: str) -> None:
    done = helm("template", "demo", str(CHART), *args)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
