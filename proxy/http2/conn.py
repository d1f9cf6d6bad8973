"""One HTTP/2 connection's protocol state, as lean as a relay allows (sans-io).

The relay needs far less than a general HTTP/2 endpoint: it never pushes, never prioritises,
never interprets a body. `H2Conn` turns bytes into a short list of events and the relay's
calls into bytes, keeping only what correctness needs:

- stream life: which streams are open in which direction, stream-id rules (odd from clients,
  increasing), at most `max_concurrent` streams opened by the peer (REFUSED_STREAM beyond);
- header blocks: HEADERS + CONTINUATION reassembled, decoded by our HPACK (`hpack`), always
  decoded even for a stream we no longer track, so the compression context stays in step;
- flow control both ways (RFC 9113 §6.9): what the peer may still send us (a peer sending
  beyond it is a FLOW_CONTROL_ERROR) and what we may send it (the relay asks `window(sid)`
  before each DATA frame); received bytes are given back only when the relay says it passed
  them on (`ack`), in WINDOW_UPDATEs of at least half a window, as h2 batches them;
- SETTINGS acknowledged and applied (initial window deltas, frame size, header table size),
  PING answered, GOAWAY reported without ending the streams at or below its last id.

Events are tuples `(kind, stream_id, a, b)`:
  EV_HEADERS   a = header list (None: larger than the list size limit), b = END_STREAM set
               (a request head with a malformed field: its reason is in `problems[sid]`)
  EV_INFO      a = a 1xx response head
  EV_TRAILERS  a = header list
  EV_DATA      a = data without padding, b = flow-controlled length
  EV_END       the peer ended its side of the stream (after EV_HEADERS/EV_DATA/EV_TRAILERS)
  EV_RESET     a = error code (RST_STREAM from the peer, or a stream error we detected)
  EV_WINDOW    the peer granted send window (stream 0: the connection)
  EV_SETTINGS  the peer's SETTINGS arrived (a = True for the first)
  EV_GOAWAY    a = error code, b = last stream id

Errors: a connection error raises `H2Error` after queueing GOAWAY with its code; the owner
flushes and closes. A call that cannot be honoured (sending on a stream that is closed)
raises `H2Error` with nothing queued.
"""

from __future__ import annotations

from forklane.proxy.http2 import frames
from forklane.proxy.http2.frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    FrameError,
)
from forklane.proxy.http2.hpack import Decoder, Encoder, HPACKError
from forklane.proxy.listener.detect import PREFACE

__all__ = [
    "EV_DATA",
    "EV_END",
    "EV_GOAWAY",
    "EV_HEADERS",
    "EV_INFO",
    "EV_RESET",
    "EV_SETTINGS",
    "EV_TRAILERS",
    "EV_WINDOW",
    "PREFACE",
    "S_ENABLE_PUSH",
    "S_HEADER_TABLE_SIZE",
    "S_INITIAL_WINDOW_SIZE",
    "S_MAX_CONCURRENT_STREAMS",
    "S_MAX_FRAME_SIZE",
    "S_MAX_HEADER_LIST_SIZE",
    "ErrorCode",
    "H2Conn",
    "H2Error",
    "code_name",
]

EV_HEADERS = 1
EV_INFO = 2
EV_TRAILERS = 3
EV_DATA = 4
EV_END = 5
EV_RESET = 6
EV_WINDOW = 7
EV_SETTINGS = 8
EV_GOAWAY = 9

Event = tuple[int, int, object, object]


class ErrorCode:
    """RFC 9113 §7 error codes."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


_CODE_NAMES = {value: name for name, value in vars(ErrorCode).items() if name.isupper()}


def code_name(code: int) -> str:
    """`REFUSED_STREAM` for 7; the number for codes RFC 9113 does not define."""
    return _CODE_NAMES.get(code, str(code))


# SETTINGS identifiers (RFC 9113 §6.5.2).
S_HEADER_TABLE_SIZE = 0x1
S_ENABLE_PUSH = 0x2
S_MAX_CONCURRENT_STREAMS = 0x3
S_INITIAL_WINDOW_SIZE = 0x4
S_MAX_FRAME_SIZE = 0x5
S_MAX_HEADER_LIST_SIZE = 0x6

_MAX_WINDOW = 0x7FFFFFFF
_DEFAULT_WINDOW = 65535
_FRAME_SIZE = 16384  # our SETTINGS_MAX_FRAME_SIZE (the default; never raised)


class H2Error(Exception):
    """A connection error (GOAWAY queued with `code`) or a refused local call."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Stream:
    """What a connection keeps per stream: windows and which sides are still open."""

    __slots__ = ("head_seen", "local_open", "recv_pending", "recv_window", "remote_open",
                 "send_window")

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window
        self.recv_window = recv_window  # what the peer may still send on this stream
        self.recv_pending = 0  # received, passed on, not yet given back
        self.local_open = True
        self.remote_open = True
        self.head_seen = False  # the peer's (final) head arrived: the next HEADERS are trailers


class H2Conn:
    """See the module docstring. `client_side`: we opened the connection (upstream)."""

    def __init__(self, client_side: bool, *, max_concurrent: int = 100,
                 max_header_list: int = 1 << 20, connection_window: int = _DEFAULT_WINDOW,
                 stream_window: int = _DEFAULT_WINDOW,
                 max_list_decoded: int = 1 << 20, check_fields: bool = False) -> None:
        self.client_side = client_side
        self.streams: dict[int, _Stream] = {}
        self.out: list[bytes] = []
        self.buf = b""
        self.preface_pending = not client_side  # a server waits for the client's preface
        self.encoder = Encoder()
        # check_fields: the decoder notes malformed request fields (`checks.field_problem`);
        # the first of a new stream's head is kept in `problems` until the owner takes it.
        self.decoder = Decoder(4096, max_list_decoded, check_fields)
        self.problems: dict[int, str] = {}
        self.max_concurrent = max_concurrent  # streams the peer may open
        self.max_header_list = max_header_list
        # Peer settings (the RFC defaults until its SETTINGS arrive).
        self.peer_max_concurrent = 1 << 31
        self.peer_initial_window = _DEFAULT_WINDOW
        self.max_outbound_frame_size = 16384
        self.settings_seen = False
        # Connection windows.
        self.send_window = _DEFAULT_WINDOW
        self.recv_window = connection_window  # what the peer may still send us in total
        self.recv_target = connection_window
        self.recv_pending = 0
        self._initial_increment = connection_window - _DEFAULT_WINDOW
        # Our SETTINGS_INITIAL_WINDOW_SIZE: the owner announces it in `initiate` (a value
        # other than the default must be in the pairs it passes).
        self.stream_window = stream_window
        self._stream_update = stream_window >> 1
        self.next_sid = 1  # client side: our next stream id
        self.last_remote_sid = 0  # highest stream id the peer opened
        self.remote_open_count = 0  # streams the peer opened that are not closed
        self.local_open_count = 0  # streams we opened that are not closed
        self.goaway_received = False
        self.goaway_sent = False
        self._block_sid = 0  # a header block under way (CONTINUATION expected)
        self._block_flags = 0
        self._block: list[bytes] = []

    # -- setup -----------------------------------------------------------------------------

    def initiate(self, pairs: list[tuple[int, int]]) -> None:
        """Queue our preface: (client) the magic, our SETTINGS, the connection window."""
        out = self.out
        if self.client_side:
            out.append(PREFACE)
        out.append(frames.settings(pairs))
        if self._initial_increment > 0:
            out.append(frames.window_update(0, self._initial_increment))

    def data_to_send(self) -> bytes:
        out = self.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    # -- receiving -------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        """Events for `data`, the next bytes from the peer."""
        buf = self.buf + data if self.buf else data
        if self.preface_pending:
            if len(buf) < 24:
                if not PREFACE.startswith(buf):
                    raise self._fail(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
                self.buf = buf
                return []
            if buf[:24] != PREFACE:
                raise self._fail(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
            self.preface_pending = False
            buf = buf[24:]
        try:
            parsed, self.buf = frames.split(buf, _FRAME_SIZE)
        except FrameError as exc:
            raise self._fail(exc.code, str(exc)) from exc
        events: list[Event] = []
        try:
            for ftype, flags, sid, payload in parsed:
                if self._block_sid and ftype != CONTINUATION:
                    raise FrameError(ErrorCode.PROTOCOL_ERROR,
                                     "a header block interrupted by another frame")
                if ftype == DATA:
                    self._on_data(events, flags, sid, payload)
                elif ftype == HEADERS:
                    self._on_headers(events, flags, sid, payload)
                elif ftype == CONTINUATION:
                    self._on_continuation(events, flags, sid, payload)
                elif ftype == WINDOW_UPDATE:
                    self._on_window_update(events, sid, payload)
                elif ftype == RST_STREAM:
                    self._on_rst(events, sid, payload)
                elif ftype == SETTINGS:
                    self._on_settings(events, flags, sid, payload)
                elif ftype == PING:
                    if sid or len(payload) != 8:
                        raise FrameError(ErrorCode.PROTOCOL_ERROR
                                         if sid else ErrorCode.FRAME_SIZE_ERROR, "bad PING")
                    if not flags & 1:
                        self.out.append(frames.ping(payload, True))
                elif ftype == GOAWAY:
                    if sid:
                        raise FrameError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
                    last, code, _ = frames.parse_goaway(payload)
                    self.goaway_received = True
                    events.append((EV_GOAWAY, 0, code, last))
                elif ftype == PRIORITY:
                    if not sid:
                        raise FrameError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
                    if len(payload) != 5:
                        self._stream_error(events, sid, ErrorCode.FRAME_SIZE_ERROR)
                elif ftype == PUSH_PROMISE:
                    raise FrameError(ErrorCode.PROTOCOL_ERROR, "push is disabled")
                # Unknown frame types are ignored (RFC 9113 §4.1).
        except FrameError as exc:
            raise self._fail(exc.code, str(exc)) from exc
        except HPACKError as exc:
            raise self._fail(ErrorCode.COMPRESSION_ERROR, str(exc)) from exc
        return events

    def _fail(self, code: int, message: str) -> H2Error:
        if not self.goaway_sent:
            self.goaway_sent = True
            self.out.append(frames.goaway(self.last_remote_sid, code,
                                          message.encode("ascii", "replace")[:256]))
        return H2Error(code, message)

    def _stream_error(self, events: list[Event], sid: int, code: int) -> None:
        """A stream error: RST_STREAM out, EV_RESET to the owner, the stream forgotten."""
        stream = self.streams.get(sid)
        self.out.append(frames.rst_stream(sid, code))
        if stream is not None:
            self._close(sid, stream)
            events.append((EV_RESET, sid, code, 0))

    def _close(self, sid: int, stream: _Stream) -> None:
        del self.streams[sid]
        if (sid & 1) == (1 if self.client_side else 0):
            self.local_open_count -= 1
        else:
            self.remote_open_count -= 1

    def _on_data(self, events: list[Event], flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        if size > self.recv_window:
            raise FrameError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self.recv_window -= size
        stream = self.streams.get(sid)
        if stream is None or not stream.remote_open:
            if stream is None and not self._known(sid):
                raise FrameError(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
            # A stream that is closed (we reset it, or it ended): the connection window is
            # given back at once; the stream itself no longer matters.
            self._give_back(size)
            if stream is not None:
                self._stream_error(events, sid, ErrorCode.STREAM_CLOSED)
            return
        if size > stream.recv_window:
            self._give_back(size)
            self._stream_error(events, sid, ErrorCode.FLOW_CONTROL_ERROR)
            return
        stream.recv_window -= size
        body = frames.strip_padding(flags, payload) if flags & PADDED else payload
        if body or size:
            events.append((EV_DATA, sid, body, size))
        if flags & END_STREAM:
            self._remote_end(events, sid, stream)

    def _known(self, sid: int) -> bool:
        """A stream id that was opened once (now closed), rather than an idle one."""
        if (sid & 1) == (1 if self.client_side else 0):
            return sid < self.next_sid
        return sid <= self.last_remote_sid

    def _remote_end(self, events: list[Event], sid: int, stream: _Stream) -> None:
        stream.remote_open = False
        events.append((EV_END, sid, None, 0))
        if not stream.local_open:
            self._close(sid, stream)

    def _on_headers(self, events: list[Event], flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = frames.strip_padding(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise FrameError(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for priority")
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block(events, flags, sid, payload)
        else:
            self._block_sid = sid
            self._block_flags = flags
            self._block = [payload]

    def _on_continuation(self, events: list[Event], flags: int, sid: int,
                         payload: bytes) -> None:
        if not self._block_sid or sid != self._block_sid:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        self._block.append(payload)
        if flags & END_HEADERS:
            block = b"".join(self._block)
            self._block = []
            self._block_sid = 0
            self._header_block(events, self._block_flags, sid, block)

    def _header_block(self, events: list[Event], flags: int, sid: int, block: bytes) -> None:
        decoder = self.decoder
        headers: list[tuple[bytes, bytes]] | None = decoder.decode(block)
        if decoder.oversized:
            headers = None
        ended = bool(flags & END_STREAM)
        stream = self.streams.get(sid)
        if stream is None:
            self._new_remote_head(events, sid, headers, ended, decoder.problem)
            return
        if not stream.remote_open:
            self._stream_error(events, sid, ErrorCode.STREAM_CLOSED)
            return
        if headers is None:
            self._stream_error(events, sid, ErrorCode.PROTOCOL_ERROR)
            return
        if not stream.head_seen:
            # Our own request's response (client side): 1xx heads come before the final one.
            status = headers[0][1] if headers and headers[0][0] == b":status" else b""
            if status[:1] == b"1" and not ended:
                events.append((EV_INFO, sid, headers, False))
                return
            stream.head_seen = True
            events.append((EV_HEADERS, sid, headers, ended))
        else:
            if not ended:
                self._stream_error(events, sid, ErrorCode.PROTOCOL_ERROR)
                return
            events.append((EV_TRAILERS, sid, headers, True))
        if ended:
            self._remote_end(events, sid, stream)

    def _new_remote_head(self, events: list[Event], sid: int,
                         headers: list[tuple[bytes, bytes]] | None, ended: bool,
                         problem: str | None) -> None:
        if self.client_side or not sid & 1:
            if self._known(sid):
                return  # a head for a stream we already reset: ignore it
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "HEADERS on a stream we did not open")
        if sid <= self.last_remote_sid:
            return  # a stream that is closed on our side (we reset it): ignore its frames
        self.last_remote_sid = sid
        if self.goaway_sent:
            return  # the owner refuses streams after its GOAWAY; it hears nothing
        if self.remote_open_count >= self.max_concurrent:
            self.out.append(frames.rst_stream(sid, ErrorCode.REFUSED_STREAM))
            return
        stream = _Stream(self.peer_initial_window, self.stream_window)
        stream.head_seen = True
        self.streams[sid] = stream
        self.remote_open_count += 1
        if problem is not None:
            self.problems[sid] = problem
        events.append((EV_HEADERS, sid, headers, ended))
        if ended:
            self._remote_end(events, sid, stream)

    def _on_window_update(self, events: list[Event], sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise FrameError(ErrorCode.FRAME_SIZE_ERROR, "a WINDOW_UPDATE has 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise FrameError(ErrorCode.PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > _MAX_WINDOW:
                raise FrameError(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow")
            events.append((EV_WINDOW, 0, None, 0))
            return
        stream = self.streams.get(sid)
        if stream is None:
            return  # closed streams may still receive WINDOW_UPDATE
        if not increment:
            self._stream_error(events, sid, ErrorCode.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > _MAX_WINDOW:
            self._stream_error(events, sid, ErrorCode.FLOW_CONTROL_ERROR)
            return
        events.append((EV_WINDOW, sid, None, 0))

    def _on_rst(self, events: list[Event], sid: int, payload: bytes) -> None:
        if not sid:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise FrameError(ErrorCode.FRAME_SIZE_ERROR, "a RST_STREAM has 4 bytes")
        stream = self.streams.get(sid)
        if stream is None:
            if not self._known(sid):
                raise FrameError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            return
        self._close(sid, stream)
        events.append((EV_RESET, sid, int.from_bytes(payload, "big"), 0))

    def _on_settings(self, events: list[Event], flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & 1:
            if payload:
                raise FrameError(ErrorCode.FRAME_SIZE_ERROR, "a SETTINGS ack with a payload")
            return
        for key, value in frames.parse_settings(payload):
            if key == S_INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise FrameError(ErrorCode.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                if delta:
                    for stream in self.streams.values():
                        stream.send_window += delta
            elif key == S_MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise FrameError(ErrorCode.PROTOCOL_ERROR, "invalid SETTINGS_MAX_FRAME_SIZE")
                self.max_outbound_frame_size = value
            elif key == S_MAX_CONCURRENT_STREAMS:
                self.peer_max_concurrent = value
            elif key == S_HEADER_TABLE_SIZE:
                self.encoder.resize(value)
            elif key == S_ENABLE_PUSH:
                if value > 1:
                    raise FrameError(ErrorCode.PROTOCOL_ERROR, "invalid SETTINGS_ENABLE_PUSH")
        self.out.append(frames.settings_ack())
        first = not self.settings_seen
        self.settings_seen = True
        events.append((EV_SETTINGS, 0, first, 0))

    # -- flow control ----------------------------------------------------------------------

    def _give_back(self, size: int) -> None:
        """Connection-level window for `size` bytes the relay is done with."""
        if size <= 0:
            return
        pending = self.recv_pending + size
        if pending >= self.recv_target >> 1 or self.recv_window + pending < 65536:
            self.recv_window += pending
            self.recv_pending = 0
            self.out.append(frames.window_update(0, pending))
        else:
            self.recv_pending = pending

    def ack(self, size: int, sid: int) -> None:
        """The relay passed `size` received bytes of `sid` on: the peer may send them again."""
        if size <= 0:
            return
        self._give_back(size)
        stream = self.streams.get(sid)
        if stream is None or not stream.remote_open:
            return
        pending = stream.recv_pending + size
        if pending >= self._stream_update:
            stream.recv_window += pending
            stream.recv_pending = 0
            self.out.append(frames.window_update(sid, pending))
        else:
            stream.recv_pending = pending

    def window(self, sid: int) -> int:
        """How many DATA bytes may go out on `sid` now; H2Error when it is closed for sending."""
        stream = self._sendable(sid)
        window = stream.send_window
        return window if window < self.send_window else self.send_window

    # -- sending ---------------------------------------------------------------------------

    def has_capacity(self) -> bool:
        """Client side: another stream may be opened now."""
        return (not self.goaway_received and self.local_open_count < self.peer_max_concurrent
                and self.next_sid <= _MAX_WINDOW)

    def open_stream(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> int:
        """Client side: a new stream with `headers` as its request head; its id."""
        if not self.has_capacity():
            raise H2Error(ErrorCode.REFUSED_STREAM, "no stream can be opened on this connection")
        sid = self.next_sid
        self.next_sid = sid + 2
        stream = _Stream(self.peer_initial_window, self.stream_window)
        self.streams[sid] = stream
        self.local_open_count += 1
        self.out.append(frames.headers(sid, self.encoder.encode(headers), end_stream,
                                       self.max_outbound_frame_size))
        if end_stream:
            stream.local_open = False
        return sid

    def _sendable(self, sid: int) -> _Stream:
        stream = self.streams.get(sid)
        if stream is None or not stream.local_open:
            raise H2Error(ErrorCode.STREAM_CLOSED, f"stream {sid} is closed for sending")
        return stream

    def _local_end(self, sid: int, stream: _Stream) -> None:
        stream.local_open = False
        if not stream.remote_open:
            self._close(sid, stream)

    def send_headers(self, sid: int, headers: list[tuple[bytes, bytes]],
                     end_stream: bool = False) -> None:
        """A response head, a 1xx head or trailers on an open stream."""
        stream = self._sendable(sid)
        self.out.append(frames.headers(sid, self.encoder.encode(headers), end_stream,
                                       self.max_outbound_frame_size))
        if end_stream:
            self._local_end(sid, stream)

    def send_data(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        """DATA within the window (`window(sid)`) and `max_outbound_frame_size`."""
        stream = self._sendable(sid)
        size = len(data)
        if size > stream.send_window or size > self.send_window:
            raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the peer's window")
        stream.send_window -= size
        self.send_window -= size
        out = self.out
        out.append(frames.header(DATA, END_STREAM if end_stream else 0, sid, size))
        if size:
            out.append(data)
        if end_stream:
            self._local_end(sid, stream)

    def end_stream(self, sid: int) -> None:
        self.send_data(sid, b"", True)

    def reset_stream(self, sid: int, code: int) -> None:
        """RST_STREAM: the stream is over for both sides."""
        stream = self.streams.get(sid)
        if stream is None:
            raise H2Error(ErrorCode.STREAM_CLOSED, f"stream {sid} is already closed")
        self.out.append(frames.rst_stream(sid, code))
        self._close(sid, stream)

    def goaway(self, code: int, last_sid: int | None = None, debug: bytes = b"") -> None:
        """GOAWAY: no new streams; the ones at or below `last_sid` may finish."""
        self.goaway_sent = True
        self.out.append(frames.goaway(self.last_remote_sid if last_sid is None else last_sid,
                                      code, debug))
