"""Events: what `forklane describe` shows besides spec and status, kept in the store.

Two sources write them: the reconciler, for every condition that changes (status, reason or message)
(`condition_events`, pure), and the push server, for each proxy's connections, pushes, ACKs
and NACKs (kept under kind `proxies` and the proxy's node id, so every replica's proxies show).
Both hand entries to an `EventRecorder`, which never makes its callers wait on the database:
it buffers (bounded) and one owned task writes batches. Events are diagnostics: a failed
write is logged once and dropped, and nothing reads them to decide anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from forklane.controlplane import wire
from forklane.controlplane.store.base import EventEntry, Store, StoreError

__all__ = ["PROXIES", "EventRecorder", "condition_events", "proxy_event"]

log = logging.getLogger("forklane.controlplane.events")

PROXIES = "proxies"  # the kind under which a proxy's push history is kept
SOURCE = "reconciler"


def condition_events(
    kind: str, name: str, before: Mapping[str, Any] | None, after: Mapping[str, Any],
    now: datetime,
) -> list[EventEntry]:
    """One event per condition of `after` whose status, reason or message differs from
    `before` (a new condition counts as changed); Warning when it is not True."""
    old = {c.get("type"): c for c in (before or {}).get("conditions", ())}
    events = []
    for cond in after.get("conditions", ()):
        prev = old.get(cond.get("type"))
        same = prev is not None and all(prev.get(k) == cond.get(k)
                                        for k in ("status", "reason", "message"))  # fmt: skip
        if same:
            continue
        message = f"{cond.get('type')}={cond.get('status')}"
        if cond.get("message"):
            message += f": {cond['message']}"
        events.append(EventEntry(
            at=now, kind=kind, name=name,
            type="Normal" if cond.get("status") == "True" else "Warning",
            reason=cond.get("reason") or str(cond.get("type")), message=message, source=SOURCE,
        ))  # fmt: skip
    return events


def proxy_event(event: wire.Event) -> EventEntry:
    """A push-history entry of the proxy registry, kept under its proxy's node id."""
    return EventEntry(at=event.time, kind=PROXIES, name=event.source or "-", type=event.type,
                      reason=event.reason, message=event.message, source=event.source)  # fmt: skip


class EventRecorder:
    """Buffers entries and writes them in batches from one task it owns (`start`/`aclose`).

    `record` never blocks; when the buffer is full (the database is slow or down), the
    oldest entries are dropped and counted.
    """

    def __init__(self, store: Store, *, buffer: int = 10_000) -> None:
        self._store = store
        self._pending: deque[EventEntry] = deque(maxlen=buffer)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._closing = False
        self.dropped = 0

    def record(self, entries: Iterable[EventEntry]) -> None:
        for entry in entries:
            if len(self._pending) == self._pending.maxlen:
                self.dropped += 1
            self._pending.append(entry)
        if self._pending:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="events")

    async def flush(self) -> None:
        """Write what is buffered now (tests, shutdown)."""
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(500, len(self._pending)))]
            try:
                await self._store.append_events(batch)
            except StoreError as exc:
                if not self._failing:
                    log.warning("events not stored (%s); describe will miss them", exc)
                self._failing = True
                self.dropped += len(batch)
            else:
                self._failing = False

    async def _run(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def aclose(self) -> None:
        """Write what is still buffered, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            await task
        await self.flush()
