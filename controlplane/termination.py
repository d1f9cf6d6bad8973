"""The Terminating phase of a sandbox with fork workloads in the cluster. Pure.

Deleting such a sandbox must not remove its record first: the record is what tells the fork
controller which workloads to remove, and its routes must go before its workloads. So a
DELETE (or a TTL expiry) of a sandbox whose status reports a created fork workload writes
`phase: Terminating` and `deletionTimestamp` into its status instead; the compiler withdraws
its routes at once (Terminating sandboxes are not compiled); the fork controller deletes its
workloads once no route points at them, and then the record itself. A sandbox without fork
workloads is deleted at once, as before.

`deletionTimestamp` is kept in the status document (the store has no deferred delete) and
shown as `metadata.deletionTimestamp` on the wire (`resources.to_document`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = ["DELETION_KEY", "has_workloads", "terminating", "terminating_status"]

DELETION_KEY = "deletionTimestamp"


def has_workloads(status: Mapping[str, Any] | None) -> bool:
    """The fork controller reported a workload it created for this sandbox."""
    return any(w.get("created") for w in (status or {}).get("workloads") or ())


def terminating(status: Mapping[str, Any] | None) -> bool:
    return bool((status or {}).get(DELETION_KEY))


def terminating_status(status: Mapping[str, Any] | None, now: datetime) -> dict[str, Any]:
    """The status document of a sandbox whose deletion was asked at `now` (kept if earlier)."""
    doc = dict(status or {})
    doc.setdefault(DELETION_KEY, now.isoformat().replace("+00:00", "Z"))
    doc["phase"] = "Terminating"
    return doc
