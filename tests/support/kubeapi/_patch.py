"""PATCH bodies the fake accepts: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and a
strategic merge patch close enough for what kubectl sends to built-in types.

The strategic merge here merges lists of objects by their merge key (`name` for containers,
env, volumes, webhooks …; `port` for Service ports, `containerPort` for container ports)
and drops `$`-directives (`$setElementOrder`, `$retainKeys`) instead of interpreting them;
`$patch: delete` inside a list element removes that element. That is what the tests need;
the real server's behaviour is the Kubernetes documentation on strategic merge patch.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from tests.support.kubeapi._objects import ApiStatus

__all__ = ["apply_patch"]

_MERGE_KEYS = {"ports": ("containerPort", "port"), "volumeMounts": ("mountPath",)}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _merge_key(field: str, items: list[Any]) -> str | None:
    for key in _MERGE_KEYS.get(field, ("name",)):
        if items and all(isinstance(i, dict) and key in i for i in items):
            return key
    return None


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    if isinstance(patch, list):
        key = _merge_key(field, patch)
        if key is None or not isinstance(target, list):
            return [strategic_merge(None, p) for p in patch]
        out = copy.deepcopy(target)
        for item in patch:
            index = next((i for i, t in enumerate(out)
                          if isinstance(t, dict) and t.get(key) == item.get(key)), None)
            if item.get("$patch") == "delete":
                if index is not None:
                    del out[index]
            elif index is None:
                out.append(strategic_merge(None, item))
            else:
                out[index] = strategic_merge(out[index], item)
        return out
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            out.pop(key, None)
        else:
            out[key] = strategic_merge(out.get(key), value, key)
    return out


def apply_patch(obj: dict[str, Any], content_type: str, body: Any) -> dict[str, Any]:
    kind = content_type.split(";")[0].strip()
    if kind == "application/json-patch+json":
        if not isinstance(body, list):
            raise ApiStatus(400, "BadRequest", "a JSON patch must be a list of operations")
        try:
            result: dict[str, Any] = jsonpatch.apply_patch(obj, body)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ApiStatus(422, "Invalid", f"the JSON patch cannot be applied: {exc}") from exc
        return result
    if not isinstance(body, dict):
        raise ApiStatus(400, "BadRequest", "a merge patch must be a JSON object")
    if kind == "application/merge-patch+json":
        merged: dict[str, Any] = merge_patch(obj, body)
        return merged
    if kind == "application/strategic-merge-patch+json":
        strategic: dict[str, Any] = strategic_merge(obj, body)
        return strategic
    raise ApiStatus(415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: application/json-patch+json, application/merge-patch+json, "
                    f"application/strategic-merge-patch+json (got {kind})")
