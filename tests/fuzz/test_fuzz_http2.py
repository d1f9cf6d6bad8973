"""The HTTP/2 frame path under generated input: after the h2c preface, frames of every type
(and of no known type) with arbitrary flags, stream ids and payloads, mixed with well-formed
request HEADERS (HPACK-encoded, some with routing carriers), split at arbitrary points.

What must hold for every input:
- nothing raises into the event loop (a crash);
- what the client gets back parses as HTTP/2 frames;
- the proxy ends the connection within its deadlines once the client has half-closed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import hpack
import pytest
from hyperframe.frame import Frame
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz._lab import Lab
from tests.fuzz.conftest import FUZZ, seeds

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind & 0xFF, flags & 0xFF]) + \
        struct.pack(">I", sid & 0x7FFFFFFF) + payload


FIELDS = [(":method", "GET"), (":method", "POST"), (":method", "CONNECT"), (":path", "/"),
          (":path", ""), (":scheme", "http"), (":authority", "svc"), (":authority", "svc:80"),
          (":status", "200"), ("x-forklane-routing-key", "k1"),
          ("baggage", "forklane-routing-key=k1"), ("tracestate", "forklane=k1"),
          ("te", "trailers"), ("te", "gzip"), ("connection", "close"), ("host", "svc"),
          ("content-length", "3"), ("content-length", "x"), ("grpc-timeout", "1S"),
          ("grpc-timeout", "99999999999n"), ("content-type", "application/grpc"),
          ("Upper", "x"), ("x", "a\r\nb")]


@st.composite
def headers_frame(draw: st.DrawFn) -> bytes:
    fields = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "svc")]
    if draw(st.booleans()):
        fields = draw(st.lists(st.sampled_from(FIELDS), max_size=10))
    else:
        fields += draw(st.lists(st.sampled_from(FIELDS), max_size=4))
    block = hpack.Encoder().encode(fields)
    sid = draw(st.sampled_from([1, 3, 5, 2, 0, 101]))
    flags = draw(st.sampled_from([0x4 | 0x1, 0x4, 0x1, 0x0, 0x24 | 0x1]))
    if flags & 0x20:
        block = b"\x00\x00\x00\x03\x10" + block  # a priority section
    return frame(0x1, flags, sid, block)


@st.composite
def any_frame(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 12))
    flags = draw(st.integers(0, 255))
    sid = draw(st.sampled_from([0, 1, 3, 5, 7, 2, 2**31 - 1]))
    payload = draw(st.binary(max_size=64))
    if kind == 0x8 and draw(st.booleans()):
        payload = struct.pack(">I", draw(st.sampled_from([0, 1, 2**31 - 1])))
    return frame(kind, flags, sid, payload)


@st.composite
def inputs(draw: st.DrawFn) -> list[bytes]:
    body = b"".join(draw(st.lists(headers_frame() | any_frame() | st.binary(max_size=20),
                                  min_size=1, max_size=12)))
    data = PREFACE + SETTINGS + body
    cuts = sorted(draw(st.lists(st.integers(1, len(data)), max_size=4)))
    chunks, start = [], 0
    for cut in cuts:
        chunks.append(data[start:cut])
        start = cut
    chunks.append(data[start:])
    return [c for c in chunks if c]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(h2=True)
    yield lab
    lab.close()


def frames_only(data: bytes) -> None:
    """The bytes the client got are whole HTTP/2 frames of known layout (a cut-off last frame
    is possible when the proxy closed with bytes in flight, so it is allowed)."""
    offset = 0
    while len(data) - offset >= 9:
        header, length = Frame.parse_frame_header(memoryview(data[offset:offset + 9]))
        payload = data[offset + 9:offset + 9 + length]
        if len(payload) < length:
            return
        header.parse_body(memoryview(payload))
        offset += 9 + length


def check(lab: Lab, chunks: list[bytes]) -> None:
    before = len(lab.crashes)
    answer, closed = lab.exchange(chunks)
    assert lab.crashes[before:] == [], lab.crashes[before:]
    frames_only(answer)
    assert closed, f"the connection was not ended in time; got {answer[:200]!r}"


@pytest.mark.parametrize("seed", seeds("http2"), ids=lambda s: str(len(s)))
def test_seed_corpus(lab: Lab, seed: bytes) -> None:
    check(lab, [seed])


@FUZZ
@given(chunks=inputs())
def test_generated_input(lab: Lab, chunks: list[bytes]) -> None:
    check(lab, chunks)
