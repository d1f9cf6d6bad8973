"""HTTP/2 frames (RFC 9113 §4, §6): splitting a byte stream into frames and writing frames.

Exactly what a relay needs and no more: a frame is a tuple `(type, flags, stream_id, payload)`
with the payload still raw; the connection (`conn`) interprets it. No frame objects, no
per-frame allocation beyond the payload slice, so the compiled build runs it at C speed.

Invariants:
- `split` never returns a frame longer than the limit it is given (FRAME_SIZE_ERROR instead),
  and never consumes a partial frame: what is left over is returned for the next read;
- the reserved bit of a stream identifier is ignored on receipt and never set on sending;
- every serialiser returns complete frames, HEADERS blocks split into CONTINUATION frames at
  the peer's SETTINGS_MAX_FRAME_SIZE.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct

__all__ = [
    "ACK",
    "CONTINUATION",
    "DATA",
    "END_HEADERS",
    "END_STREAM",
    "GOAWAY",
    "HEADERS",
    "PADDED",
    "PING",
    "PRIORITY",
    "PRIORITY_FLAG",
    "PUSH_PROMISE",
    "RST_STREAM",
    "SETTINGS",
    "WINDOW_UPDATE",
    "FrameError",
    "data",
    "frame",
    "goaway",
    "header",
    "headers",
    "parse_goaway",
    "parse_settings",
    "ping",
    "rst_stream",
    "settings",
    "split",
    "strip_padding",
    "window_update",
]

DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Error codes (RFC 9113 §7).
PROTOCOL_ERROR = 0x1
FRAME_SIZE_ERROR = 0x6

Frame = tuple[int, int, int, bytes]

# The 9-byte frame header: a 24-bit length (as a high byte and a 16-bit rest), type, flags,
# a 31-bit stream identifier. One struct call packs or reads it whole.
_HEADER = struct.Struct(">BHBBI")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


class FrameError(Exception):
    """A frame the peer should not have sent; `code` is the RFC 9113 error code to answer
    with (a connection error: GOAWAY)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def split(buf: bytes, max_size: int) -> tuple[list[Frame], bytes]:
    """The complete frames at the start of `buf` and the bytes after them.

    A frame header announcing more than `max_size` payload bytes is a FRAME_SIZE_ERROR as
    soon as the header is seen: its payload is never buffered."""
    frames: list[Frame] = []
    pos = 0
    end = len(buf)
    while end - pos >= 9:
        high, low, ftype, flags, sid = _unpack_header(buf, pos)
        length = (high << 16) | low
        if length > max_size:
            raise FrameError(FRAME_SIZE_ERROR,
                             f"a frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE")
        stop = pos + 9 + length
        if stop > end:
            break
        frames.append((ftype, flags, sid & 0x7FFFFFFF, buf[pos + 9 : stop]))
        pos = stop
    return frames, (buf[pos:] if pos else buf)


def strip_padding(flags: int, payload: bytes) -> bytes:
    """The content of a DATA or HEADERS payload without its padding (RFC 9113 §6.1)."""
    if not flags & PADDED:
        return payload
    if not payload:
        raise FrameError(PROTOCOL_ERROR, "a padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise FrameError(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """The (identifier, value) pairs of a SETTINGS payload, in order."""
    if len(payload) % 6:
        raise FrameError(FRAME_SIZE_ERROR, "a SETTINGS payload is a multiple of 6 bytes")
    return [(int.from_bytes(payload[i : i + 2], "big"), int.from_bytes(payload[i + 2 : i + 6], "big"))
            for i in range(0, len(payload), 6)]


def parse_goaway(payload: bytes) -> tuple[int, int, bytes]:
    """(last stream id, error code, debug data) of a GOAWAY payload."""
    if len(payload) < 8:
        raise FrameError(FRAME_SIZE_ERROR, "a GOAWAY payload has at least 8 bytes")
    last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
    return last, int.from_bytes(payload[4:8], "big"), payload[8:]


def header(ftype: int, flags: int, sid: int, length: int) -> bytes:
    """The 9-byte header of a frame whose payload has `length` bytes (to be written after it:
    a large DATA payload is then copied once, when the connection joins its output)."""
    return _pack_header(length >> 16, length & 0xFFFF, ftype, flags, sid & 0x7FFFFFFF)


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    """One frame of any type."""
    length = len(payload)
    return _pack_header(length >> 16, length & 0xFFFF, ftype, flags, sid & 0x7FFFFFFF) + payload


def data(sid: int, payload: bytes, end_stream: bool) -> bytes:
    return frame(DATA, END_STREAM if end_stream else 0, sid, payload)


def headers(sid: int, block: bytes, end_stream: bool, max_size: int) -> bytes:
    """A header block as HEADERS plus as many CONTINUATION frames as `max_size` needs."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_size:
        return frame(HEADERS, flags | END_HEADERS, sid, block)
    out = [frame(HEADERS, flags, sid, block[:max_size])]
    pos = max_size
    while pos < len(block):
        piece = block[pos : pos + max_size]
        pos += max_size
        out.append(frame(CONTINUATION, END_HEADERS if pos >= len(block) else 0, sid, piece))
    return b"".join(out)


def rst_stream(sid: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, sid, code.to_bytes(4, "big"))


def settings(pairs: list[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big")
                                          for k, v in pairs))


def settings_ack() -> bytes:
    return b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def ping(payload: bytes, ack: bool) -> bytes:
    return frame(PING, ACK if ack else 0, 0, payload)


def goaway(last_sid: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, (last_sid & 0x7FFFFFFF).to_bytes(4, "big")
                 + code.to_bytes(4, "big") + debug)


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, increment.to_bytes(4, "big"))
