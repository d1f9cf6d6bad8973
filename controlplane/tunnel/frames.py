"""The tunnel's wire format and the per-stream flow-control state. Pure: no I/O.

`forklane connect` and the control plane talk over one WebSocket. Every binary message is
one frame: a type byte, a stream id (4 bytes, big endian), and a payload. Text messages are
JSON control messages (`ready`, `withdraw`, `withdrawn`), see `control()`.

A stream is one TCP connection: the control plane opens one (`OPEN`, payload the service
name) for each connection a proxy makes to a fork's tunnel endpoint, and the developer's
machine opens a connection to the local service for it. Bytes flow both ways as `DATA`;
`END` is a half-close; `RESET` ends the stream at once, with a reason; `CREDIT` grants the
peer more bytes of `DATA` on a stream.

Invariants (checked by `StreamBook.receive`; a breach is a `FrameError` whose text is the
WebSocket close reason):
- only the control plane opens streams, with increasing ids starting at 1, at most
  `MAX_STREAMS` at once;
- a side never sends more `DATA` on a stream than the credit the other side granted
  (`INITIAL_CREDIT`, plus every `CREDIT`), so what one stream holds in memory is bounded;
- frames for a stream that already ended (a race with a reset) are ignored, frames for a
  stream that never existed are a protocol error.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CREDIT",
    "DATA",
    "END",
    "INITIAL_CREDIT",
    "MAX_DATA",
    "MAX_MESSAGE",
    "MAX_STREAMS",
    "OPEN",
    "RESET",
    "Frame",
    "FrameError",
    "StreamBook",
    "control",
    "decode",
    "encode",
    "encode_credit",
    "parse_control",
]

OPEN, DATA, END, RESET, CREDIT = 1, 2, 3, 4, 5
_NAMES = {OPEN: "OPEN", DATA: "DATA", END: "END", RESET: "RESET", CREDIT: "CREDIT"}
_HEADER = struct.Struct("!BI")
_U32 = struct.Struct("!I")
MAX_DATA = 64 * 1024  # payload of one DATA frame
MAX_MESSAGE = _HEADER.size + MAX_DATA
INITIAL_CREDIT = 256 * 1024  # per stream and direction
MAX_CREDIT = 2**31 - 1
MAX_STREAMS = 1024
MAX_TEXT = 512  # service names and reset reasons


class FrameError(Exception):
    """The peer broke the protocol; the text says how (it becomes the close reason)."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    stream: int
    payload: bytes = b""

    @property
    def text(self) -> str:
        """The payload of OPEN (service) and RESET (reason) as text."""
        return self.payload.decode("utf-8", "replace")

    @property
    def credit(self) -> int:
        return int(_U32.unpack(self.payload)[0])


def encode(kind: int, stream: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, stream) + payload


def encode_credit(stream: int, amount: int) -> bytes:
    return encode(CREDIT, stream, _U32.pack(amount))


def decode(message: bytes) -> Frame:
    """One binary message → a frame whose shape is valid (its place in a stream is checked
    by `StreamBook.receive`)."""
    if len(message) < _HEADER.size:
        raise FrameError(f"frame of {len(message)} bytes is shorter than its 5-byte header")
    kind, stream = _HEADER.unpack_from(message)
    payload = bytes(message[_HEADER.size:])
    name = _NAMES.get(kind)
    if name is None:
        raise FrameError(f"unknown frame type {kind}")
    if stream == 0:
        raise FrameError(f"{name} on stream 0 (stream ids start at 1)")
    if kind == DATA and not 0 < len(payload) <= MAX_DATA:
        raise FrameError(f"DATA of {len(payload)} bytes (1..{MAX_DATA} allowed)")
    if kind == END and payload:
        raise FrameError("END carries no payload")
    if kind == CREDIT:
        if len(payload) != _U32.size:
            raise FrameError(f"CREDIT payload of {len(payload)} bytes (4 expected)")
        if _U32.unpack(payload)[0] == 0:
            raise FrameError("CREDIT of 0 bytes")
    if kind in (OPEN, RESET):
        if len(payload) > MAX_TEXT:
            raise FrameError(f"{name} text longer than {MAX_TEXT} bytes")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(f"{name} text is not UTF-8") from None
        if kind == OPEN and not text:
            raise FrameError("OPEN without a service name")
    return Frame(kind, stream, payload)


def control(kind: str, **fields: Any) -> str:
    """A control message (a WebSocket text message)."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def parse_control(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        raise FrameError("control message is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise FrameError("control message without a type")
    return doc


@dataclass(slots=True)
class _State:
    send_credit: int = INITIAL_CREDIT  # bytes we may still send
    recv_credit: int = INITIAL_CREDIT  # bytes the peer may still send
    local_ended: bool = False
    remote_ended: bool = False


@dataclass(slots=True)
class StreamBook:
    """Which streams are open and how much each side may still send on each.

    `opener` is the side that opens streams (the control plane). `receive()` checks a frame
    from the peer and updates the book: it returns the frame to act on, None for a frame to
    ignore (its stream already ended), or raises `FrameError`."""

    opener: bool
    streams: dict[int, _State] = field(default_factory=dict)
    last_id: int = 0  # the highest stream id opened so far (by either side's count)

    def open(self) -> int:
        """A new stream id (the opener only)."""
        if not self.opener:
            raise FrameError("this side does not open streams")
        if len(self.streams) >= MAX_STREAMS:
            raise FrameError(f"more than {MAX_STREAMS} streams at once")
        self.last_id += 1
        self.streams[self.last_id] = _State()
        return self.last_id

    def receive(self, frame: Frame) -> Frame | None:
        name = _NAMES[frame.kind]
        sid = frame.stream
        if frame.kind == OPEN:
            if self.opener:
                raise FrameError("OPEN from the side that does not open streams")
            if sid <= self.last_id:
                raise FrameError(f"OPEN of stream {sid} after stream {self.last_id}: ids must "
                                 "increase")
            if len(self.streams) >= MAX_STREAMS:
                raise FrameError(f"more than {MAX_STREAMS} streams at once")
            self.last_id = sid
            self.streams[sid] = _State()
            return frame
        state = self.streams.get(sid)
        if state is None:
            if sid <= self.last_id:
                return None  # ended here already (a reset crossing this frame)
            raise FrameError(f"{name} on stream {sid}, which was never opened")
        if frame.kind == DATA:
            if state.remote_ended:
                raise FrameError(f"DATA on stream {sid} after its END")
            if len(frame.payload) > state.recv_credit:
                raise FrameError(f"stream {sid} sent {len(frame.payload)} bytes with "
                                 f"{state.recv_credit} bytes of credit left")
            state.recv_credit -= len(frame.payload)
        elif frame.kind == END:
            if state.remote_ended:
                raise FrameError(f"second END on stream {sid}")
            state.remote_ended = True
            self._forget_if_done(sid, state)
        elif frame.kind == RESET:
            del self.streams[sid]
        elif frame.kind == CREDIT:
            if state.send_credit + frame.credit > MAX_CREDIT:
                raise FrameError(f"stream {sid} credit above {MAX_CREDIT} bytes")
            state.send_credit += frame.credit
        return frame

    # -- what this side does ---------------------------------------------------------------
    def sendable(self, sid: int) -> int:
        """How many bytes of DATA this side may send on `sid` now (0: wait for CREDIT)."""
        state = self.streams.get(sid)
        return 0 if state is None or state.local_ended else min(state.send_credit, MAX_DATA)

    def sent(self, sid: int, size: int) -> None:
        state = self.streams[sid]
        if size > state.send_credit:
            raise ValueError(f"{size} bytes exceed the credit of stream {sid}")
        state.send_credit -= size

    def granted(self, sid: int, size: int) -> bool:
        """Record credit given back to the peer; False when the stream is gone (send nothing)."""
        state = self.streams.get(sid)
        if state is None:
            return False
        state.recv_credit += size
        return True

    def ended(self, sid: int) -> None:
        """This side sent END."""
        state = self.streams.get(sid)
        if state is not None:
            state.local_ended = True
            self._forget_if_done(sid, state)

    def reset(self, sid: int) -> bool:
        """This side sent (or will send) RESET; False when the stream was gone already."""
        return self.streams.pop(sid, None) is not None

    def live(self, sid: int) -> bool:
        return sid in self.streams

    def _forget_if_done(self, sid: int, state: _State) -> None:
        if state.local_ended and state.remote_ended:
            del self.streams[sid]
