"""Shadow copies of requests (mirroring): sent, answered, and thrown away.

A mirror must never slow or fail the caller. So a copy has its own upstream connection, a
bounded buffer while that connection opens, and no backpressure path to the client: the
moment the mirror would need the caller to wait (its buffer is full, its socket is
congested, its deadline passes) the copy is abandoned and counted, and the caller carries on.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from forklane.proxy.http1.upstream import UpstreamConnection
from forklane.proxy.table import Destination

if TYPE_CHECKING:
    from forklane.proxy.http1.server import ListenerContext

__all__ = ["MirrorCopy"]

_BUFFER_LIMIT = 256 * 1024
MIRROR_HEADER = b"x-forklane-mirror: 1\r\n"


class MirrorCopy:
    __slots__ = ("chunked", "conn", "ctx", "dest", "done", "is_head", "pending", "pending_bytes",
                 "req_done", "stat_key", "timer")

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
        # The mirror header goes right after the request line's headers start.
        line_end = head.index(b"\r\n") + 2
        self.pending: list[bytes] | None = [head[:line_end], MIRROR_HEADER, head[line_end:]]
        self.pending_bytes = len(head)
        self.conn: UpstreamConnection | None = None
        self.req_done = False
        self.done = False
        self.timer: asyncio.TimerHandle | None = ctx.loop.call_later(
            dest.timeouts.request, self.abandon, "timeout"
        )

    def start(self) -> None:
        ctx = self.ctx
        endpoint = ctx.balancer.pick(self.dest)
        conn = ctx.pools.take(endpoint.address)
        if conn is not None:
            self._bind(conn)
        else:
            ctx.spawn(self._open(endpoint.host, endpoint.port, endpoint.address))

    async def _open(self, host: str, port: int, address: str) -> None:
        ctx = self.ctx
        try:
            async with asyncio.timeout(self.dest.timeouts.connect):
                _, conn = await ctx.loop.create_connection(
                    lambda: UpstreamConnection(ctx.pools, address), host, port
                )
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

    def abandon(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        self.ctx.stats.mirror[reason] += 1
        self._count(0)  # counted as "reset": the copy got no answer
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    # -- ResponseSink: the answer is read and discarded --------------------------------------

    def response_interim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        pass

    def response_head(
        self, conn: UpstreamConnection, status: int, reason: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.ctx.stats.mirror["answered"] += 1
        self._count(status)

    def _count(self, status: int) -> None:
        rows = self.ctx.rows
        row = rows.get(self.stat_key)
        if row is None:
            row = rows[self.stat_key] = [0, 0, 0, 0, 0, 0]
        row[status // 100 if status < 600 else 5] += 1

    def response_body(self, data: bytes) -> None:
        pass

    def response_end(self, conn: UpstreamConnection, trailers: list[tuple[bytes, bytes]]) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
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
