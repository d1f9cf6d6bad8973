"""The live routing table and the only way to replace it.

Readers take `holder.table` once per request and keep that reference, so a request in flight
finishes on the table it started with; `apply()` builds a complete new table first and then
swaps one reference (atomic under the GIL), so a bad snapshot never replaces a good one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from forklane.proxy import schema
from forklane.proxy.table import ConfigError, LocalIdentity, RoutingTable, build_table

__all__ = ["TableHolder"]

Listener = Callable[[RoutingTable], None]


class TableHolder:
    def __init__(
        self, local: LocalIdentity | None = None, namespace: str = "", *, edge: bool = False
    ) -> None:
        self.local = local
        self.namespace = namespace  # the proxy's Kubernetes namespace ('' outside a cluster)
        self.edge = edge  # an ingress sidecar: unverifiable routing keys are stripped
        self.table: RoutingTable | None = None
        self.source: str = ""  # "file:PATH" or "controlplane:ADDR"
        self.loaded_at: float = 0.0
        self.reload_failures: int = 0
        self.last_error: str = ""
        self._listeners: list[Listener] = []

    def on_swap(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def apply(self, snapshot: schema.RoutingSnapshot, source: str = "") -> RoutingTable:
        """Build and install a table; on failure raise ConfigError and keep the old table."""
        try:
            table = build_table(snapshot, self.local, self.namespace, edge=self.edge)
        except ConfigError as exc:
            self._fail(str(exc))
            raise
        except (ValueError, KeyError) as exc:
            self._fail(f"snapshot {snapshot.version}: {exc}")
            raise ConfigError(self.last_error) from exc
        self.table = table
        self.source = source or self.source
        self.loaded_at = time.time()
        self.last_error = ""
        for listener in self._listeners:
            listener(table)
        return table

    def reject(self, reason: str) -> None:
        """Record a snapshot that failed validation before it reached `apply`."""
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.reload_failures += 1
        self.last_error = reason
