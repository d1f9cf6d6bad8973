"""Deliver sandbox events to the configured URLs: read the change log, POST signed, retry.

The sender follows the store's change log (woken by its change listener), turns changes into
events (`events.event_of`), and delivers each to every URL in its own task: a 2xx answer is
delivered; anything else (a refused connection, a timeout, a 5xx or 4xx) is retried after
`backoff(attempt)` up to `max_attempts`, then marked failed. The last `keep` deliveries, with
their state, attempts and last error, are what `GET /api/v1/webhooks/deliveries` shows.

Invariants: a receiver that is down never slows the API or the reconciler (deliveries run
in tasks owned by the sender, cancelled at close); events of one sandbox are sent in order of
their revision, but a retried one may arrive after a later one (receivers order by `id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from forklane.controlplane import wire
from forklane.controlplane.resources import to_wire
from forklane.controlplane.store.base import Expired, Store
from forklane.controlplane.webhooks.events import Event, backoff, event_of, sign

__all__ = ["Delivery", "WebhookSender"]

log = logging.getLogger("forklane.controlplane.webhooks")


@dataclass(slots=True)
class Delivery:
    event: Event
    url: str
    state: str = "pending"  # pending | delivered | failed
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: str | None = None
    next_attempt_at: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.event.id, "type": self.event.type, "sandbox": self.event.name,
                "url": self.url, "state": self.state, "attempts": self.attempts,
                "lastStatus": self.last_status, "lastError": self.last_error,
                "deliveredAt": self.delivered_at, "nextAttemptAt": self.next_attempt_at}


class WebhookSender:
    def __init__(
        self,
        store: Store,
        urls: tuple[str, ...],
        secret: str,
        clock: Callable[[], datetime],
        *,
        max_attempts: int = 10,
        timeout: float = 5.0,
        keep: int = 500,
        backoff_base: float = 0.5,
    ) -> None:
        self._store = store
        self.urls = urls
        self._secret = secret
        self._clock = clock
        self._max_attempts = max_attempts
        self._timeout = timeout
        self._keep = keep
        self._backoff_base = backoff_base
        self._deliveries: OrderedDict[tuple[str, str], Delivery] = OrderedDict()
        self._phases: dict[str, str | None] = {}
        self._after = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Start from now: events of changes made before the start are not sent."""
        self._after = await self._store.revision()
        for record in (await self._store.list("sandboxes")).items:
            self._phases[record.name] = (record.status or {}).get("phase")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        self._store.add_listener(self._on_change)
        self._task = asyncio.create_task(self._run(), name="forklane-webhooks")

    async def aclose(self) -> None:
        self._store.remove_listener(self._on_change)
        tasks = [t for t in (self._task, *self._sends) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def deliveries(self) -> list[dict[str, Any]]:
        return [d.as_json() for d in reversed(self._deliveries.values())]

    def _on_change(self, revision: int) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._read_changes()
            except Exception:  # the store is away: try again at the next change
                log.warning("webhooks: cannot read the change log now", exc_info=True)

    async def _read_changes(self) -> None:
        while True:
            try:
                changes = await self._store.changes("sandboxes", after=self._after)
            except Expired:
                log.warning("webhooks: change log expired after %d; skipping ahead", self._after)
                self._after = await self._store.revision()
                return
            if not changes:
                return
            for change in changes:
                record = change.record
                previous = self._phases.get(record.name)
                status = record.status
                if change.type == "DELETED":
                    self._phases.pop(record.name, None)
                else:
                    self._phases[record.name] = (status or {}).get("phase")
                doc = wire.dump(to_wire(record))
                event = event_of(change.type, change.revision, record.name, status, previous,
                                 doc, self._clock())
                if event is not None:
                    for url in self.urls:
                        self._deliver(event, url)
                self._after = change.revision

    def _deliver(self, event: Event, url: str) -> None:
        delivery = Delivery(event, url)
        self._deliveries[(event.id, url)] = delivery
        while len(self._deliveries) > self._keep:
            self._deliveries.popitem(last=False)
        task = asyncio.create_task(self._send(delivery), name=f"forklane-webhook-{event.id}")
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, delivery: Delivery) -> None:
        event = delivery.event
        while delivery.attempts < self._max_attempts:
            delivery.attempts += 1
            now = self._clock()
            headers = {
                "Content-Type": "application/json",
                "X-Forklane-Event": event.type,
                "X-Forklane-Delivery": event.id,
                "X-Forklane-Signature": sign(self._secret, event.body, int(now.timestamp())),
            }
            assert self._session is not None
            try:
                async with self._session.post(delivery.url, data=event.body,
                                              headers=headers) as resp:
                    delivery.last_status = resp.status
                    ok = 200 <= resp.status < 300
                    delivery.last_error = None if ok else f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                ok = False
                delivery.last_error = str(exc) or type(exc).__name__
            if ok:
                delivery.state = "delivered"
                delivery.delivered_at = self._clock().isoformat()
                delivery.next_attempt_at = None
                return
            wait = backoff(delivery.attempts, self._backoff_base)
            delivery.next_attempt_at = datetime.fromtimestamp(
                self._clock().timestamp() + wait, tz=now.tzinfo).isoformat()
            await asyncio.sleep(wait)  # the retry backoff
        delivery.state = "failed"
        delivery.next_attempt_at = None
        log.warning("webhook %s to %s failed after %d attempts: %s", event.id, delivery.url,
                    delivery.attempts, delivery.last_error)
