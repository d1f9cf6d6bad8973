"""Helpers both store backends share: JSON and time encoding, the generation rule.

Kept free of any database library so the backends stay independent of each other.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from forklane.controlplane.store.base import DEFAULT_TENANT, Record

__all__ = [
    "COMPACT_EVERY",
    "dumps",
    "loads",
    "new_uid",
    "next_generation",
    "record_doc",
    "record_from_doc",
    "to_utc",
]

# The change log is trimmed to the configured history every this many revisions.
COMPACT_EVERY = 100


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def new_uid() -> str:
    return str(uuid.uuid4())


def to_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC; everything is stored in UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def next_generation(
    generation: int,
    old_labels: Mapping[str, str],
    old_spec: Mapping[str, Any],
    labels: Mapping[str, str],
    spec: Mapping[str, Any],
) -> int:
    """Generation counts changes of what the user asked for (spec, labels), not status."""
    if dict(old_labels) == dict(labels) and dumps(old_spec) == dumps(spec):
        return generation
    return generation + 1


def record_doc(record: Record) -> dict[str, Any]:
    """A record as one JSON-able document (the change log keeps records this way)."""
    return {
        "kind": record.kind, "name": record.name, "uid": record.uid,
        "generation": record.generation, "resource_version": record.resource_version,
        "labels": dict(record.labels), "created_by": record.created_by,
        "created_at": to_utc(record.created_at).isoformat(),
        "updated_at": to_utc(record.updated_at).isoformat(),
        "spec": record.spec, "status": record.status, "tenant": record.tenant,
    }


def record_from_doc(doc: dict[str, Any]) -> Record:
    return Record(
        kind=doc["kind"], name=doc["name"], uid=doc["uid"], generation=doc["generation"],
        resource_version=doc["resource_version"], labels=doc["labels"],
        created_by=doc["created_by"], created_at=datetime.fromisoformat(doc["created_at"]),
        updated_at=datetime.fromisoformat(doc["updated_at"]), spec=doc["spec"],
        status=doc["status"], tenant=doc.get("tenant", DEFAULT_TENANT),  # older entries: none
    )
