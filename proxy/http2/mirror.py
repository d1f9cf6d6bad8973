"""Shadow copies of HTTP/2 requests (mirroring): sent on a stream of their own, answered, and
thrown away.

The rules of the HTTP/1.1 mirror hold: a copy must never slow or fail the caller. It rides a
pooled h2c connection to the mirror destination (the pools requests use), buffers at most
`_BUFFER_LIMIT` bytes while its stream opens or its window is closed, and is abandoned and
counted the moment it would need the caller to wait; the caller's flow control never waits
for a mirror. Its answer is read and dropped at once (window given straight back), counted in
the listener's rows as destination kind `mirror`, and its deadline is the listener sweep's
(`ListenerContext.watch`).
"""

from __future__ import annotations

import asyncio
from collections import deque

from forklane.proxy.forward.accounting import count_row
from forklane.proxy.http2.conn import ErrorCode, H2Error
from forklane.proxy.http2.upstream import H2Pools, H2Upstream
from forklane.proxy.listener.context import ListenerContext
from forklane.proxy.table import Destination, Endpoint

__all__ = ["MIRROR_FIELD", "H2MirrorCopy"]

_BUFFER_LIMIT = 256 * 1024
MIRROR_FIELD = (b"x-forklane-mirror", b"1")


class H2MirrorCopy:
    """One copy of one request stream (an `UpstreamSink` of its own upstream stream)."""

    __slots__ = ("buffered", "chunks", "closed", "conn", "ctx", "deadline", "dest", "done", "ended",
                 "headers", "pools", "sid", "stat_key", "trailers")

    def __init__(self, ctx: ListenerContext, pools: H2Pools, dest: Destination,
                 headers: list[tuple[bytes, bytes]], service: str) -> None:
        self.ctx = ctx
        self.pools = pools
        self.dest = dest
        self.stat_key = f"{service}\x1fmirror"  # forklane_requests_total{kind="mirror"}
        pseudo = [h for h in headers if h[0][:1] == b":"]
        self.headers = pseudo + [MIRROR_FIELD] + [h for h in headers if h[0][:1] != b":"]
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.ended = False
        self.closed = False  # our side of the copy's stream was ended
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.conn: H2Upstream | None = None
        self.sid = 0
        self.done = False
        self.deadline = ctx.clock.now + dest.timeouts.request
        ctx.watch(self)

    def start(self) -> None:
        ctx = self.ctx
        endpoint = ctx.balancer.pick(self.dest)
        conn = self.pools.take(endpoint.address)
        if conn is not None:
            self._bind(conn)
        else:
            ctx.spawn(self._open(endpoint))

    async def _open(self, endpoint: Endpoint) -> None:
        try:
            async with asyncio.timeout(self.dest.timeouts.connect):
                conn = await self.pools.connect(endpoint)
        except (OSError, TimeoutError, ConnectionError, H2Error):
            self.abandon("connect-failed")
            return
        if not self.done:
            if conn.has_capacity():
                self._bind(conn)
            else:
                self.abandon("dropped")

    def _bind(self, conn: H2Upstream) -> None:
        only_head = self.ended and not self.chunks and self.trailers is None
        try:
            self.sid = conn.open_stream(self, self.headers, only_head)
        except H2Error:
            self.abandon("connect-failed")
            return
        self.conn = conn
        self.closed = only_head
        self.ctx.stats.mirror["sent"] += 1
        self.pump()

    # -- the caller's request, copied ---------------------------------------------------------

    def send_body(self, data: bytes) -> None:
        if self.done or not data:
            return
        self.buffered += len(data)
        if self.buffered > _BUFFER_LIMIT:
            self.abandon("dropped")
            return
        self.chunks.append(data)
        if self.conn is not None:
            self.pump()

    def send_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        if self.done or self.ended:
            return
        self.ended = True
        self.trailers = trailers
        if self.conn is not None:
            self.pump()

    def pump(self) -> None:
        conn = self.conn
        if conn is None or self.done:
            return
        h2 = conn.h2
        sid = self.sid
        chunks = self.chunks
        try:
            while chunks:
                window = h2.window(sid)
                if window <= 0 or conn.write_paused:
                    conn.blocked.add(self)  # pumped again when the window opens
                    return  # meanwhile the bounded buffer fills; past it the copy is dropped
                data = chunks[0]
                size = min(window, h2.max_outbound_frame_size)
                if len(data) <= size:
                    chunks.popleft()
                    piece = data
                else:
                    piece = data[:size]
                    chunks[0] = data[size:]
                self.buffered -= len(piece)
                h2.send_data(sid, piece)
            if self.ended and not self.closed:
                self.closed = True
                if self.trailers is not None:
                    h2.send_headers(sid, self.trailers, end_stream=True)
                else:
                    h2.end_stream(sid)
        except H2Error:
            self.abandon("failed")
            return
        conn.mark()

    def expired(self) -> None:
        """The sweep found the deadline passed."""
        self.abandon("timeout")

    def abandon(self, reason: str) -> None:
        if self.done:
            return
        self._end()
        self.ctx.stats.mirror[reason] += 1
        count_row(self.ctx.rows, self.stat_key, 0)  # counted as "reset": the copy got no answer
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.blocked.discard(self)
            conn.cancel(self.sid, ErrorCode.CANCEL)

    def _end(self) -> None:
        self.done = True
        self.chunks.clear()
        self.ctx.watched.discard(self)

    # -- UpstreamSink: the answer is read and discarded ---------------------------------------

    def up_response(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        status = 0
        for name, value in headers:
            if name == b":status":
                status = int(value)
                break
        self.ctx.stats.mirror["answered"] += 1
        count_row(self.ctx.rows, self.stat_key, status)

    def up_info(self, headers: list[tuple[bytes, bytes]]) -> None:
        pass

    def up_data(self, data: bytes, flow_len: int) -> None:
        conn = self.conn
        if conn is not None:
            conn.h2.ack(flow_len, self.sid)
            conn.mark()

    def up_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        pass

    def up_end(self) -> None:
        conn, self.conn = self.conn, None
        if not self.done:
            self._end()
            if conn is not None and not self.closed:
                conn.cancel(self.sid, ErrorCode.NO_ERROR)

    def up_reset(self, code: int, refused: bool) -> None:
        self.conn = None
        if not self.done:
            self.abandon("failed")
