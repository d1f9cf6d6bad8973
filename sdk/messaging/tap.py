"""Message deliveries shown in `forklane tap`, beside the requests proxies report.

`TapReporter` is a reporter (pass it in a consumer's `reporters`): each verdict is queued and
a background task posts them in batches to the control plane (`POST /api/v1/tap/deliveries`),
which shows them to the taps whose filter (key, service) they match.

Invariants: the consumer never waits for the control plane; the queue is bounded (the oldest
entries are dropped and counted in `dropped` when the control plane is slow or away); a
failed post is counted (`failures`, `last_error`) and its batch dropped, never retried into
an ever-growing backlog.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING

from forklane.errors import ForklaneError
from forklane.messaging.report import Delivery

if TYPE_CHECKING:
    from forklane.client import AsyncClient

__all__ = ["TapReporter"]

PATH = "/api/v1/tap/deliveries"
BATCH = 500


class TapReporter:
    def __init__(self, client: AsyncClient, *, size: int = 1000, interval: float = 0.2) -> None:
        self._client = client
        self._pending: collections.deque[Delivery] = collections.deque()
        self._size = size
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None

    def __call__(self, delivery: Delivery) -> None:
        if len(self._pending) >= self._size:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(delivery)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="forklane-tap-reporter")

    async def aclose(self) -> None:
        """Stop, after one last attempt to send what is queued."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)  # batching period, not synchronisation
            await self._flush()

    async def _flush(self) -> None:
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
            try:
                await self._client.call("POST", PATH, {"deliveries": [d.as_json() for d in batch]})
            except ForklaneError as exc:
                self.failures += 1
                self.last_error = str(exc)
                return
            self.sent += len(batch)
