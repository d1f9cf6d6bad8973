"""Upstream HTTP/1.1 connections and their keep-alive pools.

An `UpstreamConnection` carries one exchange at a time (no upstream pipelining: a reset would
make every queued request ambiguous). It parses the response with httptools and hands every
event to its `ResponseSink` (the downstream side of the exchange). Between exchanges it sits
in its endpoint's idle pool; a sweeper closes connections idle longer than the idle timeout,
so the request path arms no timer for idleness.

Invariant: a connection is in the idle pool only when it has no sink, its last response was
complete and both sides agreed to keep it alive.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

import httptools

from forklane.proxy import hotpath
from forklane.proxy.http1.head import ResponseHead, parse_response
from forklane.proxy.listener.context import Clock
from forklane.proxy.sockets import tune_transport
from forklane.proxy.table import Endpoint

__all__ = ["Pools", "ResponseSink", "UpstreamConnection"]

FAST_HEADS = hotpath.is_compiled("forklane.proxy.http1.head")  # see http1.server.FAST_HEADS


class ResponseSink:
    """What an upstream connection hands its events to: the exchange, or a mirror copy.

    A base class rather than a typing.Protocol: the compiled build calls the per-response
    methods declared in `upstream.pxd` as C functions. Every method here must be overridden."""

    def response_head(
        self, conn: UpstreamConnection, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        raise NotImplementedError

    def response_interim(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        raise NotImplementedError

    def response_body(self, data: bytes) -> None:
        raise NotImplementedError

    def response_end(self, conn: UpstreamConnection, trailers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        raise NotImplementedError

    def upstream_pause(self, paused: bool) -> None:
        raise NotImplementedError

    def upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        raise NotImplementedError

    def response_head_raw(self, conn: UpstreamConnection, head: ResponseHead) -> None:
        raise NotImplementedError

    def cork(self) -> None:
        raise NotImplementedError

    def uncork(self) -> None:
        raise NotImplementedError


class UpstreamConnection:
    """One upstream HTTP/1.1 connection (an asyncio protocol; not a subclass of
    `asyncio.Protocol` because the compiled build makes it an extension type)."""

    __slots__ = (
        "address",
        "body_left",
        "busy",
        "head_request",
        "headers",
        "in_trailers",
        "interim",
        "keep_alive",
        "last_used",
        "parser",
        "pools",
        "reason",
        "reset_parser",
        "seen_bytes",
        "sink",
        "status",
        "transport",
        "tunnel",
        "upgrade_expected",
    )

    def __init__(self, pools: Pools, address: str) -> None:
        self.pools = pools
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: ResponseSink | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.reason = b""
        self.interim = False
        self.in_trailers = False
        self.head_request = False
        self.reset_parser = False
        self.keep_alive = True
        self.seen_bytes = False
        self.last_used = 0.0
        self.tunnel = False
        self.upgrade_expected = False
        self.busy = False  # the full parser is inside a message
        self.body_left = 0  # Content-Length body bytes still due to a response `_fast_head` read

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        tune_transport(transport)

    def data_received(self, data: bytes) -> None:
        clock = self.pools.clock
        clock.now = clock.time()  # the one clock read of this read event (Clock.tick inlined)
        if self.tunnel:
            if self.sink is not None:
                self.sink.response_body(data)
            return
        self.seen_bytes = True
        sink = self.sink
        if sink is not None:
            sink.cork()
        try:
            if self.body_left:
                data = self._fast_body(data)
            if FAST_HEADS and data and not self.busy and sink is not None and not self.head_request:
                data = self._fast_head(data, sink)
            if data:
                self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self.tunnel = True
            if self.sink is not None:
                self.sink.upgraded(self, data[offset:])
            return
        except httptools.HttpParserError as exc:
            self._fail(exc)
            return
        finally:
            if sink is not None:
                sink.uncork()
        if self.reset_parser:
            self.reset_parser = False
            self.busy = False
            self.parser = httptools.HttpResponseParser(self)

    def _fast_head(self, data: bytes, sink: ResponseSink) -> bytes:
        """A response `parse_response` reads whole, with its Content-Length body as far as it
        came; returns what the full parser must see (everything, when it is unsure)."""
        head = parse_response(data, 0)
        if head is None:
            return data
        self.status = head.status
        self.keep_alive = head.keep_alive
        self.interim = False
        self.in_trailers = True
        sink.response_head_raw(self, head)
        pos = head.end
        length = head.content_length
        rest = len(data) - pos
        if rest < length:
            if rest and self.sink is not None:
                self.sink.response_body(data[pos:])
            self.body_left = length - rest
            return b""
        if length and self.sink is not None:
            self.sink.response_body(data[pos : pos + length])
        self._finish()
        return data[pos + length :]

    def _fast_body(self, data: bytes) -> bytes:
        """More of a Content-Length body `_fast_head` started; returns the bytes after it."""
        left = self.body_left
        sink = self.sink
        if len(data) < left:
            self.body_left = left - len(data)
            if sink is not None:
                sink.response_body(data)
            return b""
        self.body_left = 0
        if sink is not None:
            sink.response_body(data if len(data) == left else data[:left])
        self._finish()
        return data[left:]

    def eof_received(self) -> bool | None:
        """The upstream half-closed: let the transport close, as `asyncio.Protocol` would
        (this class is not one, so that it can compile to an extension type);
        `connection_lost` then settles the exchange."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.pools.closed(self)
        sink, self.sink = self.sink, None
        self.transport = None
        if sink is not None:
            sink.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause(True)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause(False)

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.busy = True
        self.headers = []
        self.in_trailers = False
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.status = status
        sink = self.sink
        if sink is None:
            return
        if 100 <= status < 200 and status != 101:
            self.interim = True
            sink.response_interim(status, self.reason, self.headers)
            return
        self.interim = False
        self.keep_alive = self.parser.should_keep_alive()
        headers, self.headers = self.headers, []
        self.in_trailers = True
        sink.response_head(self, status, self.reason, headers)
        if self.head_request and status not in (204, 304):
            # A response to HEAD has no body whatever its Content-Length says, and httptools
            # cannot be told so: finish here and parse the next response with a new parser.
            self.reset_parser = True
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.response_body(body)

    def on_message_complete(self) -> None:
        self.busy = False
        if self.status == 101:
            return  # the tunnel takes over (HttpParserUpgrade follows)
        if self.interim:
            self.interim = False
            return
        if self.reset_parser:
            return  # HEAD: already finished in on_headers_complete
        self._finish()

    # -- helpers -----------------------------------------------------------------------------

    def _finish(self) -> None:
        sink, self.sink = self.sink, None
        trailers, self.headers = self.headers, []
        if sink is not None:
            sink.response_end(self, trailers)

    def _fail(self, exc: Exception) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()
        else:
            self.connection_lost(exc)

    def attach(self, sink: ResponseSink, head_request: bool) -> None:
        self.sink = sink
        self.head_request = head_request
        self.seen_bytes = False
        self.status = 0

    def close(self) -> None:
        self.sink = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.sink = None
        if self.transport is not None:
            self.transport.abort()


class Pools:
    """Idle keep-alive connections per endpoint address (shared by every table version), and
    the one way to open a new upstream connection (requests and mirror copies alike)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_idle: int, clock: Clock | None = None
    ) -> None:
        self.loop = loop
        self.clock = clock or Clock(loop.time)
        self.max_idle = max_idle
        self.idle: dict[str, deque[UpstreamConnection]] = {}
        self.opened = 0
        self.open_by_address: dict[str, int] = {}  # connections open now (circuit breakers)

    async def open(self, endpoint: Endpoint, limit: float) -> UpstreamConnection:
        """A new connection to `endpoint`; raises OSError, or TimeoutError after `limit` s."""
        address = endpoint.address
        async with asyncio.timeout(limit):
            _, proto = await self.loop.create_connection(
                lambda: cast(asyncio.Protocol, UpstreamConnection(self, address)),
                endpoint.host, endpoint.port,
            )
        conn = cast(UpstreamConnection, proto)
        self.opened += 1
        counts = self.open_by_address
        counts[address] = counts.get(address, 0) + 1
        return conn

    def connections(self, endpoints: tuple[Endpoint, ...]) -> int:
        """Connections open now to any of `endpoints`."""
        counts = self.open_by_address
        if len(endpoints) == 1:
            return counts.get(endpoints[0].address, 0)
        return sum(counts.get(e.address, 0) for e in endpoints)

    def closed(self, conn: UpstreamConnection) -> None:
        """`conn` is gone: out of the idle pool and out of the open count."""
        self.forget(conn)
        counts = self.open_by_address
        left = counts.get(conn.address, 0) - 1
        if left > 0:
            counts[conn.address] = left
        else:
            counts.pop(conn.address, None)

    def take(self, address: str) -> UpstreamConnection | None:
        idle = self.idle.get(address)
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                return conn
        return None

    def give_back(self, conn: UpstreamConnection) -> None:
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        idle = self.idle.get(conn.address)
        if idle is None:
            idle = self.idle[conn.address] = deque()
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.last_used = self.clock.now
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self.idle.get(conn.address)
        if idle:
            try:
                idle.remove(conn)
            except ValueError:
                pass

    def sweep(self, idle_timeout: float) -> None:
        """Close connections idle for longer than `idle_timeout` (called periodically)."""
        horizon = self.loop.time() - idle_timeout
        for idle in self.idle.values():
            while idle and idle[0].last_used < horizon:
                idle.popleft().close()

    def close_all(self) -> None:
        for idle in self.idle.values():
            while idle:
                idle.pop().close()

    def idle_count(self) -> int:
        return sum(len(q) for q in self.idle.values())
