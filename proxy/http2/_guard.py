"""Frame-level defences of a downstream HTTP/2 connection, applied before the codec sees a byte.

A codec processes every frame it is handed in one call, so one read full of tiny frames
(SETTINGS, PING, empty DATA, CONTINUATION…) can hold the event loop for seconds while every
other client waits. `FrameGuard` reads only frame headers (9 bytes each, payloads skipped) and
decides three things per read:

- **how much to hand over now**: at most `frames_per_turn` frames (a HEADERS frame counts four:
  it opens a stream); the rest waits for a later
  loop iteration (the owner pauses reading meanwhile), so one connection never holds the loop
  for more than a few milliseconds;
- **whether the peer floods**: control frames (SETTINGS, PING, PRIORITY, WINDOW_UPDATE,
  RST_STREAM, GOAWAY, and DATA/HEADERS/CONTINUATION frames with an empty payload that end
  nothing) are counted with exponential decay (time constant `window` seconds) against a budget
  that grows with useful work: streams opened and bytes sent to the peer, as Envoy ties its
  PRIORITY and WINDOW_UPDATE limits to streams and DATA frames sent;
- **whether a frame or header block is too large**: a frame longer than our
  SETTINGS_MAX_FRAME_SIZE is refused as soon as its header shows it (never buffered), and a
  header block (HEADERS + CONTINUATION) larger than `max_header_block` bytes is a CONTINUATION
  flood.

A violation is reported once, as a value; the owner answers GOAWAY(ENHANCE_YOUR_CALM) or
GOAWAY(FRAME_SIZE_ERROR) and closes. `AbuseMemory` remembers abusive peers by address for a
while, so reconnecting does not reset the Rapid Reset budget or the flood budget.

Pure: no sockets, no codec, no clock of its own (times are passed in).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from forklane.proxy.listener.handoff import PREFACE

__all__ = ["PREFACE", "AbuseMemory", "FloodLimits", "FrameGuard", "Violation"]


# Frame types (RFC 9113 §6) and the flags the guard reads.
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY, \
    _WINDOW_UPDATE, _CONTINUATION = range(10)
_END_STREAM = 0x1
_END_HEADERS = 0x4
_HEADERS_WEIGHT = 4
_CONTROL_TYPES = frozenset({_PRIORITY, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE})


@dataclass(frozen=True, slots=True)
class FloodLimits:
    """Budgets of one connection. Defaults follow Envoy's and nginx's orders of magnitude."""

    max_frame_size: int = 16384  # our SETTINGS_MAX_FRAME_SIZE
    max_header_block: int = 2 * 60 * 1024 + 16384  # HEADERS + CONTINUATION bytes per block
    frames_per_turn: int = 64  # frames handed to the codec per event-loop iteration
    window: float = 10.0  # seconds: time constant of the decaying counters
    control_base: float = 1000.0  # control frames allowed per window with no useful work
    control_per_stream: float = 20.0  # … plus this many per stream opened
    control_per_16k_sent: float = 10.0  # … plus this many per 16 KiB sent to the peer


@dataclass(frozen=True, slots=True)
class Violation:
    """Why the connection must end: a metric label and the GOAWAY error code to send."""

    reason: str  # "h2-control-flood", "h2-header-block-too-large", "h2-frame-too-large"
    error_code: int  # 0xB ENHANCE_YOUR_CALM, 0x6 FRAME_SIZE_ERROR
    detail: str


_CALM = 0xB
_FRAME_SIZE = 0x6


class FrameGuard:
    """Scans one connection's inbound bytes frame by frame (see the module docstring)."""

    __slots__ = ("_block", "_control", "_hdr", "_last", "_limits", "_preface", "_remaining",
                 "_sent", "_sent_seen", "_streams")

    def __init__(self, limits: FloodLimits, now: float, strikes: int = 0) -> None:
        self._limits = limits
        self._preface = len(PREFACE)  # bytes of the client preface still to pass unparsed
        self._hdr = b""  # a frame header split across reads
        self._remaining = 0  # payload bytes of the current frame still to skip
        self._block = -1  # bytes of the header block under way; -1: none open
        # Decaying counters (see `_decay`). A peer remembered as abusive starts with its
        # budget already spent, proportionally to how often it was caught.
        self._control = limits.control_base * min(strikes, 1) * 0.99
        self._streams = 0.0
        self._sent = 0.0
        self._sent_seen = 0
        self._last = now

    def scan(self, data: bytes, now: float, sent_total: int = 0) -> tuple[int, Violation | None]:
        """Scan `data` (the next bytes from the peer). `sent_total` is how many bytes the
        connection has written to the peer so far (useful work that earns budget).

        Returns how many bytes of `data` may go to the codec in this turn, and the violation
        that ends the connection, if any. Bytes after the returned count were not scanned:
        pass them again later."""
        self._decay(now)
        if sent_total > self._sent_seen:
            self._sent += sent_total - self._sent_seen
            self._sent_seen = sent_total
        limits = self._limits
        pos = 0
        size = len(data)
        if self._preface:
            take = min(self._preface, size)
            self._preface -= take
            pos = take
        frames = 0
        control = 0
        streams = 0
        per_turn = limits.frames_per_turn  # read once per scan, not once per frame
        max_frame = limits.max_frame_size
        while pos < size:
            remaining = self._remaining
            if remaining:
                step = min(remaining, size - pos)
                self._remaining = remaining - step
                pos += step
                continue
            if frames >= per_turn:
                break
            start = pos
            need = 9 - len(self._hdr)
            if size - pos < need:
                self._hdr += data[pos:]
                pos = size
                break
            header = self._hdr + data[pos : pos + need] if self._hdr else data[pos : pos + 9]
            self._hdr = b""
            pos += need
            length = int.from_bytes(header[:3], "big")
            ftype = header[3]
            flags = header[4]
            # A HEADERS frame opens a stream (decoding, routing, an upstream stream): it
            # costs the turn several times what any other frame does.
            frames += _HEADERS_WEIGHT if ftype == _HEADERS else 1
            if length > max_frame:
                return start, Violation(
                    "h2-frame-too-large", _FRAME_SIZE,
                    f"a frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE",
                )
            self._remaining = length
            if ftype == _HEADERS or ftype == _CONTINUATION:
                block = (self._block if ftype == _CONTINUATION and self._block >= 0 else 0)
                block += length
                if ftype == _HEADERS:
                    streams += 1
                elif length == 0 and not flags & _END_HEADERS:
                    control += 1
                if block > limits.max_header_block:
                    return start, Violation(
                        "h2-header-block-too-large", _CALM,
                        f"a header block exceeds {limits.max_header_block} bytes",
                    )
                self._block = -1 if flags & _END_HEADERS else block
            elif ftype == _DATA:
                if length == 0 and not flags & _END_STREAM:
                    control += 1
            elif ftype in _CONTROL_TYPES:
                control += 1
        if control or streams:
            self._control += control
            self._streams += streams
            if self._control > self.budget():
                return pos, Violation(
                    "h2-control-flood", _CALM,
                    f"{self._control:.0f} control frames within ~{limits.window:.0f}s",
                )
        return pos, None

    def budget(self) -> float:
        limits = self._limits
        return (limits.control_base + limits.control_per_stream * self._streams
                + limits.control_per_16k_sent * self._sent / 16384)

    def _decay(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed <= 0.05:  # cheap path: reads close together decay together
            return
        self._last = now
        keep = math.exp(-elapsed / self._limits.window)
        self._control *= keep
        self._streams *= keep
        self._sent *= keep


class AbuseMemory:
    """Peers (by address) caught flooding or rapid-resetting, remembered for `ttl` seconds.

    Bounded: the oldest entries go first beyond `capacity`. A listener-wide object; in a
    sidecar the address is often the local app, which is exactly the peer to hold responsible."""

    __slots__ = ("_capacity", "_entries", "_ttl")

    def __init__(self, ttl: float = 60.0, capacity: int = 10_000) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._entries: OrderedDict[bytes, tuple[int, float]] = OrderedDict()

    def strikes(self, peer: bytes, now: float) -> int:
        entry = self._entries.get(peer)
        if entry is None:
            return 0
        count, until = entry
        if now >= until:
            del self._entries[peer]
            return 0
        return count

    def strike(self, peer: bytes, now: float) -> int:
        count = self.strikes(peer, now) + 1
        entries = self._entries
        entries[peer] = (count, now + self._ttl)
        entries.move_to_end(peer)
        while len(entries) > self._capacity:
            entries.popitem(last=False)
        return count

    def __len__(self) -> int:
        return len(self._entries)
