"""Shadow copies of requests (mirroring): sent, answered, and thrown away.

A mirror must never slow or fail the caller. So a copy has its own upstream connection, a
bounded buffer while that connection opens, and no backpressure path to the client: the
moment the mirror would need the caller to wait (its buffer is full, its socket is
congested, its deadline passes) the copy is abandoned and counted, and the caller carries on.

A copy opens its connection the way requests do (`Pools.open`), is counted in the listener's
rows by the same function (`forward.accounting.count_row`, destination kind `mirror`), and its
deadline is enforced by the listener's sweep (`ListenerContext.watch`), not a timer of its own.
"""

from __future__ import annotations

from forklane.proxy.forward.accounting import count_row
from forklane.proxy.http1.head import ResponseHead
from forklane.proxy.http1.upstream import ResponseSink, UpstreamConnection
from forklane.proxy.listener.context import ListenerContext
from forklane.proxy.table import Destination, Endpoint

__all__ = ["MIRROR_HEADER", "MirrorCopy"]

_BUFFER_LIMIT = 256 * 1024
MIRROR_HEADER = b"x-forklane-mirror: 1\r\n"


class MirrorCopy(ResponseSink):
    __slots__ = ("chunked", "conn", "ctx", "deadline", "dest", "done", "is_head", "pending",
                 "pending_bytes", "req_done", "stat_key")

    def __init__(
        self,
        ctx: ListenerContext,
        dest: Destination,
        head: bytes,
        chunked: bool,
        is_head: bool,
        service: str,
    ) -> None:
        self.ctx = ctx
        self.stat_key = f"{service}\x1fmirror"  # forklane_requests_total{kind="mirror"}
        self.is_head = is_head
        self.dest = dest
        self.chunked = chunked
        # The mirror header goes right after the request line.
        line_end = head.index(b"\r\n") + 2
        self.pending: list[bytes] | None = [head[:line_end], MIRROR_HEADER, head[line_end:]]
        self.pending_bytes = len(head)
        self.conn: UpstreamConnection | None = None
        self.req_done = False
        self.done = False
        self.deadline = ctx.clock.now + dest.timeouts.request
        ctx.watch(self)

    def start(self) -> None:
        ctx = self.ctx
        endpoint = ctx.balancer.pick(self.dest)
        conn = ctx.pools.take(endpoint.address)
        if conn is not None:
            self._bind(conn)
        else:
            ctx.spawn(self._open(endpoint))

    async def _open(self, endpoint: Endpoint) -> None:
        try:
            conn = await self.ctx.pools.open(endpoint, self.dest.timeouts.connect)
        except (OSError, TimeoutError):
            self.abandon("connect-failed")
            return
        if self.done:
            conn.close()
            return
        self._bind(conn)

    def _bind(self, conn: UpstreamConnection) -> None:
        transport = conn.transport
        if transport is None:
            self.abandon("connect-failed")
            return
        self.conn = conn
        conn.attach(self, head_request=self.is_head)
        pending, self.pending = self.pending, None
        assert pending is not None
        transport.writelines(pending)
        if self.req_done and self.chunked:
            transport.write(b"0\r\n\r\n")
        self.ctx.stats.mirror["sent"] += 1

    def send_body(self, data: bytes) -> None:
        if self.done:
            return
        chunk = (b"%x\r\n" % len(data)) + data + b"\r\n" if self.chunked else data
        if self.pending is not None:
            self.pending_bytes += len(chunk)
            if self.pending_bytes > _BUFFER_LIMIT:
                self.abandon("dropped")
                return
            self.pending.append(chunk)
            return
        conn = self.conn
        if conn is None or conn.transport is None:
            return
        conn.transport.write(chunk)
        if conn.transport.get_write_buffer_size() > _BUFFER_LIMIT:
            self.abandon("dropped")

    def send_end(self) -> None:
        self.req_done = True
        if self.done or self.pending is not None or not self.chunked:
            return
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.write(b"0\r\n\r\n")

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
            conn.abort()

    def _end(self) -> None:
        self.done = True
        self.ctx.watched.discard(self)

    # -- ResponseSink: the answer is read and discarded --------------------------------------

    def response_interim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        pass

    def response_head(
        self, conn: UpstreamConnection, status: int, reason: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.ctx.stats.mirror["answered"] += 1
        count_row(self.ctx.rows, self.stat_key, status)

    def response_head_raw(self, conn: UpstreamConnection, head: ResponseHead) -> None:
        self.ctx.stats.mirror["answered"] += 1
        count_row(self.ctx.rows, self.stat_key, head.status)

    def response_body(self, data: bytes) -> None:
        pass

    def response_end(self, conn: UpstreamConnection, trailers: list[tuple[bytes, bytes]]) -> None:
        self._end()
        self.conn = None
        if conn.keep_alive and self.req_done:
            self.ctx.pools.give_back(conn)
        else:
            conn.close()

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        self.conn = None
        if not self.done:
            self.abandon("failed")

    def upstream_pause(self, paused: bool) -> None:
        if paused:
            self.abandon("dropped")

    def upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        self.abandon("failed")

    def cork(self) -> None:
        pass

    def uncork(self) -> None:
        pass
