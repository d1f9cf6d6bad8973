"""Mutating admission as the API server does it: for a create, every matching webhook of every
MutatingWebhookConfiguration is called over HTTPS (verified with its `caBundle`, server name
`SERVICE.NAMESPACE.svc`) with an `admission.k8s.io/v1` AdmissionReview, and the JSONPatch it
answers is applied before the object is stored.

Follows the admission webhook reference: `rules` (operations, apiGroups, apiVersions,
resources), `namespaceSelector` and `objectSelector` (matchLabels and matchExpressions),
`failurePolicy` (Fail: the request fails with 500 naming the webhook; Ignore: go on),
`timeoutSeconds` (default 10), a response whose `uid` differs from the request's is an error,
`allowed: false` denies with the response's status. Service references resolve through
`service_addresses` (the fake has no cluster network).
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
import jsonpatch

from tests.support.kubeapi._objects import JSON, ApiStatus, ObjectStore, ResourceType

__all__ = ["Admission", "selector_matches"]


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector; an empty or absent one matches everything."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or ())
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _rule_matches(rules: list[JSON], rt: ResourceType, operation: str) -> bool:
    for rule in rules:
        if not any(o in ("*", operation) for o in rule.get("operations", ())):
            continue
        if not any(g in ("*", rt.group) for g in rule.get("apiGroups", ())):
            continue
        if not any(v in ("*", rt.version) for v in rule.get("apiVersions", ())):
            continue
        if any(r in ("*", rt.plural) for r in rule.get("resources", ())):
            return True
    return False


class Admission:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.service_addresses: dict[tuple[str, str], tuple[str, int]] = {}
        self.calls: list[JSON] = []  # every AdmissionReview request sent, for tests

    def _namespace_labels(self, namespace: str) -> dict[str, str]:
        obj = self.store.objects.get(("", "namespaces", "", namespace))
        return dict((obj or {}).get("metadata", {}).get("labels") or {})

    async def mutate(self, rt: ResourceType, namespace: str, obj: JSON, *, dry_run: bool,
                     username: str) -> JSON:
        configs = self.store.list(self.store.kind("MutatingWebhookConfiguration"), None)
        for config in configs:
            for hook in config.get("webhooks") or ():
                if not _rule_matches(hook.get("rules") or [], rt, "CREATE"):
                    continue
                if rt.namespaced and not selector_matches(
                        hook.get("namespaceSelector"), self._namespace_labels(namespace)):
                    continue
                if not selector_matches(hook.get("objectSelector"),
                                        obj.get("metadata", {}).get("labels") or {}):
                    continue
                try:
                    obj = await self._call(hook, rt, namespace, obj, dry_run, username)
                except ApiStatus:
                    raise
                except (OSError, aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                    if hook.get("failurePolicy", "Fail") == "Ignore":
                        continue
                    raise ApiStatus(
                        500, "InternalError",
                        f'Internal error occurred: failed calling webhook "{hook["name"]}": '
                        f"{type(exc).__name__}: {exc}") from exc
        return obj

    async def _call(self, hook: JSON, rt: ResourceType, namespace: str, obj: JSON,
                    dry_run: bool, username: str) -> JSON:
        client = hook["clientConfig"]
        ca = base64.b64decode(client.get("caBundle", "") or b"")
        ctx = ssl.create_default_context(cadata=ca.decode() if ca else None)
        if "service" in client:
            ref = client["service"]
            host, port = self.service_addresses[(ref["namespace"], ref["name"])]
            url = f"https://{host}:{port}{ref.get('path', '/')}"
            server_name = f"{ref['name']}.{ref['namespace']}.svc"
        else:
            url = client["url"]
            server_name = None
        uid = str(uuid.uuid4())
        resource = {"group": rt.group, "version": rt.version, "resource": rt.plural}
        kind = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        review = {
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": uid, "kind": kind, "resource": resource, "requestKind": kind,
                "requestResource": resource, "name": obj.get("metadata", {}).get("name", ""),
                "namespace": namespace, "operation": "CREATE",
                "userInfo": {"username": username, "groups": ["system:authenticated"]},
                "object": obj, "oldObject": None, "dryRun": dry_run,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            },
        }
        self.calls.append(review["request"])
        timeout = aiohttp.ClientTimeout(total=float(hook.get("timeoutSeconds", 10)))
        connector = aiohttp.TCPConnector(ssl=ctx)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session, \
                session.post(url, json=review, server_hostname=server_name) as resp:
            if resp.status != 200:
                raise ValueError(f"the server answered HTTP {resp.status}")
            answer = json.loads(await resp.read())
        response = answer["response"]
        if response.get("uid") != uid:
            raise ValueError(f"expected response.uid={uid!r}, got {response.get('uid')!r}")
        if not response.get("allowed"):
            status = response.get("status") or {}
            raise ApiStatus(int(status.get("code", 400)), status.get("reason", "BadRequest"),
                            f'admission webhook "{hook["name"]}" denied the request: '
                            f"{status.get('message', '')}")
        if "patch" in response:
            if response.get("patchType") != "JSONPatch":
                raise ValueError(f"unsupported patchType {response.get('patchType')!r}")
            ops = json.loads(base64.b64decode(response["patch"]))
            obj = jsonpatch.apply_patch(obj, ops)
        return obj
