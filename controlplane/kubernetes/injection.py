"""Sidecar injection: a Pod (or a workload's pod template) → the RFC 6902 JSONPatch that puts
forklane beside it. Pure: the webhook and `forklane inject -f` both call it.

Opting in (pods):
- annotation `forklane.io/inject: "true"` injects, `"false"` never does; otherwise the
  namespace label `forklane.io/inject=enabled` decides;
- never in `kube-system`, `kube-public`, `kube-node-lease` or the control plane's own
  namespace, never into a `hostNetwork` pod (capture would rewrite the node's rules);
- a pod that already has the `forklane-proxy` container is left unchanged (idempotent: the
  webhook may be called twice, `forklane inject` output may be injected again).

Per-pod annotations (all optional):
- `forklane.io/capture: iptables|explicit` (default iptables): `iptables` adds the
  `forklane-capture` init container (`forklane proxy capture`, NET_ADMIN and NET_RAW, root,
  exits after installing the nat rules); `explicit` adds no init container and sets
  `HTTP_PROXY`/`http_proxy` (the outbound port) and `NO_PROXY`/`no_proxy` (loopback, the
  control plane) on every app container that does not set them itself;
- `forklane.io/inbound-ports` (`*` or `P1,P2`), `forklane.io/exclude-inbound-ports`,
  `forklane.io/exclude-outbound-ports`, `forklane.io/exclude-outbound-cidrs`,
  `forklane.io/include-outbound-cidrs` (`*` or CIDRs): passed to the capture init as the
  flags of the same names (the sidecar's own ports are always excluded by capture itself);
- `forklane.io/service: NAME`: the identity, instead of the `app.kubernetes.io/name` or
  `app` label; the sidecar subscribes as `NAME.NAMESPACE` (the name discovery gives it);
- `forklane.io/local-port`: the app port inbound traffic is delivered to (default: the first
  containerPort of the first app container).
A fork's pods (labels `forklane.io/fork-of` and `forklane.io/sandbox`, set by whoever makes
fork workloads) get a sidecar that subscribes as the forked service and knows its sandbox
(`FORKLANE_SANDBOX`).

What the patch adds: the `forklane-proxy` container first (image, ports 15001/15006/15000,
resources, readiness and liveness on the admin port, a preStop that keeps serving while the
endpoints are withdrawn before SIGTERM starts the drain, UID/GID 1337, non-root, read-only
root filesystem, no capabilities), a projected ServiceAccount token volume (audience
`forklane`), an emptyDir for the last ACKed snapshot, the capture init container, and the
annotations `forklane.io/injected` and `kubectl.kubernetes.io/default-container` (so
`kubectl exec/logs` still pick the app).
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANNOTATION_PREFIX",
    "PROXY_UID",
    "SIDECAR_NAME",
    "InjectionError",
    "SidecarTemplate",
    "apply_ops",
    "decide",
    "pod_patch",
]

JSON = dict[str, Any]
Op = dict[str, Any]

ANNOTATION_PREFIX = "forklane.io/"
INJECT = "forklane.io/inject"
INJECTED = "forklane.io/injected"
NAMESPACE_LABEL = "forklane.io/inject"
SIDECAR_NAME = "forklane-proxy"
CAPTURE_NAME = "forklane-capture"
TOKEN_VOLUME = "forklane-token"
STATE_VOLUME = "forklane-state"
TOKEN_DIR = "/var/run/secrets/forklane"
STATE_DIR = "/var/lib/forklane"
PROXY_UID = 1337
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})


class InjectionError(ValueError):
    """An annotation the injector cannot honour; the message names it."""


@dataclass(frozen=True, slots=True)
class SidecarTemplate:
    """The sidecar's defaults (chart values `sidecar.*`, control-plane settings `sidecar_*`)."""

    image: str = "forklane:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    controlplane: str = "forklane.forklane.svc:18000"
    controlplane_namespace: str = "forklane"
    audience: str = "forklane"
    token_seconds: int = 3600
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    cpu_limit: str = ""
    memory_limit: str = "128Mi"
    outbound_port: int = 15001
    inbound_port: int = 15006
    admin_port: int = 15000
    drain_seconds: int = 5
    prestop_seconds: int = 5
    capture: str = "iptables"
    version: str = "1"  # the value of forklane.io/injected

    def resources(self) -> JSON:
        requests = {k: v for k, v in (("cpu", self.cpu_request),
                                      ("memory", self.memory_request)) if v}
        limits = {k: v for k, v in (("cpu", self.cpu_limit), ("memory", self.memory_limit)) if v}
        out: JSON = {}
        if requests:
            out["requests"] = requests
        if limits:
            out["limits"] = limits
        return out


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _ports(text: str, what: str, star: bool = False) -> str:
    text = text.strip()
    if star and text == "*":
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    for p in parts:
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise InjectionError(f"{what}: {p!r} is not a port (1..65535)")
    return ",".join(parts)


def _cidrs(text: str, what: str, star: bool = False) -> str:
    text = text.strip()
    if star and text == "*":
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    for p in parts:
        try:
            ipaddress.ip_network(p, strict=False)
        except ValueError as exc:
            raise InjectionError(f"{what}: {p!r} is not a CIDR") from exc
    return ",".join(parts)


def decide(pod: Mapping[str, Any], namespace: str, namespace_enabled: bool,
           template: SidecarTemplate) -> tuple[bool, str]:
    """(inject?, why) for one pod."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations = meta.get("annotations") or {}
    if namespace in SYSTEM_NAMESPACES or namespace == template.controlplane_namespace:
        return False, f"namespace {namespace} is never injected"
    if any(c.get("name") == SIDECAR_NAME for c in spec.get("containers") or ()):
        return False, "already injected"
    if spec.get("hostNetwork"):
        return False, "hostNetwork pods are never injected"
    wanted = str(annotations.get(INJECT, "")).strip().lower()
    if wanted == "false":
        return False, f"{INJECT}: false"
    if wanted == "true":
        return True, f"{INJECT}: true"
    if wanted:
        raise InjectionError(f'{INJECT}: expected "true" or "false", not {wanted!r}')
    if namespace_enabled:
        return True, f"namespace label {NAMESPACE_LABEL}=enabled"
    return False, "not opted in"


def _identity(meta: Mapping[str, Any]) -> str | None:
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    name = (annotations.get("forklane.io/service") or labels.get("forklane.io/fork-of")
            or labels.get("app.kubernetes.io/name") or labels.get("app"))
    return str(name).strip() or None if name else None


def _local_port(pod: Mapping[str, Any], annotations: Mapping[str, Any]) -> int | None:
    given = annotations.get("forklane.io/local-port")
    if given is not None:
        text = str(given).strip()
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise InjectionError(f"forklane.io/local-port: {text!r} is not a port (1..65535)")
        return int(text)
    for container in (pod.get("spec") or {}).get("containers") or ():
        for port in container.get("ports") or ():
            if (port.get("protocol") or "TCP") == "TCP" and port.get("containerPort"):
                return int(port["containerPort"])
    return None


def _sidecar(template: SidecarTemplate, namespace: str, service: str | None,
             local_port: int | None, sandbox: str | None) -> JSON:
    env: list[JSON] = [
        {"name": "FORKLANE_CONTROLPLANE", "value": template.controlplane},
        {"name": "FORKLANE_CONTROLPLANE_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"},
        {"name": "FORKLANE_NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "FORKLANE_NAMESPACE",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "FORKLANE_BIND", "value": "0.0.0.0"},
        # the app reaches the outbound listener on loopback (HTTP_PROXY, or nat REDIRECT):
        # on the pod's address it would be an open proxy into the mesh for any other pod
        {"name": "FORKLANE_OUTBOUND_BIND", "value": "loopback"},
        {"name": "FORKLANE_OUTBOUND_PORT", "value": str(template.outbound_port)},
        {"name": "FORKLANE_INBOUND_PORT", "value": str(template.inbound_port)},
        {"name": "FORKLANE_ADMIN_PORT", "value": str(template.admin_port)},
        {"name": "FORKLANE_STATE_DIR", "value": f"{STATE_DIR}/state"},
        {"name": "FORKLANE_DRAIN_SECONDS", "value": str(template.drain_seconds)},
    ]
    if service:
        env.append({"name": "FORKLANE_SERVICE", "value": f"{service}.{namespace}"})
    if local_port is not None:
        env.append({"name": "FORKLANE_LOCAL_APP", "value": f"127.0.0.1:{local_port}"})
    if sandbox:
        env.append({"name": "FORKLANE_SANDBOX", "value": sandbox})
    admin = {"port": template.admin_port}
    return {
        "name": SIDECAR_NAME,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "command": ["python", "-P", "-m", "forklane.proxy"],
        "args": ["run"],
        "env": env,
        "ports": [
            {"name": "fl-outbound", "containerPort": template.outbound_port, "protocol": "TCP"},
            {"name": "fl-inbound", "containerPort": template.inbound_port, "protocol": "TCP"},
            {"name": "fl-admin", "containerPort": template.admin_port, "protocol": "TCP"},
        ],
        "resources": template.resources(),
        "readinessProbe": {"httpGet": {"path": "/readyz", **admin}, "periodSeconds": 2,
                           "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/healthz", **admin}, "periodSeconds": 10,
                          "failureThreshold": 3, "initialDelaySeconds": 5},
        "lifecycle": {"preStop": {"exec": {"command": [
            "python", "-P", "-c", f"import time; time.sleep({template.prestop_seconds})"]}}},
        "securityContext": {
            "runAsUser": PROXY_UID, "runAsGroup": PROXY_UID, "runAsNonRoot": True,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": STATE_VOLUME, "mountPath": STATE_DIR},
        ],
    }


def _capture(template: SidecarTemplate, annotations: Mapping[str, Any]) -> JSON:
    def given(key: str) -> str:
        return str(annotations.get(f"forklane.io/{key}", "")).strip()

    args = ["proxy", "capture", "--proxy-uid", str(PROXY_UID),
            "--outbound-port", str(template.outbound_port),
            "--inbound-port", str(template.inbound_port),
            "--inbound-ports", _ports(given("inbound-ports") or "*", "forklane.io/inbound-ports",
                                      star=True)]
    for key, check in (("exclude-inbound-ports", _ports), ("exclude-outbound-ports", _ports),
                       ("exclude-outbound-cidrs", _cidrs)):
        value = given(key)
        if value:
            args += [f"--{key}", check(value, f"forklane.io/{key}")]
    include = given("include-outbound-cidrs")
    if include:
        args += ["--include-outbound-cidrs",
                 _cidrs(include, "forklane.io/include-outbound-cidrs", star=True)]
    return {
        "name": CAPTURE_NAME,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                      "limits": {"memory": "64Mi"}},
        "securityContext": {
            "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }


def _no_proxy(template: SidecarTemplate) -> str:
    host = template.controlplane.rpartition(":")[0] or template.controlplane
    return ",".join(["127.0.0.1", "localhost", "::1", host,
                     f".{template.controlplane_namespace}.svc"])


def pod_patch(pod: Mapping[str, Any], namespace: str, template: SidecarTemplate) -> list[Op]:
    """The JSONPatch that injects `pod` (call `decide` first). Raises InjectionError."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    mode = str(annotations.get("forklane.io/capture", template.capture)).strip()
    if mode not in ("iptables", "explicit"):
        raise InjectionError(f"forklane.io/capture: expected iptables or explicit, not {mode!r}")
    containers = list(spec.get("containers") or ())
    if not containers:
        raise InjectionError("the pod has no containers")
    ops: list[Op] = []
    if "annotations" not in meta:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    added = {INJECTED: template.version}
    if "kubectl.kubernetes.io/default-container" not in annotations:
        added["kubectl.kubernetes.io/default-container"] = str(containers[0].get("name", ""))
    for key, value in added.items():
        ops.append({"op": "add", "path": f"/metadata/annotations/{_escape(key)}", "value": value})
    if mode == "explicit":  # before the sidecar shifts the container indexes
        proxy_url = f"http://127.0.0.1:{template.outbound_port}"
        extra = [("HTTP_PROXY", proxy_url), ("http_proxy", proxy_url),
                 ("NO_PROXY", _no_proxy(template)), ("no_proxy", _no_proxy(template))]
        for i, container in enumerate(containers):
            have = {e.get("name") for e in container.get("env") or ()}
            if "env" not in container:
                ops.append({"op": "add", "path": f"/spec/containers/{i}/env", "value": []})
            for name, value in extra:
                if name not in have:
                    ops.append({"op": "add", "path": f"/spec/containers/{i}/env/-",
                                "value": {"name": name, "value": value}})
    else:
        if "initContainers" not in spec:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": []})
        # last, so earlier init containers (which run before any proxy) are not captured
        ops.append({"op": "add", "path": "/spec/initContainers/-",
                    "value": _capture(template, annotations)})
    sidecar = _sidecar(template, namespace, _identity(meta), _local_port(pod, annotations),
                       labels.get("forklane.io/sandbox"))
    ops.append({"op": "add", "path": "/spec/containers/0", "value": sidecar})
    if "volumes" not in spec:
        ops.append({"op": "add", "path": "/spec/volumes", "value": []})
    ops.append({"op": "add", "path": "/spec/volumes/-", "value": {
        "name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": template.audience, "expirationSeconds": template.token_seconds,
            "path": "token"}}]}}})
    ops.append({"op": "add", "path": "/spec/volumes/-",
                "value": {"name": STATE_VOLUME, "emptyDir": {"medium": "Memory",
                                                              "sizeLimit": "16Mi"}}})
    return ops


def apply_ops(doc: Mapping[str, Any], ops: list[Op]) -> JSON:
    """Apply the `add` operations `pod_patch` makes (RFC 6902 semantics for `add`)."""
    out: JSON = copy.deepcopy(dict(doc))
    for op in ops:
        if op["op"] != "add":
            raise ValueError(f"unsupported op {op['op']!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = out
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = parts[-1]
        value = copy.deepcopy(op["value"])
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), value)
        else:
            node[last] = value
    return out
