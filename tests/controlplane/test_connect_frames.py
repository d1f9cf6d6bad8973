"""The tunnel's frames and flow-control book, the failure answer of the control plane's end,
and the pure functions of `forklane connect` (the outbound proxy's head rewrite, the backoff,
the pairing of --service and --to)."""

from __future__ import annotations

import random

import pytest

from forklane._cli_common import UsageProblem
from forklane._cli_connect import pair_targets
from forklane.connect import Backoff, env_lines, parse_address, rewrite_head
from forklane.controlplane.tunnel.endpoint import http_failure
from forklane.controlplane.tunnel.frames import (
    CREDIT,
    DATA,
    END,
    INITIAL_CREDIT,
    MAX_DATA,
    OPEN,
    RESET,
    FrameError,
    StreamBook,
    decode,
    encode,
    encode_credit,
    parse_control,
)
from forklane.controlplane.tunnel.mux import StreamView


def test_frames_round_trip() -> None:
    for kind, payload in ((OPEN, b"pricing"), (DATA, b"x" * MAX_DATA), (END, b""),
                          (RESET, "refused ✗".encode()), (CREDIT, (7).to_bytes(4, "big"))):
        frame = decode(encode(kind, 42, payload))
        assert (frame.kind, frame.stream, frame.payload) == (kind, 42, payload)
    assert decode(encode_credit(3, 65536)).credit == 65536
    assert decode(encode(RESET, 1, "refused ✗".encode())).text == "refused ✗"


MALFORMED = [
    (b"\x02\x00\x00", "shorter than its 5-byte header"),
    (encode(9, 1), "unknown frame type 9"),
    (encode(DATA, 0, b"x"), "stream 0"),
    (encode(DATA, 1), "DATA of 0 bytes"),
    (encode(DATA, 1, b"x" * (MAX_DATA + 1)), f"DATA of {MAX_DATA + 1} bytes"),
    (encode(END, 1, b"x"), "END carries no payload"),
    (encode(CREDIT, 1, b"\x00\x01"), "CREDIT payload of 2 bytes"),
    (encode_credit(1, 0), "CREDIT of 0 bytes"),
    (encode(OPEN, 1), "OPEN without a service name"),
    (encode(OPEN, 1, b"\xff\xfe"), "OPEN text is not UTF-8"),
    (encode(RESET, 1, b"r" * 513), "RESET text longer than 512 bytes"),
]


@pytest.mark.parametrize(("message", "reason"), MALFORMED)
def test_malformed_frames_are_refused_with_a_reason(message: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode(message)


def test_control_messages_need_a_type() -> None:
    assert parse_control('{"type":"withdraw"}') == {"type": "withdraw"}
    for bad in ("nope", "[]", '{"kind":"x"}'):
        with pytest.raises(FrameError):
            parse_control(bad)


def test_only_the_opener_opens_and_ids_increase() -> None:
    opener, other = StreamBook(opener=True), StreamBook(opener=False)
    with pytest.raises(FrameError, match="does not open streams"):
        opener.receive(decode(encode(OPEN, 1, b"web")))
    with pytest.raises(FrameError, match="does not open streams"):
        other.open()
    assert (opener.open(), opener.open()) == (1, 2)
    assert other.receive(decode(encode(OPEN, 5, b"web"))) is not None
    with pytest.raises(FrameError, match="ids must increase"):
        other.receive(decode(encode(OPEN, 5, b"web")))
    with pytest.raises(FrameError, match="never opened"):
        other.receive(decode(encode(DATA, 9, b"x")))


def test_credit_bounds_what_a_peer_may_send() -> None:
    book = StreamBook(opener=False)
    book.receive(decode(encode(OPEN, 1, b"web")))
    chunk = b"x" * MAX_DATA
    for _ in range(INITIAL_CREDIT // MAX_DATA):
        assert book.receive(decode(encode(DATA, 1, chunk))) is not None
    with pytest.raises(FrameError, match="with 0 bytes of credit left"):
        book.receive(decode(encode(DATA, 1, b"x")))
    assert book.granted(1, MAX_DATA)
    assert book.receive(decode(encode(DATA, 1, chunk))) is not None


def test_send_credit_grows_with_credit_frames_and_cannot_overflow() -> None:
    book = StreamBook(opener=True)
    sid = book.open()
    assert book.sendable(sid) == MAX_DATA
    book.sent(sid, INITIAL_CREDIT)
    assert book.sendable(sid) == 0
    book.receive(decode(encode_credit(sid, 100)))
    assert book.sendable(sid) == 100
    with pytest.raises(FrameError, match="credit above"):
        book.receive(decode(encode_credit(sid, 2**31 - 1)))


def test_frames_after_a_reset_are_ignored_and_end_twice_is_an_error() -> None:
    book = StreamBook(opener=True)
    sid = book.open()
    assert book.reset(sid)
    assert book.receive(decode(encode(DATA, sid, b"late"))) is None  # crossed our RESET
    other = book.open()
    book.receive(decode(encode(END, other)))
    with pytest.raises(FrameError, match="after its END"):
        book.receive(decode(encode(DATA, other, b"x")))
    with pytest.raises(FrameError, match="second END"):
        book.receive(decode(encode(END, other)))
    book.ended(other)
    assert not book.live(other)  # both sides ended: forgotten


def _view(first: bytes, waiting: bool) -> StreamView:
    view = StreamView()
    view.first, view.waiting = first, waiting
    return view


def test_a_failed_stream_answers_503_only_to_an_http1_request_still_waiting() -> None:
    answer = http_failure(_view(b"GET /x HTTP/1.1\r\nHost: web\r\n", True), "the tunnel dropped")
    assert answer is not None
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"x-forklane-error: fork-unavailable" in head
    assert body == b"fork-unavailable: the tunnel dropped\n"
    assert f"content-length: {len(body)}".encode() in head
    assert http_failure(_view(b"GET /x HTTP/1.1\r\n", False), "x") is None  # answer had begun
    assert http_failure(_view(b"PRI * HTTP/2.0\r\n\r\nSM", True), "x") is None  # h2c: reset
    assert http_failure(_view(b"\x16\x03\x01", True), "x") is None  # not HTTP at all


def test_outbound_head_gets_the_key_and_loses_hop_by_hop_fields() -> None:
    head = (b"GET http://orders/x?a=1 HTTP/1.1\r\nHost: orders\r\nProxy-Connection: keep-alive"
            b"\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nx-forklane-routing-key: forged"
            b"\r\nAccept: */*\r\n\r\n")
    out, refused = rewrite_head(head, "k123")
    assert refused is None and out is not None
    assert out == (b"GET http://orders/x?a=1 HTTP/1.1\r\nHost: orders\r\nAccept: */*\r\n"
                   b"x-forklane-routing-key: k123\r\nconnection: close\r\n\r\n")
    assert rewrite_head(b"CONNECT orders:443 HTTP/1.1\r\n\r\n", "k")[1][0] == 405  # type: ignore[index]
    assert rewrite_head(b"garbage\r\n\r\n", "k")[1][0] == 400  # type: ignore[index]
    assert rewrite_head(b"GET / HTTP/1.1\r\nbad header\r\n\r\n", "k")[1][0] == 400  # type: ignore[index]


def test_env_file_lines_name_the_proxy_and_the_key() -> None:
    lines = env_lines("http://127.0.0.1:5000", "k1", "dev")
    assert "HTTP_PROXY=http://127.0.0.1:5000" in lines and "http_proxy=http://127.0.0.1:5000" in lines
    assert "FORKLANE_ROUTING_KEY=k1" in lines and "NO_PROXY=localhost,127.0.0.1,::1" in lines


def test_backoff_is_jittered_capped_and_resets() -> None:
    backoff = Backoff(random.Random(7))
    delays = [backoff.next() for _ in range(30)]
    assert all(0 <= d <= 5.0 for d in delays)
    assert max(delays[:2]) <= 0.5 and max(delays[10:]) > 1.0
    backoff.reset()
    assert backoff.next() <= 0.25


def test_services_pair_with_their_targets() -> None:
    assert pair_targets(["web", "grpc=localhost:9000", "chat"], ["localhost:8080", "7000"]) == [
        ("web", "localhost:8080"), ("grpc", "localhost:9000"), ("chat", "7000")]
    with pytest.raises(UsageProblem, match="one --to per --service"):
        pair_targets(["web"], [])
    with pytest.raises(UsageProblem, match="given twice"):
        pair_targets(["web=1", "web=2"], [])
    assert parse_address("localhost:8080") == ("127.0.0.1", 8080)
    assert parse_address("9000") == ("127.0.0.1", 9000)
    with pytest.raises(ValueError, match=r"port in 1\.\.65535"):
        parse_address("host:0")
