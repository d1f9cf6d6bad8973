"""The admin listener: health, readiness, loaded config, metrics, explain and a live tap.

Low traffic, so plain asyncio streams with one request per connection (`Connection: close`);
it parses with httptools like the data plane so the sidecar loads no web framework.

Endpoints:
- `GET /healthz`: the process is alive;
- `GET /readyz`: 200 once a routing table is loaded and while not draining, else 503;
- `GET /config`: version, source, last reload error, the hot path's mode (`compiled` or
  `interpreted`), the upstreams' state (circuit breakers, ejected endpoints, every actively
  probed endpoint's health) and the loaded snapshot (JSON);
- `GET /metrics`: Prometheus text;
- `GET /explain?listener=&method=&host=&path=&header=name:value…` or `POST /explain` with
  `{"listener", "method", "host", "path", "headers": [[name, value], …]}` (repeated fields
  stay repeated, as on the wire; an object of strings is accepted too): the decision the
  forwarding core would make for that request (the same view, the same `decide`);
- `GET /tap?seconds=N[&key=K][&service=S][&status=5xx]`: one JSON line per finished request
  that matches, for N seconds (max 300); the reader's queue is bounded, and a last line
  `{"type": "dropped", "count": n}` says how many did not fit (the request path never waits).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httptools

from forklane.proxy.forward.core import join_view
from forklane.proxy.jsonlimits import loads_bounded
from forklane.proxy.metrics import Stats, render_prometheus
from forklane.proxy.routing import RequestView, decide, explain
from forklane.proxy.state import TableHolder
from forklane.proxy.table import ROUTED_MARKER, RoutingTable, routed_by_sidecar
from forklane.proxy.tap import TapFilter, parse_status_class

__all__ = ["AdminServer", "explain_request", "header_pairs", "wire_view"]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024


def header_pairs(value: Any) -> list[tuple[str, str]] | None:
    """Headers as sent: a list of `[name, value]` pairs (repeats kept, in order), or an
    object of strings (one field per name). None when it is neither."""
    if isinstance(value, dict):
        if all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return list(value.items())
        return None
    if isinstance(value, list):
        out = []
        for item in value:
            if not (isinstance(item, list | tuple) and len(item) == 2
                    and isinstance(item[0], str) and isinstance(item[1], str)):
                return None
            out.append((item[0], item[1]))
        return out
    return None


def wire_view(table: RoutingTable, pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The routing view the forwarding core builds from these fields: only the fields the
    table routes on, repeats joined as both protocols join them, look-alikes spelled with
    underscores left out, and a sidecar as the last Via hop marking the request routed."""
    view: dict[str, str] = {}
    interesting = table.interesting_raw
    vias: list[str] = []
    for name, value in pairs:
        raw = name.strip().lower().encode("latin-1", "replace")
        text = value.strip()
        if raw == b"via":
            vias.append(text)
        elif raw in interesting:
            join_view(view, raw.decode("latin-1"), text)
    if vias and routed_by_sidecar(", ".join(vias).encode("latin-1", "replace")):
        view[ROUTED_MARKER] = "1"
    return view


def explain_request(
    holder: TableHolder, spec: dict[str, Any], draw: Callable[[], float]
) -> tuple[int, dict[str, Any]]:
    """Run the real decision for a described request. Returns (status, JSON body)."""
    table = holder.table
    if table is None:
        return 503, {"error": "no routing table loaded"}
    listener = spec.get("listener", "outbound")
    if listener not in ("inbound", "outbound"):
        return 400, {"error": "listener must be inbound or outbound"}
    pairs = header_pairs(spec.get("headers", []))
    if pairs is None:
        return 400, {"error": "headers must be a list of [name, value] pairs or an object of "
                              "strings"}
    hosts = [v for n, v in pairs if n.strip().lower() == "host"]
    host = str(spec.get("host") or (hosts[0] if hosts else ""))
    if listener == "outbound" and not host:
        return 400, {"error": "outbound requests need a host"}
    view = RequestView(
        listener=listener,
        method=str(spec.get("method", "GET")).upper(),
        path=str(spec.get("path", "/")).partition("?")[0],
        authority=host.strip().lower(),
        headers=wire_view(table, pairs),
    )
    decision = decide(view, table, draw)
    body = explain(decision)
    body["table_version"] = table.version
    return 200, body


class AdminServer:
    def __init__(
        self,
        holder: TableHolder,
        stats: Stats,
        draw: Callable[[], float],
        is_ready: Callable[[], bool],
        hot_path: str = "interpreted",
    ) -> None:
        self.holder = holder
        self.hot_path = hot_path
        self.stats = stats
        self.draw = draw
        self.is_ready = is_ready
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        self.server = await asyncio.start_server(
            self._handle, host, port, reuse_port=reuse_port or None, limit=_MAX_HEAD
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        request = _Request()
        parser = httptools.HttpRequestParser(request)
        try:
            parser.feed_data(head)
        except httptools.HttpParserError as exc:
            await _respond(writer, 400, {"error": f"malformed request: {exc}"})
            return
        method = parser.get_method().decode()
        length = int(request.headers.get("content-length", "0") or 0)
        if length > _MAX_BODY:
            await _respond(writer, 413, {"error": "body too large"})
            return
        body = await reader.readexactly(length) if length else b""
        url = urlsplit(request.url.decode("latin-1"))
        query = parse_qs(url.query)
        path = url.path
        if path == "/healthz":
            await _respond(writer, 200, {"status": "ok"})
        elif path == "/readyz":
            ready = self.is_ready()
            await _respond(writer, 200 if ready else 503, {"ready": ready})
        elif path == "/config":
            await _respond(writer, 200, self._config())
        elif path == "/metrics":
            text, ctype = render_prometheus(self.stats)
            await _respond_raw(writer, 200, text, ctype)
        elif path == "/explain":
            spec: dict[str, Any]
            if method == "POST":
                try:
                    loaded = loads_bounded(body or b"{}")
                except ValueError as exc:
                    await _respond(writer, 400, {"error": f"body is not JSON: {exc}"})
                    return
                if not isinstance(loaded, dict):
                    await _respond(writer, 400, {"error": "body must be a JSON object"})
                    return
                spec = loaded
            else:
                headers: list[list[str]] = []
                for item in query.get("header", []):
                    name, sep, value = item.partition(":")
                    if not sep:
                        await _respond(writer, 400, {"error": f"header {item!r}: name:value"})
                        return
                    headers.append([name.strip(), value.strip()])
                spec = {
                    "listener": query.get("listener", ["outbound"])[0],
                    "method": query.get("method", ["GET"])[0],
                    "host": query.get("host", [""])[0],
                    "path": query.get("path", ["/"])[0],
                    "headers": headers,
                }
            status, out = explain_request(self.holder, spec, self.draw)
            await _respond(writer, status, out)
        elif path == "/tap":
            try:
                seconds = min(300.0, float(query.get("seconds", ["10"])[0]))
            except ValueError:
                await _respond(writer, 400, {"error": "seconds must be a number"})
                return
            try:
                status_class = parse_status_class(query.get("status", [""])[0])
            except ValueError as exc:
                await _respond(writer, 400, {"error": str(exc)})
                return
            keys = frozenset(query.get("key", []))
            service = query.get("service", [None])[0]
            await self._tap(writer, seconds, TapFilter("admin", keys, service, status_class))
        else:
            await _respond(writer, 404, {"error": f"no admin endpoint {path}"})

    def _config(self) -> dict[str, Any]:
        table = self.holder.table
        return {
            "version": table.version if table else None,
            "source": self.holder.source,
            "loaded_at": self.holder.loaded_at or None,
            "reload_failures": self.holder.reload_failures,
            "last_error": self.holder.last_error or None,
            "hot_path": self.hot_path,
            # the live taps this proxy serves now: pushed filter ids, "admin" for /tap readers
            "taps": sorted(
                {f.id for sink in self.stats.taps for f in getattr(sink, "filters", ())}
                | {"admin" for sink in self.stats.taps if isinstance(sink, _QueueSink)}
            ),
            "upstreams": self.stats.upstream_health(),
            "snapshot": table.snapshot.model_dump(mode="json") if table else None,
        }

    async def _tap(self, writer: asyncio.StreamWriter, seconds: float, wanted: TapFilter) -> None:
        sink = _QueueSink(wanted)
        queue = sink.queue
        self.stats.taps.append(sink)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    record = await asyncio.wait_for(queue.get(), timeout=left)
                except TimeoutError:
                    break
                line = json.dumps(record).encode() + b"\n"
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                await writer.drain()
            if sink.dropped:
                line = json.dumps({"type": "dropped", "count": sink.dropped}).encode() + b"\n"
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            self.stats.taps.remove(sink)


class _QueueSink:
    """One admin `/tap` reader: its filter and a bounded queue; what does not fit is counted."""

    def __init__(self, wanted: TapFilter, size: int = 1000) -> None:
        self.wanted = wanted
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def wants(self, key: str | None, service: str | None, status: int) -> bool:
        return self.wanted.wants(key, service, status)

    def offer(self, record: dict[str, Any]) -> None:
        if self.queue.full():
            self.dropped += 1
        else:
            self.queue.put_nowait(record)


class _Request:
    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")


async def _respond(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
    await _respond_raw(
        writer, status, json.dumps(body, indent=1).encode() + b"\n", "application/json"
    )


async def _respond_raw(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str) -> None:
    from http import HTTPStatus

    phrase = HTTPStatus(status).phrase
    writer.write(
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: {ctype}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
