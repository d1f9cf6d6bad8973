"""The injection webhook's decisions, as golden AdmissionReview files.

Each case is a real-shaped `admission.k8s.io/v1` AdmissionReview request
(golden/admission/CASE.request.json) and the expected answer (CASE.response.json, with the
base64 JSONPatch shown decoded) and, when it injects, the pod after the patch
(CASE.pod.json). The patch is applied with the `jsonpatch` library (not our own code) and
the result validated against the Kubernetes 1.31 Pod schema. `FORKLANE_REGEN_GOLDEN=1`
rewrites the answers after a deliberate change; review the diff.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from forklane.controlplane.kubernetes.admission import ReviewError, review
from forklane.controlplane.kubernetes.injection import SidecarTemplate

GOLDEN = Path(__file__).parent / "golden" / "admission"
REGEN = os.environ.get("FORKLANE_REGEN_GOLDEN") == "1"
TEMPLATE = SidecarTemplate(image="registry.example/forklane:0.1.0",
                           controlplane="forklane.forklane.svc:18000")


def _pod(name: str, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"generateName": f"{name}-7d9f8-", "namespace": "shop",
                            "labels": {"app": name, "pod-template-hash": "7d9f8"}}
    if annotations is not None:
        meta["annotations"] = annotations
    containers = [{"name": name, "image": f"shop/{name}:v1",
                   "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                   "resources": {}, "terminationMessagePath": "/dev/termination-log",
                   "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": containers, "restartPolicy": "Always",
                     "serviceAccountName": "default", "dnsPolicy": "ClusterFirst", **spec}}


def _request(uid: str, pod: dict[str, Any], namespace: str = "shop",
             kind: str = "Pod", dry_run: bool = False) -> dict[str, Any]:
    resource = {"group": "", "version": "v1", "resource": f"{kind.lower()}s"}
    gvk = {"group": "", "version": "v1", "kind": kind}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": gvk, "resource": resource, "requestKind": gvk,
        "requestResource": resource, "name": "", "namespace": namespace, "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                     "uid": "1b7c1d9e-2b70-4c3c-9d8e-0c6f0b3c9a11",
                     "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                                "system:authenticated"]},
        "object": pod, "oldObject": None, "dryRun": dry_run,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}}}


CASES: dict[str, tuple[dict[str, Any], bool]] = {
    # name: (request, namespace labelled forklane.io/inject=enabled)
    "annotated": (_request("uid-1", _pod("pricing", {"forklane.io/inject": "true"})), False),
    "namespace-labelled": (_request("uid-2", _pod("catalog")), True),
    "not-opted-in": (_request("uid-3", _pod("catalog")), False),
    "opt-out": (_request("uid-4", _pod("catalog", {"forklane.io/inject": "false"})), True),
    "explicit": (_request("uid-5", _pod("pricing", {
        "forklane.io/inject": "true", "forklane.io/capture": "explicit"})), False),
    "capture-annotations": (_request("uid-6", _pod("pricing", {
        "forklane.io/inject": "true", "forklane.io/service": "prices",
        "forklane.io/exclude-outbound-ports": "5432,6379",
        "forklane.io/exclude-outbound-cidrs": "169.254.169.254/32",
        "forklane.io/exclude-inbound-ports": "9100", "forklane.io/inbound-ports": "8080"},
        initContainers=[{"name": "migrate", "image": "shop/migrate:v1"}])), False),
    "kube-system": (_request("uid-7", _pod("dns", {"forklane.io/inject": "true"}),
                             namespace="kube-system"), True),
    "control-plane-namespace": (_request("uid-8", _pod("forklane", {"forklane.io/inject": "true"}),
                                         namespace="forklane"), True),
    "host-network": (_request("uid-9", _pod("agent", {"forklane.io/inject": "true"},
                                            hostNetwork=True)), True),
    "bad-annotation": (_request("uid-10", _pod("pricing", {
        "forklane.io/inject": "true", "forklane.io/exclude-outbound-ports": "5432,http"})), False),
    "dry-run": (_request("uid-11", _pod("pricing", {"forklane.io/inject": "true"}),
                         dry_run=True), False),
    "not-a-pod": (_request("uid-12", {"apiVersion": "v1", "kind": "Service",
                                      "metadata": {"name": "s"}}, kind="Service"), True),
}


def _golden(path: Path, actual: Any) -> Any:
    if REGEN or not path.exists():
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    return json.loads(path.read_text())


def _readable(answer: dict[str, Any]) -> dict[str, Any]:
    shown = copy.deepcopy(answer)
    if "patch" in shown["response"]:
        shown["response"]["patch"] = json.loads(base64.b64decode(shown["response"]["patch"]))
    return shown


@pytest.mark.parametrize("case", sorted(CASES))
def test_admission_golden(case: str) -> None:
    built, enabled = CASES[case]
    request = _golden(GOLDEN / f"{case}.request.json", built)  # the request as committed
    answer = review(request, TEMPLATE, namespace_enabled=enabled)
    assert answer["response"]["uid"] == request["request"]["uid"]
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert _readable(answer) == _golden(GOLDEN / f"{case}.response.json", _readable(answer))
    response = answer["response"]
    if "patch" not in response:
        assert not (GOLDEN / f"{case}.pod.json").exists() or REGEN
        return
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    pod = jsonpatch.apply_patch(request["request"]["object"], ops)
    kubernetes_validate.validate(pod, "1.31", strict=True)
    assert pod == _golden(GOLDEN / f"{case}.pod.json", pod)
    # idempotent: the injected pod, reviewed again, is returned unchanged
    again = copy.deepcopy(request)
    again["request"]["object"] = pod
    assert "patch" not in review(again, TEMPLATE, namespace_enabled=enabled)["response"]


def test_what_an_injected_pod_holds() -> None:
    request, _ = CASES["annotated"]
    ops = json.loads(base64.b64decode(review(request, TEMPLATE, namespace_enabled=False)
                                      ["response"]["patch"]))
    pod = jsonpatch.apply_patch(request["request"]["object"], ops)
    sidecar, app = pod["spec"]["containers"]
    assert (sidecar["name"], app["name"]) == ("forklane-proxy", "pricing")
    sc = sidecar["securityContext"]
    assert (sc["runAsUser"], sc["runAsNonRoot"], sc["readOnlyRootFilesystem"]) == (1337, True, True)
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in sidecar["env"]}
    assert env["FORKLANE_SERVICE"] == "pricing.shop"
    assert env["FORKLANE_LOCAL_APP"] == "127.0.0.1:8080"
    assert env["FORKLANE_CONTROLPLANE_TOKEN_FILE"] == "/var/run/secrets/forklane/token"
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 15000}
    (capture,) = pod["spec"]["initContainers"]
    assert capture["args"][:2] == ["proxy", "capture"]
    assert set(capture["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    token = next(v for v in pod["spec"]["volumes"] if v["name"] == "forklane-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "forklane"
    assert pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "pricing"


def test_explicit_mode_sets_proxy_variables_and_no_init() -> None:
    request, _ = CASES["explicit"]
    ops = json.loads(base64.b64decode(review(request, TEMPLATE, namespace_enabled=False)
                                      ["response"]["patch"]))
    pod = jsonpatch.apply_patch(request["request"]["object"], ops)
    assert "initContainers" not in pod["spec"]
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][1]["env"]}
    assert env["HTTP_PROXY"] == env["http_proxy"] == "http://127.0.0.1:15001"
    assert "forklane.forklane.svc" in env["NO_PROXY"].split(",") and "127.0.0.1" in env["no_proxy"]


@pytest.mark.parametrize("body", [
    None, [], {"kind": "AdmissionReview"},
    {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u"}},
    {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}},
    {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
     "request": {"uid": "u", "kind": {"group": "", "kind": "Pod"}, "operation": "CREATE"}},
])
def test_unreadable_reviews_are_errors(body: Any) -> None:
    with pytest.raises(ReviewError):
        review(body, TEMPLATE, namespace_enabled=True)
