"""Fork workloads: a baseline Deployment + a sandbox's customizations → the fork Deployment,
and a fork Deployment + its Pods → what the sandbox's status says about it. Pure: the fork
controller does the I/O.

What must hold for every fork Deployment built here:
- its name is `<baseline>-fl-<hash of the sandbox name>`, at most 63 characters (a DNS label,
  so names of its ReplicaSets and Pods stay valid), the same on every replica and restart;
- its pods never match the baseline's selectors: every label key used by the baseline
  Deployment's selector or by a Service selecting the baseline gets the fork's name as its
  value, and the fork selects on `forklane.io/fork` only, so a baseline Service never sends
  baseline traffic to a fork and the baseline's ReplicaSets never adopt its pods;
- it carries the labels `forklane.io/sandbox`, `forklane.io/fork-of`,
  `forklane.io/managed-by=forklane` and the sandbox's uid, so the controller finds what it
  owns after a restart and tells a recreated sandbox of the same name from the old one;
- its pod template asks for the sidecar (`forklane.io/inject: "true"`) and names the service
  it forks (`forklane.io/service`), so the injected sidecar subscribes as that service and
  knows its sandbox; every app container gets `FORKLANE_SANDBOX` and `FORKLANE_ROUTING_KEY`;
- `forklane.io/spec-hash` changes exactly when what the fork should run changes.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from forklane.controlplane import wire

__all__ = [
    "FORK_LABEL",
    "FORK_OF_LABEL",
    "MANAGED_BY_LABEL",
    "SANDBOX_LABEL",
    "SANDBOX_UID_LABEL",
    "SPEC_HASH_ANNOTATION",
    "Owner",
    "WorkloadError",
    "fork_deployment",
    "fork_name",
    "observe",
    "owner_of",
    "selects",
]

JSON = dict[str, Any]
SANDBOX_LABEL = "forklane.io/sandbox"
SANDBOX_UID_LABEL = "forklane.io/sandbox-uid"
FORK_OF_LABEL = "forklane.io/fork-of"
FORK_LABEL = "forklane.io/fork"
MANAGED_BY_LABEL = "forklane.io/managed-by"
MANAGED_BY = "forklane"
SPEC_HASH_ANNOTATION = "forklane.io/spec-hash"
SERVICE_ANNOTATION = "forklane.io/service"
BASELINE_ANNOTATION = "forklane.io/baseline"
_MAX_NAME = 63
_HASH_LEN = 8
# waiting reasons a kubelet reports that mean the pod will not start without a change
STUCK_REASONS = frozenset({
    "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CrashLoopBackOff",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})


class WorkloadError(ValueError):
    """The fork cannot be built from this baseline; the message names the field and why."""


@dataclass(frozen=True, slots=True)
class Owner:
    """The sandbox a fork Deployment belongs to, read from its labels."""

    sandbox: str
    uid: str
    service: str


def sandbox_hash(sandbox: str) -> str:
    return hashlib.sha256(sandbox.encode()).hexdigest()[:_HASH_LEN]


def fork_name(baseline: str, sandbox: str) -> str:
    """`<baseline>-fl-<hash>`, the baseline part shortened so the whole is a DNS label."""
    suffix = f"-fl-{sandbox_hash(sandbox)}"
    head = baseline[: _MAX_NAME - len(suffix)].rstrip("-.")
    return f"{head}{suffix}"


def _label_value(text: str) -> str:
    """A label value (≤ 63, alphanumeric at both ends) naming `text`."""
    if len(text) <= _MAX_NAME:
        return text
    return f"{text[:54].rstrip('-._')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """An equality selector (a Service's `spec.selector`, `matchLabels`) matches `labels`;
    an empty selector selects nothing (as a Service's does)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _selector_keys(deployment: Mapping[str, Any],
                   service_selectors: Iterable[Mapping[str, str]]) -> set[str]:
    selector = (deployment.get("spec") or {}).get("selector") or {}
    keys = set((selector.get("matchLabels") or {}).keys())
    keys.update(e.get("key", "") for e in selector.get("matchExpressions") or ())
    for sel in service_selectors:
        keys.update(sel.keys())
    keys.discard("")
    return keys


def _spec_hash(value: Any) -> str:
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _env_entry(var: wire.EnvVar) -> JSON:
    if var.value_from is not None:
        ref = var.value_from.config_map_key_ref or var.value_from.secret_key_ref
        assert ref is not None
        field = "configMapKeyRef" if var.value_from.config_map_key_ref else "secretKeyRef"
        key_ref: JSON = {"name": ref.name, "key": ref.key}
        if ref.optional is not None:
            key_ref["optional"] = ref.optional
        return {"name": var.name, "valueFrom": {field: key_ref}}
    return {"name": var.name, "value": var.value or ""}


def _set_env(container: JSON, entries: Sequence[JSON]) -> None:
    """Set each variable by name: replaced where the container has it, appended otherwise."""
    env: list[JSON] = list(container.get("env") or [])
    index = {e.get("name"): i for i, e in enumerate(env)}
    for entry in entries:
        at = index.get(entry["name"])
        if at is None:
            index[entry["name"]] = len(env)
            env.append(entry)
        else:
            env[at] = entry
    container["env"] = env


def _customize(container: JSON, custom: wire.ContainerCustomization) -> None:
    if custom.image is not None:
        container["image"] = custom.image
    if custom.args is not None:
        container["args"] = list(custom.args)
    if custom.resources is not None:
        resources = container.setdefault("resources", {})
        for part in ("requests", "limits"):
            given = getattr(custom.resources, part)
            if given:
                resources[part] = {**(resources.get(part) or {}), **given}
    if custom.env:
        _set_env(container, [_env_entry(v) for v in custom.env])


def fork_deployment(
    baseline: Mapping[str, Any],
    fork: wire.ForkSpec,
    *,
    sandbox: str,
    sandbox_uid: str,
    routing_key: str,
    generation: int,
    service_selectors: Iterable[Mapping[str, str]] = (),
) -> JSON:
    """The fork Deployment of `baseline` for `fork` of `sandbox`. Raises `WorkloadError`
    when a customization names a container the baseline's pod template does not have."""
    assert fork.fork_of is not None
    custom = fork.customizations or wire.Customizations()
    spec = baseline.get("spec") or {}
    template: JSON = copy.deepcopy(spec.get("template") or {})
    pod_spec: JSON = template.setdefault("spec", {})
    containers: list[JSON] = pod_spec.get("containers") or []
    names = [c.get("name") for c in containers]
    for i, c in enumerate(custom.containers):
        if c.name not in names:
            raise WorkloadError(
                f"customizations.containers[{i}].name: no container {c.name!r} in Deployment "
                f"{fork.fork_of.namespace}/{fork.fork_of.name} (it has: "
                f"{', '.join(str(n) for n in names) or 'none'})")
    by_name = {c.name: c for c in custom.containers}
    for container in containers:
        wanted = by_name.get(container.get("name", ""))
        if wanted is not None:
            _customize(container, wanted)
        _set_env(container, [{"name": "FORKLANE_SANDBOX", "value": sandbox},
                             {"name": "FORKLANE_ROUTING_KEY", "value": routing_key}])
    service = fork.service.split(".", 1)[0]
    name = fork_name(fork.fork_of.name, sandbox)
    owner_labels = {
        SANDBOX_LABEL: _label_value(sandbox),
        SANDBOX_UID_LABEL: _label_value(sandbox_uid),
        FORK_OF_LABEL: _label_value(service),
        MANAGED_BY_LABEL: MANAGED_BY,
    }
    meta = template.setdefault("metadata", {})
    pod_labels: dict[str, str] = dict(meta.get("labels") or {})
    for key in _selector_keys(baseline, service_selectors):
        if key in pod_labels:
            pod_labels[key] = name
    pod_labels.update(owner_labels)
    pod_labels[FORK_LABEL] = name
    meta["labels"] = pod_labels
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        "forklane.io/inject": "true",
        SERVICE_ANNOTATION: service,
    }
    meta.pop("name", None)
    meta.pop("namespace", None)
    body_spec: JSON = {
        "replicas": custom.replicas,
        "selector": {"matchLabels": {FORK_LABEL: name}},
        "template": template,
    }
    for keep in ("minReadySeconds", "progressDeadlineSeconds", "strategy"):
        if keep in spec:
            body_spec[keep] = copy.deepcopy(spec[keep])
    base_meta = baseline.get("metadata") or {}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": fork.fork_of.namespace,
            "labels": {**owner_labels, FORK_LABEL: name},
            "annotations": {
                SPEC_HASH_ANNOTATION: _spec_hash(body_spec),
                BASELINE_ANNOTATION: f"{fork.fork_of.namespace}/{fork.fork_of.name}",
                SERVICE_ANNOTATION: fork.service,
                "forklane.io/sandbox-generation": str(generation),
                "forklane.io/baseline-uid": str(base_meta.get("uid", "")),
            },
        },
        "spec": body_spec,
    }


def owner_of(deployment: Mapping[str, Any]) -> Owner | None:
    """The sandbox a Deployment was made for, or None when forklane did not make it."""
    meta = deployment.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or SANDBOX_LABEL not in labels:
        return None
    service = (meta.get("annotations") or {}).get(SERVICE_ANNOTATION, "")
    return Owner(labels[SANDBOX_LABEL], labels.get(SANDBOX_UID_LABEL, ""), service)


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if cond.get("type") == type_:
            return cond  # type: ignore[no-any-return]
    return None


def _pod_summary(pod: Mapping[str, Any]) -> wire.PodSummary:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ready_cond = _condition(pod, "Ready")
    ready = ready_cond is not None and ready_cond.get("status") == "True"
    reason, message, restarts = "", "", 0
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses")
                                                             or []):
        restarts += int(cs.get("restartCount") or 0)
        state = cs.get("state") or {}
        for kind in ("waiting", "terminated"):
            detail = state.get(kind)
            if detail and detail.get("reason") and not reason and (
                    kind == "waiting" or detail.get("exitCode")):
                reason = str(detail["reason"])
                message = f"container {cs.get('name')}: {detail.get('message') or reason}"
    if not reason and not ready:
        reason = str(status.get("reason") or ("" if status.get("phase") != "Pending"
                                              else "ContainerCreating"))
    return wire.PodSummary(
        name=str(meta.get("name", "")), phase=str(status.get("phase", "")), ready=ready,
        ip=status.get("podIP"), reason="" if ready else reason, message=message,
        restarts=restarts,
    )


def observe(
    deployment: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
    *,
    fork: wire.ForkSpec,
    sandbox: str,
    generation: int,
    port: int | None,
) -> wire.WorkloadStatus:
    """What a sandbox's status says about its fork workload: created, available, the ready
    pods' endpoints (`podIP:port`), and the reason a pod is stuck when one is."""
    assert fork.fork_of is not None
    ref = fork.fork_of
    name = fork_name(ref.name, sandbox)
    base = {"service": fork.service, "namespace": ref.namespace, "name": name,
            "forkOf": f"{ref.namespace}/{ref.name}", "generation": generation}
    if deployment is None:
        return wire.WorkloadStatus.model_validate(
            {**base, "reason": "NotCreated", "message": "the fork Deployment does not exist"})
    status = deployment.get("status") or {}
    available_cond = _condition(deployment, "Available")
    wanted = int((deployment.get("spec") or {}).get("replicas", 1))
    ready_replicas = int(status.get("readyReplicas") or 0)
    available = (available_cond is not None and available_cond.get("status") == "True"
                 and ready_replicas >= wanted)
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    summaries = sorted((_pod_summary(p) for p in live), key=lambda s: s.name)
    endpoints = sorted(f"{s.ip}:{port}" for s in summaries if s.ready and s.ip and port)
    reason, message = "", ""
    stuck = next((s for s in summaries if s.reason in STUCK_REASONS), None)
    waiting = next((s for s in summaries if not s.ready), None)
    if stuck is not None:
        reason, message = stuck.reason, f"pod {stuck.name}: {stuck.message or stuck.reason}"
    elif not available and waiting is not None:
        reason = waiting.reason or "PodNotReady"
        message = f"pod {waiting.name}: {waiting.message or reason}"
    elif not available:
        progressing = _condition(deployment, "Progressing")
        reason = str((progressing or {}).get("reason") or "WaitingForPods")
        message = str((progressing or {}).get("message") or "no pod is ready yet")
    if available and port is None:
        reason, message = "NoPort", "the baseline Service has no port to route to"
    return wire.WorkloadStatus.model_validate({
        **base, "created": True, "available": available, "replicas": wanted,
        "readyReplicas": ready_replicas, "endpoints": endpoints,
        "pods": [s.model_dump(by_alias=True) for s in summaries],
        "reason": reason, "message": message,
    })
