"""Streams of the tunnel over one message channel, each bridged to one TCP connection.

Both ends of `forklane connect` use this: it is handed `send` (one binary message out) and
fed every binary message received (`handle`), so it knows nothing of the WebSocket library
on either side. Bytes read from a socket leave as DATA within the stream's credit; DATA
received is written to the socket and credited back once the socket took it (after
`drain`), so a slow reader on one end slows the writer on the other, stream by stream, and
a stream never holds more than `INITIAL_CREDIT` bytes per direction in memory.

When a stream fails (the peer reset it, or the channel went away: `fail_all`) the socket is
answered by `failure` when it gives an answer (the control plane's end writes a 503 for an
HTTP/1.x request whose answer had not begun), and reset otherwise. Nothing here waits
without an end: every wait is on the socket, the channel, or credit the peer owes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from forklane.controlplane.tunnel.frames import (
    CREDIT,
    DATA,
    END,
    OPEN,
    RESET,
    FrameError,
    StreamBook,
    decode,
    encode,
    encode_credit,
)

__all__ = ["Failure", "Mux", "StreamView"]

log = logging.getLogger("forklane.tunnel")

Send = Callable[[bytes], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class _Reset:
    reason: str
    local: bool = False  # our own socket failed: nothing to answer on it


class StreamView:
    """What is known of one stream when it fails: the first bytes our socket sent, and
    whether the last bytes moved towards the peer (a request waiting for its answer)."""

    __slots__ = ("credit", "first", "inbox", "received", "spoke", "waiting")

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | _Reset | None] = asyncio.Queue()
        self.credit = asyncio.Event()
        self.spoke = asyncio.Event()  # our socket sent its first bytes (or its EOF)
        self.first = b""
        self.received = 0
        self.waiting = False


Failure = Callable[[StreamView, str], bytes | None]


class Mux:
    def __init__(self, send: Send, *, opener: bool,
                 on_open: Callable[[int, str], None] | None = None) -> None:
        self.book = StreamBook(opener)
        self._send = send
        self._on_open = on_open
        self._streams: dict[int, StreamView] = {}
        self.closed: str | None = None  # why the channel is gone, once it is

    @property
    def streams(self) -> int:
        return len(self._streams)

    def open(self) -> int:
        """A new stream (the opener's side); `bridge(..., service=…)` announces it."""
        if self.closed is not None:
            raise FrameError(self.closed)
        sid = self.book.open()
        self._streams[sid] = StreamView()
        return sid

    def handle(self, message: bytes) -> None:
        """One binary message from the peer. FrameError: close the channel with its text."""
        frame = self.book.receive(decode(message))
        if frame is None:
            return
        if frame.kind == OPEN:
            self._streams[frame.stream] = StreamView()
            if self._on_open is not None:
                self._on_open(frame.stream, frame.text)
            return
        view = self._streams.get(frame.stream)
        if view is None:
            return
        if frame.kind == DATA:
            view.received += len(frame.payload)
            view.waiting = False
            view.inbox.put_nowait(frame.payload)
        elif frame.kind == END:
            view.inbox.put_nowait(None)
        elif frame.kind == RESET:
            view.inbox.put_nowait(_Reset(frame.text or "reset by the other end"))
            view.credit.set()
        elif frame.kind == CREDIT:
            view.credit.set()

    def fail_all(self, reason: str) -> None:
        """The channel is gone: every stream fails with `reason`."""
        if self.closed is None:
            self.closed = reason
        for sid, view in list(self._streams.items()):
            self.book.reset(sid)
            view.inbox.put_nowait(_Reset(reason))
            view.credit.set()

    async def _emit(self, message: bytes) -> bool:
        if self.closed is not None:
            return False
        try:
            await self._send(message)
        except (ConnectionError, RuntimeError, OSError) as exc:
            self.fail_all(f"the tunnel closed ({type(exc).__name__})")
            return False
        return True

    async def reset(self, sid: int, reason: str) -> None:
        """Refuse or end a stream from this side (e.g. the local service refused it)."""
        view = self._streams.get(sid)
        if self.book.reset(sid):
            await self._emit(encode(RESET, sid, reason.encode()[:500]))
        if view is not None:
            view.inbox.put_nowait(_Reset(reason, local=True))
            view.credit.set()
        self._streams.pop(sid, None)

    async def bridge(self, sid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     *, service: str | None = None, failure: Failure | None = None) -> None:
        """Carry stream `sid` to and from one TCP connection until both directions ended or
        either side reset it. The opener passes `service` to send OPEN first."""
        view = self._streams.get(sid)
        if view is None:
            writer.transport.abort()
            return
        if service is not None and not await self._emit(encode(OPEN, sid, service.encode())):
            view.inbox.put_nowait(_Reset(self.closed or "the tunnel closed"))
        out = asyncio.create_task(self._outgoing(sid, view, reader), name=f"tunnel-out-{sid}")
        try:
            if await self._incoming(sid, view, writer, failure):
                # the peer ended its side; ours may still send until its EOF, unless the
                # stream is reset meanwhile
                later = asyncio.create_task(view.inbox.get(), name=f"tunnel-end-{sid}")
                try:
                    await asyncio.wait({out, later}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    later.cancel()
                if not out.done():
                    writer.transport.abort()
        finally:
            out.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await out
            if self.book.reset(sid):
                await self._emit(encode(RESET, sid, b"closed"))
            self._streams.pop(sid, None)
            if not writer.transport.is_closing():
                writer.close()

    async def _outgoing(self, sid: int, view: StreamView, reader: asyncio.StreamReader) -> None:
        """Socket → peer, within the credit the peer grants."""
        while True:
            room = self.book.sendable(sid)
            while room == 0:
                if not self.book.live(sid) or self.closed is not None:
                    await self._sniff(view, reader)
                    return
                view.credit.clear()
                room = self.book.sendable(sid)
                if room == 0:
                    await view.credit.wait()
                    room = self.book.sendable(sid)
            try:
                data = await reader.read(room)
            except (OSError, ConnectionError) as exc:
                view.spoke.set()
                await self.reset(sid, f"connection reset on the other end ({exc})")
                return
            if data and not view.first:
                view.first = data[:32]
                view.waiting = True
            view.spoke.set()
            if not self.book.live(sid) or self.closed is not None:
                return
            if not data:
                if await self._emit(encode(END, sid)):
                    self.book.ended(sid)
                return
            view.waiting = True
            self.book.sent(sid, len(data))
            if not await self._emit(encode(DATA, sid, data)):
                return

    @staticmethod
    async def _sniff(view: StreamView, reader: asyncio.StreamReader) -> None:
        """The stream failed before our socket spoke: read its first bytes (for a moment),
        so the failure answer can tell a waiting HTTP/1.x request from anything else."""
        if not view.first:
            with contextlib.suppress(TimeoutError, OSError, ConnectionError):
                async with asyncio.timeout(1.0):
                    data = await reader.read(32)
                    if data:
                        view.first, view.waiting = data, True
        view.spoke.set()

    async def _incoming(self, sid: int, view: StreamView, writer: asyncio.StreamWriter,
                        failure: Failure | None) -> bool:
        """Peer → socket. True when the peer ended its side; False when the stream failed."""
        while True:
            item = await view.inbox.get()
            if isinstance(item, _Reset):
                if not item.local and failure is not None and not view.first:
                    # a connection that has not spoken yet (a request on its way): give it a
                    # moment, so it gets an answer rather than a reset
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await view.spoke.wait()
                answer = None if item.local or failure is None else failure(view, item.reason)
                if answer:
                    with contextlib.suppress(OSError, ConnectionError):
                        writer.write(answer)
                        writer.close()
                else:
                    writer.transport.abort()
                return False
            if item is None:
                with contextlib.suppress(OSError, ConnectionError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return True
            try:
                writer.write(item)
                await writer.drain()
            except (OSError, ConnectionError) as exc:
                await self.reset(sid, f"connection reset on the other end ({exc})")
                writer.transport.abort()
                return False
            if self.book.granted(sid, len(item)):
                await self._emit(encode_credit(sid, len(item)))
