"""Which proxies are connected to this replica and which snapshot version each one runs.

Plain bookkeeping on the event loop (no I/O): the push server reports what happens on each
stream, the REST API lists it (`GET /api/v1/proxies`) and the reconciler asks whether every
connected proxy has ACKed a version.

Invariants:
- one entry per open stream (a node id may appear twice while an old stream is dying);
- `acked` only grows with what the proxy reports (the version it says it runs);
- `all_acked(v)` is True when there is no connected proxy: nobody is behind;
- listeners run synchronously after every change of who is connected or what they run
  (not on a mere send) and must not block.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from forklane.controlplane import wire

__all__ = ["ProxyRegistry", "StreamId"]

StreamId = int
Listener = Callable[[], None]


@dataclass(slots=True)
class _Entry:
    node_id: str
    service: str | None
    listeners: tuple[str, ...]
    connected_at: datetime
    proxy_version: str | None = None
    sent: str | None = None
    acked: str | None = None
    nacked: str | None = None
    last_error: str | None = None


def _version_number(version: str | None) -> int | None:
    if version is None or not version.isdigit():
        return None
    return int(version)


class ProxyRegistry:
    def __init__(
        self, replica: str, history: int = 500,
        sink: Callable[[wire.Event], None] | None = None,
    ) -> None:
        self.replica = replica
        self._sink = sink  # where the push history is kept for good (the store's events)
        self._entries: dict[StreamId, _Entry] = {}
        self._ids = itertools.count(1)
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()
        # the push history `describe` shows: the last pushes, ACKs, NACKs, (dis)connections
        self._events: deque[wire.Event] = deque(maxlen=history)

    # -- reads ------------------------------------------------------------------------------
    def list(self) -> list[wire.ProxyInfo]:
        """Connected proxies, oldest connection first."""
        return [
            wire.ProxyInfo.model_validate(
                {
                    "node_id": e.node_id,
                    "service": e.service,
                    "listeners": list(e.listeners),
                    "connected_at": e.connected_at,
                    "sent_version": e.sent,
                    "acked_version": e.acked,
                    "nacked_version": e.nacked,
                    "last_error": e.last_error,
                    "replica": self.replica,
                    "version": e.proxy_version,
                }
            )
            for e in self._entries.values()
        ]

    def events(self) -> builtins.list[wire.Event]:
        """The push history of this replica, oldest first (bounded, kept in memory)."""
        return list(self._events)

    def _record(self, reason: str, node: str, message: str, warning: bool = False) -> None:
        event = wire.Event(time=datetime.now(UTC), type="Warning" if warning else "Normal",
                           reason=reason, message=message, source=node)  # fmt: skip
        self._events.append(event)
        if self._sink is not None:
            self._sink(event)

    def __len__(self) -> int:
        return len(self._entries)

    def all_acked(self, version: int) -> bool:
        """Every connected proxy runs `version` or newer (True when none is connected)."""
        for e in self._entries.values():
            acked = _version_number(e.acked)
            if acked is None or acked < version:
                return False
        return True

    async def wait_all_acked(self, version: int) -> None:
        """Return once `all_acked(version)` holds; the caller bounds it with a timeout."""
        while not self.all_acked(version):
            event = self._changed
            await event.wait()

    def add_listener(self, listener: Listener) -> None:
        """Call `listener()` after a connection, an ACK or NACK, or a disconnection."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    # -- writes (the push server) -----------------------------------------------------------
    def connect(
        self,
        node_id: str,
        service: str | None,
        listeners: tuple[str, ...],
        version: str | None,
        *,
        proxy_version: str | None = None,
    ) -> StreamId:
        """A stream opened by a proxy that says it runs snapshot `version` (None: nothing
        yet) and forklane `proxy_version`."""
        stream = next(self._ids)
        self._entries[stream] = _Entry(
            node_id=node_id,
            service=service,
            listeners=listeners,
            connected_at=datetime.now(UTC),
            proxy_version=proxy_version,
            acked=version,
        )
        self._record("ProxyConnected", node_id, f"runs snapshot {version or '-'}")
        self._notify()
        return stream

    def sent(self, stream: StreamId, version: str) -> None:
        """Bookkeeping only: a push in flight changes nobody's acked version, so listeners
        (the reconciler re-runs a whole pass on each) are not called."""
        entry = self._entries.get(stream)
        if entry is not None:
            entry.sent = version
            self._record("SnapshotPushed", entry.node_id, f"snapshot {version} sent")

    def acked(self, stream: StreamId, version: str) -> None:
        entry = self._entries.get(stream)
        if entry is not None:
            entry.acked = version
            if entry.nacked is not None and _newer(version, entry.nacked):
                entry.nacked = None
                entry.last_error = None
            self._record("SnapshotAcked", entry.node_id, f"snapshot {version} applied")
            self._notify()

    def nacked(self, stream: StreamId, version: str, error: str) -> None:
        entry = self._entries.get(stream)
        if entry is not None:
            entry.nacked = version
            entry.last_error = error
            self._record("SnapshotNacked", entry.node_id, f"snapshot {version}: {error}", True)
            self._notify()

    def disconnect(self, stream: StreamId) -> None:
        entry = self._entries.pop(stream, None)
        if entry is not None:
            self._record("ProxyDisconnected", entry.node_id, "stream ended")
            self._notify()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        for listener in tuple(self._listeners):
            listener()


def _newer(version: str, than: str) -> bool:
    a, b = _version_number(version), _version_number(than)
    return a is not None and b is not None and a > b
