"""`admission.k8s.io/v1` AdmissionReview in, AdmissionReview out. Pure.

The response echoes `request.uid`, always allows (the webhook injects, it does not police),
and carries a base64 RFC 6902 patch with `patchType: JSONPatch` when it injects. A request
it cannot read raises `ReviewError` (the webhook answers 400, and the API server applies the
webhook's `failurePolicy`); a pod whose annotations are wrong is *denied* with the reason
(`allowed: false`, code 400), so `kubectl apply` shows what to fix instead of starting a
pod without its sidecar. Dry-run requests are handled the same way: the webhook has no side
effects (`sideEffects: None`).

`namespace_enabled` comes from the webhook path: the MutatingWebhookConfiguration has one
webhook for namespaces labelled `forklane.io/inject=enabled` and one for the others, so the
namespace's label is decided by the API server's namespaceSelector, not looked up here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from forklane.controlplane.kubernetes.injection import (
    InjectionError,
    SidecarTemplate,
    decide,
    pod_patch,
)

__all__ = ["ReviewError", "review"]

JSON = dict[str, Any]


class ReviewError(ValueError):
    """Not an AdmissionReview this webhook can answer."""


def _response(uid: str, **fields: Any) -> JSON:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": uid, **fields}}


def review(body: Any, template: SidecarTemplate, *, namespace_enabled: bool) -> JSON:
    if not isinstance(body, Mapping):
        raise ReviewError("the body must be an AdmissionReview object")
    if body.get("apiVersion") != "admission.k8s.io/v1" or body.get("kind") != "AdmissionReview":
        raise ReviewError("expected apiVersion admission.k8s.io/v1, kind AdmissionReview")
    request = body.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise ReviewError("request.uid is missing")
    uid: str = request["uid"]
    kind = request.get("kind") or {}
    if (kind.get("group"), kind.get("kind")) != ("", "Pod") or request.get("operation") != "CREATE":
        return _response(uid, allowed=True)  # only pod creation is ours to mutate
    pod = request.get("object")
    if not isinstance(pod, Mapping):
        raise ReviewError("request.object is missing")
    namespace = str(request.get("namespace") or (pod.get("metadata") or {}).get("namespace")
                    or "default")
    try:
        inject, why = decide(pod, namespace, namespace_enabled, template)
        if not inject:
            return _response(uid, allowed=True)
        ops = pod_patch(pod, namespace, template)
    except InjectionError as exc:
        return _response(uid, allowed=False, status={
            "status": "Failure", "code": 400, "reason": "BadRequest",
            "message": f"forklane: {exc}"})
    patch = base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()
    return _response(uid, allowed=True, patchType="JSONPatch", patch=patch,
                     auditAnnotations={"forklane.io/injected": why})
