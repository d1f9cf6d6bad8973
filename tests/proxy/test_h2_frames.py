"""HTTP/2 frames and the lean connection, against RFC 9113: frame layout (§4.1), padding
(§6.1), SETTINGS/PING/GOAWAY/WINDOW_UPDATE payloads (§6.5-6.9), header blocks split over
CONTINUATION (§6.10), stream-id and flow-control rules (§5.1, §6.9); and a Hypothesis fuzzer
on the decoder: arbitrary bytes end in events or an H2Error, never anything else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forklane.proxy.http2 import frames
from forklane.proxy.http2.conn import (
    EV_DATA,
    EV_END,
    EV_GOAWAY,
    EV_HEADERS,
    EV_INFO,
    EV_RESET,
    EV_SETTINGS,
    EV_TRAILERS,
    PREFACE,
    ErrorCode,
    H2Conn,
    H2Error,
)
from forklane.proxy.http2.frames import FrameError
from forklane.proxy.http2.hpack import Decoder, Encoder

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc/Call"),
           (b":authority", b"a.example"), (b"content-type", b"application/grpc"),
           (b"te", b"trailers")]


def test_frame_header_layout_is_rfc_9113_section_4_1() -> None:
    raw = frames.frame(frames.DATA, frames.END_STREAM, 0x80000003, b"hello")
    # 24-bit length, type, flags, reserved bit clear + 31-bit stream id, payload.
    assert raw == b"\x00\x00\x05\x00\x01\x00\x00\x00\x03hello"
    parsed, rest = frames.split(b"\x00\x00\x05\x00\x01\x80\x00\x00\x03hello" + raw[:4], 16384)
    assert parsed == [(frames.DATA, frames.END_STREAM, 3, b"hello")]  # reserved bit ignored
    assert rest == raw[:4]  # a partial frame waits for more bytes


def test_a_frame_longer_than_max_frame_size_fails_on_its_header_alone() -> None:
    with pytest.raises(FrameError) as info:
        frames.split(b"\x00\x40\x01\x00\x00\x00\x00\x00\x01", 16384)  # 16385 bytes announced
    assert info.value.code == ErrorCode.FRAME_SIZE_ERROR


def test_padding_is_stripped_and_bad_padding_refused() -> None:
    assert frames.strip_padding(frames.PADDED, b"\x03abc\x00\x00\x00") == b"abc"
    assert frames.strip_padding(0, b"\x03abc") == b"\x03abc"
    with pytest.raises(FrameError):
        frames.strip_padding(frames.PADDED, b"\x05ab")


def test_settings_and_goaway_payloads() -> None:
    raw = frames.settings([(3, 100), (4, 65535)])
    assert raw == bytes.fromhex("00000c040000000000" "000300000064" "00040000ffff")
    assert frames.parse_settings(raw[9:]) == [(3, 100), (4, 65535)]
    with pytest.raises(FrameError):
        frames.parse_settings(b"\x00\x03\x00")
    go = frames.goaway(7, ErrorCode.ENHANCE_YOUR_CALM, b"calm")
    assert frames.parse_goaway(go[9:]) == (7, 0xB, b"calm")


def test_a_large_header_block_goes_out_as_headers_plus_continuation() -> None:
    block = bytes(range(256)) * 100  # 25,600 bytes
    raw = frames.headers(1, block, True, 16384)
    parsed, rest = frames.split(raw, 16384)
    assert rest == b""
    assert [(t, f) for t, f, _, _ in parsed] == [
        (frames.HEADERS, frames.END_STREAM), (frames.CONTINUATION, frames.END_HEADERS)]
    assert b"".join(p for _, _, _, p in parsed) == block


# -- the connection -----------------------------------------------------------------------


def client_preface(pairs: list[tuple[int, int]] | None = None) -> bytes:
    return PREFACE + frames.settings(pairs or [])


def server() -> H2Conn:
    conn = H2Conn(False, max_concurrent=2, connection_window=1 << 20)
    conn.initiate([(3, 2)])
    conn.data_to_send()
    return conn


def sent_frames(conn: H2Conn) -> list[tuple[int, int, int, bytes]]:
    parsed, rest = frames.split(conn.data_to_send(), 1 << 24)
    assert rest == b""
    return parsed


def test_preface_settings_are_acknowledged_and_applied() -> None:
    conn = server()
    events = conn.receive(client_preface([(4, 1000), (5, 32768)]))
    assert events == [(EV_SETTINGS, 0, True, 0)]
    assert sent_frames(conn) == [(frames.SETTINGS, frames.ACK, 0, b"")]
    assert conn.max_outbound_frame_size == 32768 and conn.peer_initial_window == 1000


def test_not_a_preface_is_a_protocol_error_with_goaway() -> None:
    conn = server()
    with pytest.raises(H2Error):
        conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (ftype, _, _, payload), = sent_frames(conn)
    assert ftype == frames.GOAWAY and frames.parse_goaway(payload)[1] == ErrorCode.PROTOCOL_ERROR


def test_request_data_trailers_and_the_window_given_back_in_batches() -> None:
    conn = server()
    conn.receive(client_preface())
    conn.data_to_send()
    encoder = Encoder()
    body = b"x" * 40000
    wire = frames.headers(1, encoder.encode(REQUEST), False, 16384)
    for i in range(0, len(body), 16384):
        wire += frames.data(1, body[i : i + 16384], False)
    wire += frames.headers(1, encoder.encode([(b"grpc-status", b"0")]), True, 16384)
    events = conn.receive(wire)
    assert events[0] == (EV_HEADERS, 1, REQUEST, False)
    assert b"".join(e[2] for e in events if e[0] == EV_DATA) == body  # type: ignore[misc]
    assert events[-2:] == [(EV_TRAILERS, 1, [(b"grpc-status", b"0")], True), (EV_END, 1, None, 0)]
    conn.ack(20000, 1)
    assert sent_frames(conn) == []  # below half a window: nothing yet
    conn.ack(20000, 1)
    # The stream's remote side is closed: only the connection window counts, and 40,000
    # bytes of a 1 MiB window are not worth a frame yet.
    assert sent_frames(conn) == []
    assert conn.recv_pending == 40000 and conn.recv_pending + conn.recv_window == 1 << 20


def test_data_beyond_the_stream_window_resets_that_stream() -> None:
    conn = server()
    conn.receive(client_preface())
    conn.data_to_send()
    wire = frames.headers(1, Encoder().encode(REQUEST), False, 16384)
    wire += b"".join(frames.data(1, b"y" * 16384, False) for _ in range(4))
    wire += frames.data(1, b"y" * 10, False)  # 65,546 bytes > the 65,535 window
    events = conn.receive(wire)
    assert events[-1] == (EV_RESET, 1, ErrorCode.FLOW_CONTROL_ERROR, 0)
    assert (frames.RST_STREAM, 0, 1, b"\x00\x00\x00\x03") in sent_frames(conn)


def test_streams_over_the_concurrency_limit_are_refused_and_ids_must_grow() -> None:
    conn = server()
    conn.receive(client_preface())
    conn.data_to_send()
    encoder = Encoder()
    wire = b"".join(frames.headers(sid, encoder.encode(REQUEST), False, 16384)
                    for sid in (1, 3, 5))
    events = conn.receive(wire)
    assert [e[1] for e in events] == [1, 3]
    assert sent_frames(conn) == [(frames.RST_STREAM, 0, 5, b"\x00\x00\x00\x07")]
    with pytest.raises(H2Error):
        conn.receive(frames.headers(2, encoder.encode(REQUEST), True, 16384))  # even id


def test_continuation_must_follow_its_headers() -> None:
    conn = server()
    conn.receive(client_preface())
    block = Encoder().encode(REQUEST)
    ok = frames.frame(frames.HEADERS, 0, 1, block[:5]) + frames.frame(
        frames.CONTINUATION, frames.END_HEADERS, 1, block[5:])
    assert conn.receive(ok)[0] == (EV_HEADERS, 1, REQUEST, False)
    conn2 = server()
    conn2.receive(client_preface())
    bad = frames.frame(frames.HEADERS, 0, 1, block[:5]) + frames.ping(b"12345678", False)
    with pytest.raises(H2Error):
        conn2.receive(bad)


def test_ping_is_answered_and_goaway_reported() -> None:
    conn = server()
    conn.receive(client_preface())
    conn.data_to_send()
    events = conn.receive(frames.ping(b"abcdefgh", False) + frames.goaway(0, 0))
    assert events == [(EV_GOAWAY, 0, 0, 0)]
    assert sent_frames(conn) == [(frames.PING, frames.ACK, 0, b"abcdefgh")]


def test_client_side_windows_informational_heads_and_refusal() -> None:
    client = H2Conn(True, connection_window=65535)
    client.initiate([(2, 0)])
    assert client.data_to_send().startswith(PREFACE)
    client.receive(frames.settings([(4, 10), (3, 1)]))  # tiny window, one stream
    sid = client.open_stream(REQUEST, False)
    assert sid == 1 and not client.has_capacity()
    assert client.window(sid) == 10
    client.send_data(sid, b"0123456789")
    with pytest.raises(H2Error):
        client.send_data(sid, b"!")  # beyond the window
    client.receive(frames.window_update(sid, 5))
    assert client.window(sid) == 5
    client.data_to_send()
    enc = Encoder()
    events = client.receive(
        frames.headers(sid, enc.encode([(b":status", b"103"), (b"link", b"</a>")]), False, 16384)
        + frames.headers(sid, enc.encode([(b":status", b"200")]), False, 16384)
        + frames.rst_stream(sid, ErrorCode.CANCEL))
    assert [e[0] for e in events] == [EV_INFO, EV_HEADERS, EV_RESET]
    with pytest.raises(H2Error):
        client.send_data(sid, b"x")  # reset: closed for sending
    assert client.has_capacity()


def test_frames_for_a_stream_we_reset_are_ignored_but_decoded() -> None:
    conn = server()
    conn.receive(client_preface())
    encoder = Encoder()
    conn.receive(frames.headers(1, encoder.encode(REQUEST), False, 16384))
    conn.reset_stream(1, ErrorCode.CANCEL)
    conn.data_to_send()
    late = frames.data(1, b"z" * 100, False) + frames.headers(
        1, encoder.encode([(b"x-late", b"1")]), True, 16384)
    assert conn.receive(late) == []
    # The HPACK context stayed in step: the next stream decodes (x-late is indexed now).
    nxt = conn.receive(frames.headers(3, encoder.encode([*REQUEST, (b"x-late", b"1")]),
                                      True, 16384))
    assert nxt[0] == (EV_HEADERS, 3, [*REQUEST, (b"x-late", b"1")], True)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 255), st.integers(0, 9),
                          st.binary(max_size=40)), max_size=12), st.integers(1, 30))
def test_fuzzed_frames_end_in_events_or_h2error(
    specs: list[tuple[int, int, int, bytes]], cut: int
) -> None:
    conn = server()
    wire = client_preface() + b"".join(frames.frame(t, f, s, p) for t, f, s, p in specs)
    try:
        for i in range(0, len(wire), cut):  # any split across reads
            conn.receive(wire[i : i + cut])
    except H2Error:
        pass
    conn.data_to_send()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_bytes_after_the_preface(data: bytes) -> None:
    conn = server()
    try:
        conn.receive(client_preface() + data)
    except H2Error:
        pass


def test_decoder_shared_by_both_directions_round_trip() -> None:
    enc, dec = Encoder(), Decoder()
    assert dec.decode(enc.encode(REQUEST)) == REQUEST


def test_an_announced_larger_stream_window_is_what_the_peer_may_send() -> None:
    client = H2Conn(True, connection_window=1 << 22, stream_window=256 * 1024)
    client.initiate([(4, 256 * 1024)])
    client.receive(frames.settings([]))
    sid = client.open_stream(REQUEST, True)
    enc = Encoder()
    wire = frames.headers(sid, enc.encode([(b":status", b"200")]), False, 16384)
    wire += b"".join(frames.data(sid, b"d" * 16384, False) for _ in range(16))  # 256 KiB
    events = client.receive(wire)
    assert sum(e[3] for e in events if e[0] == EV_DATA) == 256 * 1024  # type: ignore[misc]
    client.data_to_send()
    client.ack(128 * 1024, sid)  # half the stream window: worth an update now
    updates = [(s, int.from_bytes(p, "big")) for t, _, s, p in sent_frames(client)
               if t == frames.WINDOW_UPDATE]
    assert (sid, 128 * 1024) in updates
    # One byte beyond what was given back: that stream is reset with FLOW_CONTROL_ERROR.
    events = client.receive(b"".join(frames.data(sid, b"d" * 16384, False) for _ in range(8))
                            + frames.data(sid, b"!", False))
    assert events[-1] == (EV_RESET, sid, ErrorCode.FLOW_CONTROL_ERROR, 0)
