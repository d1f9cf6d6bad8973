"""The fake API server's object store: resource types, resourceVersion, events, selectors.

Pure bookkeeping (no I/O), written from the Kubernetes API reference and the API concepts page:
- one cluster-wide resourceVersion counter (as etcd's revision); every create, update and
  delete bumps it and records one watch event (`ADDED`, `MODIFIED`, `DELETED`) with it;
- `compact(keep)` forgets old events, as the API server's watch cache does: a watch from a
  resourceVersion older than what is kept is answered `410 Gone` (reason `Expired`);
- `metadata.generation` starts at 1 and grows when anything but `metadata` and `status`
  changes; `uid`, `creationTimestamp` and `resourceVersion` are the server's;
- an object with `metadata.finalizers` is not removed by DELETE: it gets a
  `deletionTimestamp` (MODIFIED) and goes once an update empties its finalizers;
- `on_delete` hooks run after a removal (the place for ownerReference garbage collection),
  `on_create` hooks before a create is stored (admission), so later work extends the fake
  without editing it.

Errors are `ApiStatus` exceptions that carry the `Status` body the real server sends.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]

__all__ = [
    "BUILTIN_TYPES",
    "ApiStatus",
    "Event",
    "ObjectStore",
    "ResourceType",
    "match_fields",
    "match_labels",
    "parse_label_selector",
]


@dataclass(frozen=True, slots=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update", "watch")
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


_CRUD = ("create", "delete", "get", "list", "patch", "update", "watch")
BUILTIN_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", False, short_names=("ns",),
                 subresources=("status",)),
    ResourceType("", "v1", "Service", "services", True, short_names=("svc",),
                 subresources=("status",)),
    ResourceType("", "v1", "Pod", "pods", True, short_names=("po",), subresources=("status",)),
    ResourceType("", "v1", "Secret", "secrets", True),
    ResourceType("", "v1", "ConfigMap", "configmaps", True, short_names=("cm",)),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, short_names=("sa",)),
    ResourceType("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", True),
    ResourceType("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration",
                 "mutatingwebhookconfigurations", False),
    ResourceType("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", False,
                 verbs=("create",)),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True),
)


class ApiStatus(Exception):
    """An error answer: HTTP `code` and the `Status` object the API reference describes."""

    def __init__(self, code: int, reason: str, message: str,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = dict(details or {})

    def body(self) -> JSON:
        body: JSON = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(rt: ResourceType, name: str) -> ApiStatus:
    group = f".{rt.group}" if rt.group else ""
    return ApiStatus(404, "NotFound", f'{rt.plural}{group} "{name}" not found',
                     {"name": name, "group": rt.group, "kind": rt.plural})


@dataclass(frozen=True, slots=True)
class Event:
    revision: int
    type: str  # ADDED | MODIFIED | DELETED
    rt: ResourceType
    namespace: str
    object: JSON


# -- selectors ----------------------------------------------------------------------------

Requirement = tuple[str, str, frozenset[str]]  # (key, op, values); op in = != in notin exists !


def parse_label_selector(text: str) -> list[Requirement]:
    """The label selector grammar of the API concepts page: `a=b`, `a==b`, `a!=b`,
    `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma-separated (commas inside parentheses too)."""
    terms: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    out: list[Requirement] = []
    for raw in terms:
        term = raw.strip()
        if not term:
            continue
        for word in (" notin ", " in "):
            if word in term:
                key, _, rest = term.partition(word)
                rest = rest.strip()
                if not (rest.startswith("(") and rest.endswith(")")):
                    raise ApiStatus(400, "BadRequest", f"unable to parse requirement: {term!r}")
                values = frozenset(v.strip() for v in rest[1:-1].split(",") if v.strip())
                out.append((key.strip(), word.strip(), values))
                break
        else:
            if "!=" in term:
                key, _, value = term.partition("!=")
                out.append((key.strip(), "!=", frozenset({value.strip()})))
            elif "=" in term:
                key, _, value = term.replace("==", "=").partition("=")
                out.append((key.strip(), "=", frozenset({value.strip()})))
            elif term.startswith("!"):
                out.append((term[1:].strip(), "!", frozenset()))
            else:
                out.append((term, "exists", frozenset()))
    return out


def match_labels(labels: Mapping[str, str], selector: Iterable[Requirement]) -> bool:
    for key, op, values in selector:
        has = key in labels
        value = labels.get(key)
        if op == "=" and value not in values:
            return False
        if op == "!=" and value in values:
            return False
        if op == "in" and value not in values:
            return False
        if op == "notin" and value in values:
            return False
        if op == "exists" and not has:
            return False
        if op == "!" and has:
            return False
    return True


def match_fields(obj: JSON, text: str) -> bool:
    """Field selectors every type supports: metadata.name and metadata.namespace (= or !=)."""
    meta = obj.get("metadata", {})
    for term in filter(None, (t.strip() for t in text.split(","))):
        negate = "!=" in term
        key, _, value = term.replace("!=", "=").replace("==", "=").partition("=")
        field_name = key.strip()
        if field_name not in ("metadata.name", "metadata.namespace"):
            raise ApiStatus(400, "BadRequest",
                            f'"{field_name}" is not a known field selector: only '
                            '"metadata.name", "metadata.namespace"')
        actual = meta.get(field_name.split(".")[1], "")
        if (actual == value.strip()) == negate:
            return False
    return True


def _without_version(obj: JSON) -> JSON:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
    return {**obj, "metadata": meta}


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


CreateHook = Callable[[ResourceType, JSON], JSON]
DeleteHook = Callable[[ResourceType, JSON], None]


@dataclass
class ObjectStore:
    types: dict[tuple[str, str], ResourceType] = field(default_factory=dict)  # (group, plural)
    revision: int = 1
    objects: dict[tuple[str, str, str, str], JSON] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    compacted: int = 0  # events with revision <= this are forgotten
    listeners: list[Callable[[Event], None]] = field(default_factory=list)
    on_create: list[CreateHook] = field(default_factory=list)
    on_delete: list[DeleteHook] = field(default_factory=list)

    def register(self, rt: ResourceType) -> None:
        self.types[(rt.group, rt.plural)] = rt

    def type_of(self, group: str, plural: str) -> ResourceType:
        rt = self.types.get((group, plural))
        if rt is None:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        return rt

    def kind(self, kind: str) -> ResourceType:
        return next(rt for rt in self.types.values() if rt.kind == kind)

    # -- reads ------------------------------------------------------------------------------
    def get(self, rt: ResourceType, namespace: str, name: str) -> JSON:
        obj = self.objects.get((rt.group, rt.plural, namespace, name))
        if obj is None:
            raise not_found(rt, name)
        return copy.deepcopy(obj)

    def list(self, rt: ResourceType, namespace: str | None, label_selector: str = "",
             field_selector: str = "") -> list[JSON]:
        selector = parse_label_selector(label_selector)
        out = []
        for (group, plural, ns, _), obj in sorted(self.objects.items()):
            if (group, plural) != (rt.group, rt.plural):
                continue
            if namespace is not None and ns != namespace:
                continue
            if not match_labels(obj["metadata"].get("labels") or {}, selector):
                continue
            if field_selector and not match_fields(obj, field_selector):
                continue
            out.append(copy.deepcopy(obj))
        return out

    def events_since(self, revision: int) -> list[Event]:
        if revision < self.compacted:
            raise ApiStatus(410, "Expired",
                            f"too old resource version: {revision} ({self.compacted + 1})")
        return [e for e in self.events if e.revision > revision]

    def compact(self, keep: int = 0) -> None:
        """Forget every event but the last `keep` (the API server's compaction)."""
        kept = self.events[len(self.events) - keep:] if keep else []
        self.compacted = (kept[0].revision - 1) if kept else self.revision
        self.events = kept

    # -- writes -----------------------------------------------------------------------------
    def _record(self, type_: str, rt: ResourceType, namespace: str, obj: JSON) -> None:
        event = Event(self.revision, type_, rt, namespace, copy.deepcopy(obj))
        self.events.append(event)
        for listener in tuple(self.listeners):
            listener(event)

    def _check_namespace(self, rt: ResourceType, namespace: str) -> None:
        if not rt.namespaced or rt.kind == "Namespace":
            return
        if ("", "namespaces", "", namespace) not in self.objects:
            raise ApiStatus(404, "NotFound", f'namespaces "{namespace}" not found',
                            {"name": namespace, "kind": "namespaces"})

    def create(self, rt: ResourceType, namespace: str, obj: JSON) -> JSON:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        name = meta.get("name")
        if not name:
            raise ApiStatus(422, "Invalid", f"{rt.kind} is invalid: metadata.name: Required value",
                            {"kind": rt.kind,
                             "causes": [{"reason": "FieldValueRequired",
                                         "message": "Required value", "field": "metadata.name"}]})
        if rt.namespaced and meta.get("namespace", namespace) != namespace:
            raise ApiStatus(400, "BadRequest",
                            "the namespace of the provided object does not match the namespace "
                            "sent on the request")
        self._check_namespace(rt, namespace)
        key = (rt.group, rt.plural, namespace if rt.namespaced else "", name)
        if key in self.objects:
            group = f".{rt.group}" if rt.group else ""
            raise ApiStatus(409, "AlreadyExists", f'{rt.plural}{group} "{name}" already exists',
                            {"name": name, "group": rt.group, "kind": rt.plural})
        for hook in self.on_create:
            obj = hook(rt, obj)
            meta = obj["metadata"]
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        self.revision += 1
        if rt.namespaced:
            meta["namespace"] = namespace
        meta.pop("resourceVersion", None)
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(self.revision),
                    creationTimestamp=now_text(), generation=1)
        if rt.kind == "Namespace":
            obj.setdefault("status", {"phase": "Active"})
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        self.objects[key] = obj
        self._record("ADDED", rt, key[2], obj)
        return copy.deepcopy(obj)

    def update(self, rt: ResourceType, namespace: str, name: str, obj: JSON,
               subresource: str = "") -> JSON:
        key = (rt.group, rt.plural, namespace if rt.namespaced else "", name)
        current = self.objects.get(key)
        if current is None:
            raise not_found(rt, name)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise ApiStatus(400, "BadRequest", "the name of the object does not match the URL")
        wanted = meta.get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            group = f".{rt.group}" if rt.group else ""
            raise ApiStatus(
                409, "Conflict",
                f'Operation cannot be fulfilled on {rt.plural}{group} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                {"name": name, "group": rt.group, "kind": rt.plural})
        if subresource == "status":  # only status changes through /status
            new = copy.deepcopy(current)
            new["status"] = obj.get("status", {})
        else:
            new = obj
            if "status" in current:  # the main resource never changes status
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        old_meta = current["metadata"]
        new_meta = new.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "namespace", "deletionTimestamp"):
            if fixed in old_meta:
                new_meta[fixed] = old_meta[fixed]
        new_meta["name"] = name
        body = {k: v for k, v in new.items() if k not in ("metadata", "status")}
        old_body = {k: v for k, v in current.items() if k not in ("metadata", "status")}
        new_meta["generation"] = old_meta.get("generation", 1) + (body != old_body)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        if _without_version(new) == _without_version(current):
            return copy.deepcopy(current)  # a no-op update does not bump resourceVersion
        self.revision += 1
        new_meta["resourceVersion"] = str(self.revision)
        if "deletionTimestamp" in new_meta and not new_meta.get("finalizers"):
            del self.objects[key]
            self._record("DELETED", rt, key[2], new)
            self._deleted(rt, new)
            return copy.deepcopy(new)
        self.objects[key] = new
        self._record("MODIFIED", rt, key[2], new)
        return copy.deepcopy(new)

    def delete(self, rt: ResourceType, namespace: str, name: str,
               precondition_rv: str | None = None) -> JSON:
        key = (rt.group, rt.plural, namespace if rt.namespaced else "", name)
        current = self.objects.get(key)
        if current is None:
            raise not_found(rt, name)
        if precondition_rv and precondition_rv != current["metadata"]["resourceVersion"]:
            raise ApiStatus(409, "Conflict",
                            f"Precondition failed: ResourceVersion in precondition: "
                            f"{precondition_rv}, ResourceVersion in object meta: "
                            f"{current['metadata']['resourceVersion']}")
        self.revision += 1
        if current["metadata"].get("finalizers"):
            current["metadata"].setdefault("deletionTimestamp", now_text())
            current["metadata"]["resourceVersion"] = str(self.revision)
            self._record("MODIFIED", rt, key[2], current)
            return copy.deepcopy(current)
        del self.objects[key]
        current["metadata"]["resourceVersion"] = str(self.revision)
        self._record("DELETED", rt, key[2], current)
        self._deleted(rt, current)
        return copy.deepcopy(current)

    def _deleted(self, rt: ResourceType, obj: JSON) -> None:
        for hook in tuple(self.on_delete):
            hook(rt, obj)
