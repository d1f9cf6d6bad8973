"""The live-tap endpoints: `GET /api/v1/tap` streams, `POST /api/v1/tap/deliveries` reports.

`GET /api/v1/tap?sandbox=NAME[&service=S][&status=5xx][&seconds=N][&headers=true][&body=N]`
answers newline-delimited
JSON: first `{"type": "started", "id": …, "filter": …}`, then one `{"type": "request", …}`
line per routing decision a proxy made that matches (time, proxy, listener, protocol,
method, target, service, carrier, rule, destination, status, latency) and one
`{"type": "delivery", …}` per message a forklane consumer judged; whenever drops grew, a
`{"type": "dropped", "viewer": n, "proxies": {node: n}}` line. `seconds` (default: until the
client goes away, at most a day) ends the stream. `headers=true` and `body=N` (bytes of each
body, at most 16 KiB) ask the proxies to capture: request lines then carry `capture`
(`request` / `response`: `headers` as `[name, value]` pairs, `body`, `body_bytes`,
`body_truncated`, `body_encoding: base64` when not UTF-8), redacted by the proxy.

Bad input is a 400 naming the parameter; a 65th open tap is a 503; a viewer that stops
reading fills only its own bounded queue (see `controlplane.tap`), and what it never got is
counted, at the end of the stream too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

from forklane.controlplane.errors import ApiError
from forklane.controlplane.tap import TapHub, TapsFull, Viewer
from forklane.proxy.tap import parse_status_class
from forklane.proxy.tap_capture import MAX_BODY

__all__ = ["post_deliveries", "stream_tap"]

MAX_SECONDS = 86400.0
DROPS_EVERY = 1.0  # seconds between checks of the drop counters while quiet
MAX_DELIVERIES = 1000


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def _capture(request: web.Request) -> tuple[bool, int]:
    query = request.query
    text = query.get("headers", "false").lower()
    if text not in ("true", "false"):
        raise ApiError(400, f"headers {query.get('headers')!r}: expected true or false")
    raw = query.get("body", "0")
    if not raw.isdigit() or int(raw) > MAX_BODY:
        raise ApiError(400, f"body {raw!r}: expected a number of bytes from 0 to {MAX_BODY}")
    return text == "true", int(raw)


def _parse(request: web.Request) -> tuple[str | None, int | None, float]:
    query = request.query
    service = query.get("service") or None
    try:
        status_class = parse_status_class(query.get("status"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    text = query.get("seconds", "")
    try:
        seconds = float(text) if text else MAX_SECONDS
    except ValueError as exc:
        raise ApiError(400, f"seconds {text!r}: expected a number") from exc
    if not 0 < seconds <= MAX_SECONDS:
        raise ApiError(400, f"seconds must be in (0, {MAX_SECONDS:g}]")
    return service, status_class, seconds


async def stream_tap(
    request: web.Request,
    hub: TapHub,
    keys: tuple[str, ...],
    closing: asyncio.Event,
    subject: str,
) -> web.StreamResponse:
    service, status_class, seconds = _parse(request)
    headers, body = _capture(request)
    try:
        viewer = hub.open(keys, service, status_class, subject, headers=headers, body=body)
    except TapsFull as exc:
        raise ApiError(503, str(exc)) from exc
    try:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(_line({"type": "started", "id": viewer.spec.id,
                                    "filter": viewer.spec.model_dump(mode="json")}))
        await _pump(request, response, viewer, time.monotonic() + seconds, closing)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
    finally:
        hub.close(viewer)


async def _pump(
    request: web.Request,
    response: web.StreamResponse,
    viewer: Viewer,
    deadline: float,
    closing: asyncio.Event,
) -> None:
    """Write the viewer's lines until the deadline, shutdown, or the viewer leaves (noticed
    within DROPS_EVERY even when nothing is written: its filter must leave the proxies)."""
    reported = (0, 0)
    stop = asyncio.ensure_future(closing.wait())
    try:
        while (left := deadline - time.monotonic()) > 0 and not closing.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            get = asyncio.ensure_future(viewer.queue.get())
            done, _ = await asyncio.wait(
                (get, stop), timeout=min(left, DROPS_EVERY), return_when=asyncio.FIRST_COMPLETED
            )
            if get in done:
                await response.write(_line(get.result()))
            else:
                get.cancel()
            reported = await _report_drops(response, viewer, reported)
        # the end: lines still queued are never shown, so they count as dropped too
        transport = request.transport
        if transport is not None and not transport.is_closing():
            while not viewer.queue.empty():
                viewer.queue.get_nowait()
                viewer.dropped += 1
            await _report_drops(response, viewer, reported)
    except ConnectionError:
        pass  # the viewer went away
    finally:
        stop.cancel()


async def _report_drops(response: web.StreamResponse, viewer: Viewer,
                        reported: tuple[int, int]) -> tuple[int, int]:
    """A `dropped` line when the counts grew since the last one; the counts reported."""
    drops = (viewer.dropped, sum(viewer.proxy_dropped.values()))
    if drops != reported:
        await response.write(_line({"type": "dropped", "viewer": viewer.dropped,
                                    "proxies": dict(viewer.proxy_dropped)}))
    return drops


def post_deliveries(body: dict[str, Any], hub: TapHub, reporter: str) -> dict[str, Any]:
    """`{"deliveries": [Delivery.as_json(), …]}` → how many were accepted and shown."""
    items = body.get("deliveries")
    if not isinstance(items, list) or len(items) > MAX_DELIVERIES:
        raise ApiError(400, f"deliveries must be a list of at most {MAX_DELIVERIES} objects")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, f"deliveries[{i}] must be an object")
        for name in ("service", "outcome", "broker"):
            if not isinstance(item.get(name), str):
                raise ApiError(400, f"deliveries[{i}].{name} must be a string")
        key = item.get("routing_key")
        if key is not None and not isinstance(key, str):
            raise ApiError(400, f"deliveries[{i}].routing_key must be a string or null")
    return {"accepted": len(items), "shown": hub.deliveries(reporter, items)}
