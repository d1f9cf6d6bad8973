"""Moving DATA from one HTTP/2 connection to another within both sides' limits.

A `Pipe` carries one direction of one proxied stream. It holds what arrived from its source
until the destination's flow-control window and socket allow sending it, and acknowledges
bytes to the source only once they left for the destination: the source can never have more
than one window of data in flight through the proxy, so buffers stay bounded without a
separate byte limit.

A `Hub` collects the connections whose protocol state (`conn.H2Conn`) has bytes to write. Socket
callbacks flush it when they are done, so the frames one read produces on both sides leave in
one syscall per socket; any other path that produces frames (timers, connect completions) is
covered by a flush scheduled for the end of the loop iteration. A read callback sets
`scheduled` itself while it runs (its own flush at the end covers what it marks), so a read
never leaves a useless ready callback behind: that would cost the loop another turn (an extra
`epoll_wait`) per read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Protocol

from forklane.proxy.http2.conn import H2Conn, H2Error

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Hub", "Peer", "Pipe", "Waiter"]


class Waiter(Protocol):
    """Something that sends on a peer and waits for its window or socket (a pipe, a mirror)."""

    def pump(self) -> None: ...


class Peer:
    """One HTTP/2 connection (client- or server-facing) and its transport."""

    h2: H2Conn  # set by the subclass

    def __init__(self, hub: Hub) -> None:
        # Every field set here rather than as a class default: the compiled build makes Peer
        # a C struct (`_flow.pxd`), whose fields have no class-level defaults.
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.write_paused = False
        self.dirty = False
        self.sent_bytes = 0  # written to the transport so far (the flood guard's measure of work)
        self.blocked: set[Waiter] = set()  # pipes waiting for this peer's window or socket

    def mark(self) -> None:
        """This connection has frames to write: at the latest when this iteration ends."""
        _mark(self)

    def unblock(self) -> None:
        """The window grew or the socket drained: let waiting pipes send again."""
        if self.blocked and not self.write_paused:
            blocked = tuple(self.blocked)
            self.blocked.clear()
            for pipe in blocked:
                pipe.pump()


def _mark(peer: Peer) -> None:
    """`Peer.mark`, as a function: the pipes call it directly in the compiled build (a method
    call on a subclass instance would first look the method up, to honour overrides)."""
    if not peer.dirty:
        peer.dirty = True
        hub = peer.hub
        hub.dirty.append(peer)
        if not hub.scheduled:
            hub.scheduled = True
            hub.loop.call_soon(hub.flush)


class Hub:
    """Connections with pending frames (see the module docstring)."""

    __slots__ = ("dirty", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[Peer] = []
        self.scheduled = False

    def flush(self) -> None:
        self.scheduled = False
        dirty = self.dirty
        while dirty:
            peer = dirty.pop()
            peer.dirty = False
            data = peer.h2.data_to_send()
            transport = peer.transport
            if data and transport is not None and not transport.is_closing():
                peer.sent_bytes += len(data)
                transport.write(data)


class Pipe:
    """One direction of one stream: source stream → destination stream."""

    __slots__ = ("chunks", "done", "dst", "dst_sid", "ended", "on_done", "sent", "src",
                 "src_sid", "trailers")

    def __init__(self, src: Peer | None, src_sid: int, on_done: Callable[[], None]) -> None:
        self.src = src
        self.src_sid = src_sid
        self.dst: Peer | None = None
        self.dst_sid = 0
        self.chunks: deque[bytes] = deque()
        self.ended = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.done = False  # the end of the stream was sent (or the pipe was discarded)
        self.sent = 0  # DATA bytes handed to the destination
        self.on_done = on_done

    def bind(self, dst: Peer, dst_sid: int) -> None:
        self.dst = dst
        self.dst_sid = dst_sid
        self.pump()

    def push(self, data: bytes, flow_len: int) -> None:
        if self.done:
            self.ack(flow_len)
            return
        if flow_len > len(data):
            self.ack(flow_len - len(data))  # padding is never forwarded
        if data:
            self.chunks.append(data)
            self.pump()

    def finish(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        if self.ended:
            return
        self.ended = True
        self.trailers = trailers
        self.pump()

    def ack(self, size: int) -> None:
        src = self.src
        if src is None or size <= 0:
            return
        src.h2.ack(size, self.src_sid)
        _mark(src)

    def discard(self) -> None:
        """The stream ended abnormally: give the source its window back, drop the rest."""
        self.done = True
        pending = sum(len(c) for c in self.chunks)
        self.chunks.clear()
        self.ack(pending)
        if self.dst is not None:
            self.dst.blocked.discard(self)

    def pump(self) -> None:
        dst = self.dst
        if dst is None or self.done:
            return
        if dst.write_paused:
            dst.blocked.add(self)
            return
        h2 = dst.h2
        sid = self.dst_sid
        chunks = self.chunks
        try:
            while chunks:
                window = h2.window(sid)
                if window <= 0:
                    dst.blocked.add(self)
                    _mark(dst)
                    return
                data = chunks[0]
                size = min(window, h2.max_outbound_frame_size)
                if len(data) <= size:
                    chunks.popleft()
                    piece = data
                else:
                    piece = data[:size]
                    chunks[0] = data[size:]
                last = not chunks and self.ended and self.trailers is None
                h2.send_data(sid, piece, end_stream=last)
                self.sent += len(piece)
                self.ack(len(piece))
                if last:
                    self.done = True
            if self.ended and not self.done:
                self.done = True
                if self.trailers is not None:
                    h2.send_headers(sid, self.trailers, end_stream=True)
                else:
                    h2.end_stream(sid)
        except H2Error:
            # The destination stream was reset or its connection is going: the owner hears
            # about that through its own event; here only the source's window matters.
            self.discard()
            return
        _mark(dst)
        if self.done:
            self.on_done()
