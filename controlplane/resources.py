"""The four resource kinds and the conversion between store records and wire models.

A `Record` holds JSON documents; the wire model (`wire.Sandbox` …) is what the API returns
and what the compiler reads. Conversion happens here only, so no other module knows how
metadata is laid out in the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from forklane.controlplane import wire
from forklane.controlplane.store.base import Record
from forklane.controlplane.termination import DELETION_KEY

__all__ = ["KINDS", "TENANTED", "Resource", "ResourceKind", "parse_selector", "to_wire"]

Resource = wire.Sandbox | wire.RouteGroup | wire.Split | wire.ServiceResource


@dataclass(frozen=True, slots=True)
class ResourceKind:
    plural: str
    kind: str
    model: type[BaseModel]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]


KINDS: Mapping[str, ResourceKind] = {
    k.plural: k
    for k in (
        ResourceKind("sandboxes", "Sandbox", wire.Sandbox, wire.SandboxSpec, wire.SandboxStatus),
        ResourceKind(
            "routegroups", "RouteGroup", wire.RouteGroup, wire.RouteGroupSpec, wire.RouteGroupStatus
        ),
        ResourceKind("splits", "Split", wire.Split, wire.SplitSpec, wire.SplitStatus),
        ResourceKind(
            "services", "Service", wire.ServiceResource, wire.ServiceSpec, wire.ServiceStatus
        ),
    )
}


# The kinds that belong to a tenant; services and splits are shared by every tenant.
TENANTED = frozenset({"sandboxes", "routegroups"})


def to_document(record: Record) -> dict[str, Any]:
    """The JSON document of a record, in the wire's (camelCase) shape."""
    meta: dict[str, Any] = {
        "name": record.name,
        "labels": dict(record.labels),
        "uid": record.uid,
        "generation": record.generation,
        "resourceVersion": str(record.resource_version),
        "createdBy": record.created_by,
        "creationTimestamp": record.created_at,
        "updateTimestamp": record.updated_at,
    }
    if record.kind in TENANTED:
        meta["tenant"] = record.tenant
    doc: dict[str, Any] = {
        "apiVersion": wire.API_VERSION,
        "kind": KINDS[record.kind].kind,
        "metadata": meta,
        "spec": record.spec,
    }
    if record.status is not None:
        status = dict(record.status)
        deletion = status.pop(DELETION_KEY, None)  # the Terminating phase keeps it there
        if deletion is not None:
            meta["deletionTimestamp"] = deletion
        doc["status"] = status
    return doc


def to_wire(record: Record) -> Resource:
    """Records were validated on the way in; this only rebuilds the model."""
    model: Any = KINDS[record.kind].model
    result: Resource = model.model_validate(to_document(record))
    return result


def parse_selector(text: str) -> dict[str, str]:
    """`a=b,c=d` (Kubernetes equality selector; `==` accepted) → {a: b, c: d}."""
    selector: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.replace("==", "=").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or "=" in value or "!" in key:
            raise ValueError(f"labelSelector term {part!r}: expected key=value")
        selector[key] = value
    return selector
