"""The hand-off between the compiler and the pusher: the latest compiled routing snapshot.

The compiler calls `publish()` with each new snapshot; every push stream waits on
`wait_newer()`. Only the latest snapshot matters (proxies always get the whole current state,
so a slow stream skips versions rather than queueing them). Versions increase monotonically.
"""

from __future__ import annotations

import asyncio

from forklane.proxy.schema import RoutingSnapshot

__all__ = ["SnapshotPublisher"]


class SnapshotPublisher:
    def __init__(self) -> None:
        self._latest: RoutingSnapshot | None = None
        self._changed = asyncio.Condition()

    @property
    def latest(self) -> RoutingSnapshot | None:
        return self._latest

    async def publish(self, snapshot: RoutingSnapshot) -> None:
        async with self._changed:
            self._latest = snapshot
            self._changed.notify_all()

    async def wait_newer(self, than: str | None) -> RoutingSnapshot:
        """Return the latest snapshot once its version differs from `than`."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._latest is not None and self._latest.version != than
            )
            assert self._latest is not None
            return self._latest
