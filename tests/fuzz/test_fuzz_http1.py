"""HTTP/1.1 head handling under generated input: request lines, fields (framing, routing
carriers, hop-by-hop, upgrades), bodies and arbitrary bytes, split at arbitrary points.

What must hold for every input:
- nothing raises into the event loop (a crash);
- what the client gets back is a sequence of well-formed HTTP/1.1 responses;
- the proxy ends the connection within its deadlines once the client has half-closed.
"""

from __future__ import annotations

from collections.abc import Iterator

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz._lab import Lab
from tests.fuzz.conftest import FUZZ, seeds

METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"CONNECT", b"PURGEX",
           b"G\x00T", b"get", b""]
TARGETS = [b"/", b"/a?b=c", b"http://svc/x", b"*", b"svc:80", b"/%00", b"//x", b"/" + b"a" * 300]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/x", b""]
NAMES = [b"host", b"Host", b"content-length", b"transfer-encoding", b"connection", b"upgrade",
         b"expect", b"te", b"trailer", b"x-forklane-routing-key", b"x_forklane_routing_key",
         b"baggage", b"tracestate", b"traceparent", b"via", b"x-forwarded-for", b"cookie",
         b"host ", b" host", b"x-a", b""]
VALUES = [b"svc", b"svc:80", b"k1", b"0", b"5", b"-1", b"0x10", b"1, 1", b"1,2", b"chunked",
          b"gzip, chunked", b"chunked, gzip", b"close", b"keep-alive, host", b"upgrade",
          b"websocket", b"100-continue", b"forklane-routing-key=k1", b"forklane=k1",
          b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", b"a\x00b", b"a\rb",
          b"a\nb", b"\xff\xfe", b" ", b"1.1 forklane", b"x" * 2000]
EOLS = [b"\r\n", b"\n", b"\r"]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from(EOLS)) if draw(st.integers(0, 9)) == 0 else b"\r\n"
    line = b" ".join((draw(st.sampled_from(METHODS)), draw(st.sampled_from(TARGETS)),
                      draw(st.sampled_from(VERSIONS))))
    fields = draw(st.lists(st.tuples(st.sampled_from(NAMES),
                                     st.sampled_from(VALUES) | st.binary(max_size=40)),
                           max_size=12))
    head = [line] + [n + draw(st.sampled_from([b": ", b":", b" : ", b":\t"])) + v
                     for n, v in fields]
    body = draw(st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n",
                                 b"zz\r\n", b"0\r\n\r\n"]) | st.binary(max_size=200))
    return eol.join(head) + eol + eol + body


@st.composite
def inputs(draw: st.DrawFn) -> list[bytes]:
    data = b"".join(draw(st.lists(requests() | st.binary(max_size=300), min_size=1,
                                  max_size=3)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    chunks, start = [], 0
    for cut in cuts:
        chunks.append(data[start:cut])
        start = cut
    chunks.append(data[start:])
    return [c for c in chunks if c]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab()
    yield lab
    lab.close()


def well_formed_responses(data: bytes, sent: bytes) -> None:
    """What the client got is HTTP/1.1 responses, one after another, up to an upgrade's
    tunnel bytes. (After a HEAD a response parser cannot know that no body follows, so
    then only the first status line is checked.)"""
    assert not data or data.startswith(b"HTTP/1.1 "), data[:120]
    if not data or b"HEAD" in sent:
        return
    complete: list[int] = []

    class Sink:
        def on_message_complete(self) -> None:
            complete.append(1)

    parser = httptools.HttpResponseParser(Sink())
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return
    except httptools.HttpParserError as exc:
        raise AssertionError(f"not HTTP/1.1 responses ({exc}): {data[:300]!r}") from exc


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def check(lab: Lab, chunks: list[bytes]) -> None:
    before = len(lab.crashes)
    answer, closed = lab.exchange(chunks)
    assert lab.crashes[before:] == [], lab.crashes[before:]
    first = chunks[0] if chunks else b""
    if PREFACE.startswith(first[:24]) or first.startswith(PREFACE):
        # A first read that may be the h2c preface belongs to the HTTP/2 module (its own
        # harness): it answers in frames.
        assert closed
        return
    well_formed_responses(answer, b"".join(chunks))
    assert closed, f"the connection was not ended in time; got {answer[:200]!r}"


@pytest.mark.parametrize("seed", seeds("http1"), ids=lambda s: s[:24].decode("latin-1"))
def test_seed_corpus(lab: Lab, seed: bytes) -> None:
    check(lab, [seed])


@FUZZ
@given(chunks=inputs())
def test_generated_input(lab: Lab, chunks: list[bytes]) -> None:
    check(lab, chunks)
