"""`forklane inject -f`: the webhook's injection, offline, over manifests. Pure.

Reads multi-document YAML; injects the pod template of every Pod, Deployment, StatefulSet,
DaemonSet, ReplicaSet, ReplicationController, Job and CronJob (and the items of a `List`);
passes every other document through unchanged. Like `istioctl kube-inject`, it injects
whatever it is given unless the pod template says `forklane.io/inject: "false"` (the
namespace label is the cluster's business); system namespaces, the control plane's own and
hostNetwork pods are still skipped. Injected output injected again is unchanged, so it
re-applies cleanly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from forklane.controlplane.kubernetes.injection import (
    InjectionError,
    SidecarTemplate,
    apply_ops,
    decide,
    pod_patch,
)

__all__ = ["ManifestError", "inject_manifests"]

JSON = dict[str, Any]

_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Pod": (),
}


class ManifestError(ValueError):
    """A document that cannot be read or injected; the message says which and why."""


def _inject(obj: JSON, namespace: str, template: SidecarTemplate, where: str) -> JSON:
    kind = obj.get("kind")
    if kind == "List":
        return {**obj, "items": [_inject(item, namespace, template, f"{where} item {i + 1}")
                                 for i, item in enumerate(obj.get("items") or ())]}
    path = _TEMPLATE_PATHS.get(str(kind))
    if path is None:
        return obj
    ns = (obj.get("metadata") or {}).get("namespace") or namespace
    node: Any = obj
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        raise ManifestError(f"{where}: {kind} has no {'.'.join(path)}")
    try:
        inject, _ = decide(node, ns, True, template)
        if not inject:
            return obj
        injected = apply_ops(node, pod_patch(node, ns, template))
    except InjectionError as exc:
        raise ManifestError(f"{where} ({kind} {(obj.get('metadata') or {}).get('name')}): "
                            f"{exc}") from exc
    if not path:
        return injected
    out: JSON = obj
    parent: Any = out
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = injected
    return out


def inject_manifests(text: str, template: SidecarTemplate, namespace: str = "default",
                     source: str = "-") -> str:
    """Every document of `text`, injected where it holds a pod template, as YAML."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}") from exc
    out: list[JSON] = []
    for i, doc in enumerate(documents):
        if not isinstance(doc, dict):
            raise ManifestError(f"{source}: document {i + 1} is not a Kubernetes object")
        out.append(_inject(doc, namespace, template, f"{source}: document {i + 1}"))
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in out)


def iter_kinds(text: str) -> Iterator[str]:
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict):
            yield str(doc.get("kind"))
