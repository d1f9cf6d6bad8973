"""Kubernetes-style watches on the list endpoints: `GET /api/v1/<kind>?watch=true`.

The answer is a stream of newline-delimited JSON events, `{"type": "ADDED" | "MODIFIED" |
"DELETED" | "BOOKMARK" | "ERROR", "object": …}`, read from the store's change log, so it is
the same on every replica and on both backends (PostgreSQL's LISTEN/NOTIFY wakes a replica
for another replica's writes; the log says what they were).

- `resourceVersion=N`: every change after N, in revision order. N older than the history
  kept answers 410 Gone (`reason: Expired`): list again, then watch from the list's version.
  A watch that falls that far behind while running ends with an ERROR event carrying the
  same error body.
- no `resourceVersion` (or `0`): an ADDED event for every object there now, then changes.
- `labelSelector`: an object that starts matching is ADDED, one that stops is DELETED.
- `allowWatchBookmarks=true`: a quiet watch gets a BOOKMARK (only `metadata.resourceVersion`,
  the store revision it has seen everything up to) every `bookmark_interval` seconds.
- `timeoutSeconds=N`: the server ends the stream after N seconds (clients resume from the
  last version they saw).

Invariants: events come in revision order, each object's `resourceVersion` is its revision;
a caller sees only objects it may `get`; the stream ends when the server shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from forklane.controlplane import wire
from forklane.controlplane.errors import ApiError
from forklane.controlplane.selector import Selector
from forklane.controlplane.store.base import Change, Expired, Record, Store

__all__ = ["serve_watch", "translate"]

Visible = Callable[[Record], bool]
Document = Callable[[Record], dict[str, Any]]
PAGE = 500


def translate(change: Change, selector: Selector) -> str | None:
    """The event type a watcher with `selector` sees for `change` (None: nothing)."""
    now = change.type != "DELETED" and selector.matches(change.record.labels)
    before = change.labels_before is not None and selector.matches(change.labels_before)
    if change.type == "ADDED":
        return "ADDED" if now else None
    if change.type == "DELETED":
        return "DELETED" if before else None
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    return "DELETED" if before else None


def _line(event_type: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _expired(after: int) -> ApiError:
    return ApiError(
        410, f"resourceVersion {after} is too old: list again and watch from its resourceVersion"
    )


async def serve_watch(
    request: web.Request,
    *,
    store: Store,
    plural: str,
    kind: str,
    selector: Selector,
    visible: Visible,
    document: Document,
    bookmark_interval: float,
    closing: asyncio.Event,
) -> web.StreamResponse:
    query = request.query
    rv = query.get("resourceVersion", "")
    bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
    timeout_text = query.get("timeoutSeconds", "")
    if rv and not rv.isdigit():
        raise ApiError(400, f"resourceVersion {rv!r} is not one this server issues")
    if timeout_text and not timeout_text.isdigit():
        raise ApiError(400, "timeoutSeconds must be a non-negative integer")
    wake = asyncio.Event()

    def on_change(_revision: int) -> None:
        wake.set()

    store.add_listener(on_change)
    try:
        initial: list[Record] = []
        if rv in ("", "0"):
            page = await store.list(plural, selector=selector)
            initial, after = [r for r in page.items if visible(r)], page.revision
        else:
            after = int(rv)
            try:
                await store.changes(plural, after=after, limit=1)
            except Expired:
                raise _expired(after) from None
        response = web.StreamResponse(headers={"Content-Type": "application/json;stream=watch"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        ends = loop.time() + int(timeout_text) if timeout_text else None
        with contextlib.suppress(ConnectionError):
            for record in initial:
                await response.write(_line("ADDED", document(record)))
            while not closing.is_set():
                wake.clear()
                seen_up_to = await store.revision()
                try:
                    changes = await store.changes(plural, after=after, limit=PAGE)
                except Expired:
                    body = wire.dump(_expired(after).body())
                    await response.write(_line("ERROR", body))
                    break
                for change in changes:
                    after = change.revision
                    event_type = translate(change, selector)
                    if event_type is not None and visible(change.record):
                        await response.write(_line(event_type, document(change.record)))
                if len(changes) == PAGE:
                    continue
                after = max(after, seen_up_to)
                wait = bookmark_interval
                if ends is not None:
                    wait = min(wait, ends - loop.time())
                    if wait <= 0:
                        break
                if await _woken(wake, closing, wait):
                    continue
                if bookmarks and (ends is None or loop.time() < ends):
                    mark = {"apiVersion": wire.API_VERSION, "kind": kind,
                            "metadata": {"resourceVersion": str(after)}}  # fmt: skip
                    await response.write(_line("BOOKMARK", mark))
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
    finally:
        store.remove_listener(on_change)


async def _woken(wake: asyncio.Event, closing: asyncio.Event, within: float) -> bool:
    """True when a change (or shutdown) came within `within` seconds."""
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(closing.wait())]
    try:
        done, _ = await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)
