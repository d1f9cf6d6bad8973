"""Upstream h2c connections, multiplexed and pooled per endpoint.

An `H2Upstream` carries many streams at once, at most as many as the upstream's
MAX_CONCURRENT_STREAMS; the pool opens another connection to the same endpoint beyond that.
A connection is usable only once the upstream's first SETTINGS arrived (until then its limits
are unknown); concurrent requests for an endpoint whose connection is still opening wait for
that one instead of each opening their own.

Invariants:
- a connection that received GOAWAY takes no new streams; its streams at or below the
  announced last stream id finish, the ones above it are told they were refused (safe to retry);
- every stream's sink hears exactly one of: its end, a reset, or the connection's loss.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

from forklane.proxy.http2._flow import Hub, Peer
from forklane.proxy.http2.conn import (
    EV_DATA,
    EV_END,
    EV_GOAWAY,
    EV_HEADERS,
    EV_INFO,
    EV_RESET,
    EV_SETTINGS,
    EV_TRAILERS,
    EV_WINDOW,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    ErrorCode,
    H2Conn,
    H2Error,
)
from forklane.proxy.sockets import tune_transport
from forklane.proxy.table import Endpoint

__all__ = ["CONNECTION_WINDOW", "H2Pools", "H2Upstream", "UpstreamSink"]

CONNECTION_WINDOW = 1024 * 1024  # what a client may have in flight to us on one connection
# What an upstream may have in flight to us: per stream and per connection. Larger than the
# client-facing windows because a response's speed is window / round trip and responses are
# where the bytes are; the connection window covers 64 stalled streams, so one slow client
# cannot stall the other streams sharing its upstream connection.
UPSTREAM_STREAM_WINDOW = 256 * 1024
UPSTREAM_CONNECTION_WINDOW = 64 * UPSTREAM_STREAM_WINDOW
_MAX_STREAMS_CAP = 1000  # even if an upstream allows more, spread further load over sockets


class UpstreamSink(Protocol):
    """The downstream side of one proxied stream, fed by its upstream stream."""

    def up_response(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None: ...
    def up_info(self, headers: list[tuple[bytes, bytes]]) -> None: ...
    def up_data(self, data: bytes, flow_len: int) -> None: ...
    def up_trailers(self, headers: list[tuple[bytes, bytes]]) -> None: ...
    def up_end(self) -> None: ...
    def up_reset(self, code: int, refused: bool) -> None: ...


class H2Upstream(asyncio.Protocol, Peer):
    """One h2c connection to one upstream endpoint."""

    def __init__(self, pools: H2Pools, address: str) -> None:
        Peer.__init__(self, pools.hub)
        self.pools = pools
        self.address = address
        self.h2 = H2Conn(True, connection_window=UPSTREAM_CONNECTION_WINDOW,
                         stream_window=UPSTREAM_STREAM_WINDOW, max_list_decoded=pools.max_list)
        self.streams: dict[int, UpstreamSink] = {}
        self.ready: asyncio.Future[None] = pools.loop.create_future()
        self.goaway = False
        self.lost = False
        self.last_used = pools.loop.time()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        tune_transport(transport)
        h2 = self.h2
        h2.initiate([(S_ENABLE_PUSH, 0), (S_INITIAL_WINDOW_SIZE, UPSTREAM_STREAM_WINDOW)])
        transport.write(h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        hub = self.hub
        if hub.scheduled:
            self._received(data)
            return
        hub.scheduled = True  # flushed below, when this callback ends (as downstream)
        try:
            self._received(data)
        finally:
            hub.flush()

    def _received(self, data: bytes) -> None:
        try:
            events = self.h2.receive(data)
        except H2Error:
            self.abort()
            self.hub.flush()
            return
        streams = self.streams
        for kind, sid, a, b in events:
            if kind == EV_DATA:
                sink = streams.get(sid)
                if sink is not None:
                    sink.up_data(a, b)  # type: ignore[arg-type]
                else:
                    self.h2.ack(b, sid)  # type: ignore[arg-type]
            elif kind == EV_HEADERS:
                sink = streams.get(sid)
                if sink is not None:
                    if a is None:  # a response head over the list size limit
                        streams.pop(sid)
                        self.cancel(sid, ErrorCode.PROTOCOL_ERROR)
                        sink.up_reset(ErrorCode.PROTOCOL_ERROR, False)
                    else:
                        sink.up_response(a, b)  # type: ignore[arg-type]
            elif kind == EV_END:
                sink = streams.pop(sid, None)
                if sink is not None:
                    sink.up_end()
                self._maybe_idle()
            elif kind == EV_TRAILERS:
                sink = streams.get(sid)
                if sink is not None:
                    sink.up_trailers(a or [])  # type: ignore[arg-type]
            elif kind == EV_RESET:
                sink = streams.pop(sid, None)
                if sink is not None:
                    sink.up_reset(a, a == ErrorCode.REFUSED_STREAM)  # type: ignore[arg-type]
                self._maybe_idle()
            elif kind == EV_WINDOW:
                self.unblock()
            elif kind == EV_SETTINGS:
                if not self.ready.done():
                    self.ready.set_result(None)
            elif kind == EV_GOAWAY:
                self._goaway(a, b)  # type: ignore[arg-type]
            elif kind == EV_INFO:
                sink = streams.get(sid)
                if sink is not None:
                    sink.up_info(a)  # type: ignore[arg-type]
        self.mark()
        self.hub.flush()  # now rather than at the end of the iteration: lower latency

    def _goaway(self, code: int, last_stream_id: int) -> None:
        self.goaway = True
        self.pools.forget(self)
        for sid in [s for s in self.streams if s > last_stream_id]:
            self.streams.pop(sid).up_reset(ErrorCode.REFUSED_STREAM, True)
        if code != ErrorCode.NO_ERROR and self.streams:
            # An error GOAWAY ends the connection; after NO_ERROR the streams at or below the
            # last stream id finish.
            for sid in tuple(self.streams):
                self.streams.pop(sid).up_reset(ErrorCode.INTERNAL_ERROR, False)
        if not self.streams:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        self.pools.forget(self)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("upstream closed before its settings"))
        streams, self.streams = self.streams, {}
        for sink in streams.values():
            sink.up_reset(ErrorCode.INTERNAL_ERROR, False)
        self.blocked.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.unblock()
        self.hub.flush()

    # -- streams ----------------------------------------------------------------------------

    def has_capacity(self) -> bool:
        if self.goaway or self.lost or self.transport is None:
            return False
        h2 = self.h2
        return (len(self.streams) < _MAX_STREAMS_CAP and h2.has_capacity())

    def open_stream(
        self, sink: UpstreamSink, headers: list[tuple[bytes, bytes]], end_stream: bool
    ) -> int:
        """Send the request head on a new stream; raises H2Error if that is refused."""
        sid = self.h2.open_stream(headers, end_stream)
        self.streams[sid] = sink
        self.mark()
        return sid

    def cancel(self, sid: int, code: int = ErrorCode.CANCEL) -> None:
        """The downstream no longer wants this stream (client reset, timeout, local end)."""
        if self.streams.pop(sid, None) is None and self.lost:
            return
        h2 = self.h2
        if sid in h2.streams:  # else closed on both sides already: nothing to reset
            # (the common case: a response's trailers end the stream before its end event
            # reaches the sink; a refused reset_stream would cost a raised H2Error per call)
            h2.reset_stream(sid, code)
            self.mark()
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self.streams:
            self.last_used = self.pools.loop.time()
            if self.goaway:
                self.close()

    def close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.h2.goaway(ErrorCode.NO_ERROR)
            self.mark()
            self.hub.flush()
            transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class H2Pools:
    """h2c connections per endpoint address, shared by every stream of one listener."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hub: Hub, max_list: int = 1 << 20) -> None:
        self.loop = loop
        self.hub = hub
        self.max_list = max_list  # decoded response head size beyond which a stream fails
        self.conns: dict[str, list[H2Upstream]] = {}
        self.opening: dict[str, tuple[asyncio.Future[H2Upstream], list[int]]] = {}
        self.opened = 0

    def take(self, address: str) -> H2Upstream | None:
        for conn in self.conns.get(address, ()):
            if conn.has_capacity():
                return conn
        return None

    async def connect(self, endpoint: Endpoint) -> H2Upstream:
        """A ready connection to `endpoint`: the one being opened if it has room, else a new
        one. The caller bounds the wait with its connect timeout."""
        address = endpoint.address
        ready = self.take(address)  # opened while this caller waited for its turn
        if ready is not None:
            return ready
        opening = self.opening.get(address)
        if opening is not None and opening[1][0] < _MAX_STREAMS_CAP:
            opening[1][0] += 1
            return await asyncio.shield(opening[0])
        fut: asyncio.Future[H2Upstream] = self.loop.create_future()
        fut.add_done_callback(_consume)
        self.opening[address] = (fut, [1])
        try:
            _, conn = await self.loop.create_connection(
                lambda: H2Upstream(self, address), endpoint.host, endpoint.port
            )
            try:
                await conn.ready
            except BaseException:
                conn.abort()
                raise
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else ConnectionError())
            raise
        finally:
            if self.opening.get(address, (None,))[0] is fut:
                del self.opening[address]
        self.opened += 1
        self.conns.setdefault(address, []).append(conn)
        fut.set_result(conn)
        return conn

    def forget(self, conn: H2Upstream) -> None:
        conns = self.conns.get(conn.address)
        if conns and conn in conns:
            conns.remove(conn)

    def sweep(self, idle_timeout: float) -> None:
        """Close connections without streams for longer than `idle_timeout`."""
        horizon = self.loop.time() - idle_timeout
        for conns in self.conns.values():
            for conn in [c for c in conns if not c.streams and c.last_used < horizon]:
                conns.remove(conn)
                conn.close()

    def close_all(self) -> None:
        for conns in self.conns.values():
            for conn in tuple(conns):
                conn.close()
            conns.clear()


def _consume(fut: asyncio.Future[H2Upstream]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved here so an unawaited failure is not reported twice
