"""`parse_request` never accepts what the full parser rejects, and reads what it accepts the
same way: checked against httptools (the full path's parser) on hand-picked heads, on the
malformed-input corpus, and on generated heads."""

from __future__ import annotations

from dataclasses import dataclass, field

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forklane.proxy.forward.core import (
    F_CONNECTION,
    F_HOP,
    F_INTERESTING,
    F_KEEP_ALIVE,
    F_MARKER,
    F_TE,
    F_VIA,
    F_XFF,
    Hop,
    TableFields,
    join_view,
)
from forklane.proxy.http1.head import (
    drop_fields,
    parse_request,
    parse_response,
    write_request_head,
)
from forklane.proxy.http1.messages import status_line, valid_host
from forklane.proxy.table import ROUTED_MARKER
from tests.integration.test_http1_malformed import CORPUS, HEAD


class _Interesting:
    """The part of a routing table `TableFields` reads."""

    interesting_raw = frozenset({b"x-routing-key", b"baggage", b"tracestate", b"traceparent"})
    carriers = None


FIELDS = TableFields(_Interesting(), b"x-explain")  # type: ignore[arg-type]
ACTIONS = FIELDS.h1
NAMES = FIELDS.names
DROPPED = {F_VIA, F_XFF, F_MARKER, F_KEEP_ALIVE, F_HOP, F_TE, F_CONNECTION}


@dataclass
class Full:
    """What httptools made of a message."""

    url: bytes = b""
    fields: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    done: bool = False
    head_done: bool = False
    parser: httptools.HttpRequestParser | None = None
    method: bytes = b""
    version: str = ""
    keep_alive: bool = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        # Read here, as the request path does: after the message these describe the next one.
        assert self.parser is not None
        self.head_done = True
        self.method = self.parser.get_method()
        self.version = self.parser.get_http_version()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def full_parse(raw: bytes) -> Full | None:
    seen = Full()
    seen.parser = httptools.HttpRequestParser(seen)
    try:
        seen.parser.feed_data(raw)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    return seen


def check_same(raw: bytes) -> bool:
    """Parse `raw` both ways; when the head parser accepts, the full parser must agree on
    everything the request path uses. Returns whether the head parser accepted."""
    head = parse_request(raw, 0, ACTIONS, NAMES, 8192, 100)
    if head is None:
        return False
    seen = full_parse(raw)
    assert seen is not None, f"accepted what httptools rejects: {raw!r}"
    assert seen.head_done and seen.done
    assert seen.method == head.method
    assert seen.version == "1.1"
    assert seen.keep_alive == head.keep_alive
    assert seen.url == head.target
    lines = b"".join(n + b": " + v + b"\r\n" for n, v in seen.fields)
    assert raw[raw.index(b"\r\n") + 2 : head.end - 2] == lines
    kept = b"".join(n + b": " + v + b"\r\n" for n, v in seen.fields
                    if ACTIONS.get(n.lower()) not in DROPPED)
    assert head.kept == kept
    view: dict[str, str] = {}
    for name, value in seen.fields:
        lname = name.lower()
        if ACTIONS.get(lname) == F_INTERESTING:
            join_view(view, lname.decode("latin-1"), value.decode("latin-1"))
        elif ACTIONS.get(lname) == F_MARKER:
            view[ROUTED_MARKER] = "1"
    assert head.view == view
    hosts = [v for n, v in seen.fields if n.lower() == b"host"]
    assert hosts == [head.host]
    lengths = [v for n, v in seen.fields if n.lower() == b"content-length"]
    assert head.content_length == (int(lengths[0]) if lengths else -1)
    assert len(seen.body) == max(head.content_length, 0)
    assert head.end + len(seen.body) == len(raw)
    return True


PLAIN = (b"GET /a?b=1 HTTP/1.1\r\nHost: svc:8080\r\nUser-Agent: t/1\r\n"
         b"X-Routing-Key: alice\r\nConnection: keep-alive\r\nVia: 1.1 other\r\n"
         b"Cookie: a=1\r\n\r\n")


def test_a_plain_head_is_read_whole() -> None:
    assert check_same(PLAIN)
    head = parse_request(PLAIN, 0, ACTIONS, NAMES, 8192, 100)
    assert head is not None
    assert head.kept == (b"Host: svc:8080\r\nUser-Agent: t/1\r\nX-Routing-Key: alice\r\n"
                         b"Cookie: a=1\r\n")
    assert head.view == {"x-routing-key": "alice"}
    assert head.via == b"1.1 other"


def test_a_body_and_the_next_request_follow_the_head() -> None:
    raw = b"POST /u HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc"
    assert check_same(raw)
    head = parse_request(raw + PLAIN, 0, ACTIONS, NAMES, 8192, 100)
    assert head is not None and head.end == len(raw) - 3
    assert parse_request(raw + PLAIN, len(raw), ACTIONS, NAMES, 8192, 100) is not None


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: svc\r\n",  # incomplete
    b"GET / HTTP/1.0\r\nHost: svc\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"GET http://svc/ HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nX:  two spaces\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nX: trailing \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nX:none\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nX: a\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\nX: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nX: caf\xc3\xa9\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nX\x00: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nBad Name: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nx_routing_key: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nHost: svc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
    b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 01\r\n\r\na",
    b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: +1\r\n\r\na",
    b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close, x-routing-key\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n",
])
def test_anything_unusual_goes_to_the_full_parser(raw: bytes) -> None:
    assert parse_request(raw, 0, ACTIONS, NAMES, 8192, 100) is None


def test_limits_go_to_the_full_parser() -> None:
    many = b"GET / HTTP/1.1\r\nHost: svc\r\n" + b"X-A: b\r\n" * 10 + b"\r\n"
    assert parse_request(many, 0, ACTIONS, NAMES, 8192, 11) is not None
    assert parse_request(many, 0, ACTIONS, NAMES, 8192, 10) is None
    assert parse_request(many, 0, ACTIONS, NAMES, 60, 100) is None


def test_nothing_in_the_malformed_corpus_passes() -> None:
    for case in CORPUS:
        head = parse_request(case.raw, 0, ACTIONS, NAMES, 8192, 100)
        if case.phase == HEAD:
            assert head is None or not valid_host(head.host), case.id
        if head is not None:
            check_same(case.raw)


def test_the_written_head_matches_the_field_path() -> None:
    head = parse_request(PLAIN, 0, ACTIONS, NAMES, 8192, 100)
    assert head is not None
    hop = Hop(b"10.0.0.9", b"http", b"1.1 forklane")
    injection = (frozenset({b"x-routing-key", b"baggage"}),
                 ((b"x-routing-key", b"alice"), (b"baggage", b"k=alice")))
    out = write_request_head(head.method, head.target, head.kept, injection, hop, head.xff,
                             head.xfp, head.xfh, head.host, head.via, None)
    assert out == (b"GET /a?b=1 HTTP/1.1\r\nHost: svc:8080\r\nUser-Agent: t/1\r\n"
                   b"Cookie: a=1\r\nx-routing-key: alice\r\nbaggage: k=alice\r\n"
                   b"x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n"
                   b"x-forwarded-host: svc:8080\r\nvia: 1.1 other, 1.1 forklane\r\n\r\n")


def test_drop_fields_matches_names_not_values() -> None:
    block = b"A: x-b: 1\r\nX-B: 2\r\nx-bc: 3\r\n"
    assert drop_fields(block, frozenset({b"x-b"})) == b"A: x-b: 1\r\nx-bc: 3\r\n"
    assert drop_fields(block, frozenset({b"y"})) is block


# Mostly well-formed pieces with a few bad ones mixed in, so that many generated heads are
# accepted (and compared) and many are one defect away from it.
_NAMES = st.sampled_from([b"X-Other", b"Accept", b"X-Routing-Key", b"Baggage", b"Cookie",
                          b"Content-Length", b"Connection", b"Via", b"X-Forwarded-For",
                          b"Keep-Alive", b"TE", b"X-Explain", b"Trailer", b"x-other",
                          b"Host", b"Upgrade", b"Transfer-Encoding", b"x_routing_key",
                          b"Bad Name", b"", b"A\x7f", b"A(b)"])
_GOOD = [b"svc", b"a=1", b"0", b"3", b"close", b"keep-alive", b"Close", b"x, y", b"1.1 p",
         b"a b", b"a\tb", b"k=v;q=1"]
_VALUE = st.sampled_from(_GOOD) | st.sampled_from([b"03", b"chunked", b"-1", b"caf\xe9"]) | (
    st.binary(max_size=8).map(lambda b: b.replace(b"\r\n", b"")))
_SEP = st.sampled_from([b": "] * 8 + [b":", b":  ", b": \t", b" : "])
_EOL = st.sampled_from([b"\r\n"] * 10 + [b"\n", b" \r\n", b"\r"])
_GOOD_LINE = st.tuples(st.sampled_from([b"X-Other", b"Accept", b"X-Routing-Key", b"Cookie",
                                         b"Baggage", b"Via", b"X-Forwarded-For", b"X-Explain",
                                         b"Keep-Alive"]),
                       st.just(b": "), st.sampled_from(_GOOD), st.just(b"\r\n")) | st.tuples(
    st.sampled_from([b"Connection", b"connection"]), st.just(b": "),
    st.sampled_from([b"close", b"keep-alive", b"Keep-Alive"]), st.just(b"\r\n"))
_ANY_LINE = st.tuples(_NAMES, _SEP, _VALUE, _EOL)
_START = st.sampled_from([b"GET / HTTP/1.1"] * 4 + [
    b"POST /u?x=1 HTTP/1.1", b"GET /%zz HTTP/1.1", b"HEAD /a#f HTTP/1.1", b"GET / HTTP/1.0",
    b"GET /a b HTTP/1.1", b"PATCH /\x01 HTTP/1.1", b"DELETE * HTTP/1.1", b"GET / http/1.1",
    b"OPTIONS /a:b@c HTTP/1.1"])


@settings(max_examples=2000, deadline=None)
@given(_START, st.sampled_from([True, True, True, False]), st.lists(_GOOD_LINE, max_size=8),
       st.lists(st.tuples(st.integers(0, 8), _ANY_LINE), max_size=2),
       st.none() | st.integers(0, 9), st.binary(max_size=6))
def test_generated_heads_agree_with_the_full_parser(
    start: bytes,
    host: bool,
    lines: list[tuple[bytes, bytes, bytes, bytes]],
    odd: list[tuple[int, tuple[bytes, bytes, bytes, bytes]]],
    length: int | None,
    tail: bytes,
) -> None:
    """Well-formed field lines with up to two arbitrary ones slipped in."""
    for at, line in odd:
        lines.insert(at, line)
    fields = b"".join(n + s + v + e for n, s, v, e in lines)
    if length is not None:
        fields += b"Content-Length: %d\r\n" % length
    raw = start + b"\r\n" + (b"Host: svc\r\n" if host else b"") + fields + b"\r\n" + tail
    head = parse_request(raw, 0, ACTIONS, NAMES, 8192, 100)
    if head is None:
        return
    # The message alone (bytes after it belong to the next one); a body still to come is
    # padded so both parsers see a complete message.
    size = head.end + max(head.content_length, 0)
    check_same(raw[:size] + b"z" * (size - len(raw)))


# -- responses --------------------------------------------------------------------------------


@dataclass
class FullResponse:
    fields: list[tuple[bytes, bytes]] = field(default_factory=list)
    reason: bytes = b""
    body: bytes = b""
    done: bool = False
    status: int = 0
    keep_alive: bool = False
    parser: httptools.HttpResponseParser | None = None

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


_RESPONSE_DROPPED = {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                     b"proxy-authorization", b"te", b"trailer", b"content-length", b"via"}


def check_same_response(raw: bytes) -> bool:
    head = parse_response(raw, 0)
    if head is None:
        return False
    seen = FullResponse()
    seen.parser = httptools.HttpResponseParser(seen)
    try:
        seen.parser.feed_data(raw)
    except httptools.HttpParserError:
        raise AssertionError(f"accepted what httptools rejects: {raw!r}") from None
    assert seen.done
    assert (seen.status, seen.keep_alive) == (head.status, head.keep_alive)
    assert head.line == status_line(seen.status, seen.reason)
    assert head.kept == b"".join(n + b": " + v + b"\r\n" for n, v in seen.fields
                                 if n.lower() not in _RESPONSE_DROPPED)
    lengths = [v for n, v in seen.fields if n.lower() == b"content-length"]
    assert lengths == [head.length] and head.content_length == len(seen.body)
    vias = [v for n, v in seen.fields if n.lower() == b"via"]
    assert head.via == (b", ".join(vias) if vias else None)
    assert head.end + head.content_length == len(raw)
    return True


def test_a_plain_response_head_is_read_whole() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
           b"Connection: keep-alive\r\nVia: 1.1 app\r\nX-A: b\r\n\r\nok")
    assert check_same_response(raw)
    head = parse_response(raw, 0)
    assert head is not None
    assert head.kept == b"Content-Type: text/plain\r\nX-A: b\r\n"


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n\r\n",  # close-delimited
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: a\r\n b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX:a\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nBad Name: a\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n",
])
def test_unusual_responses_go_to_the_full_parser(raw: bytes) -> None:
    assert parse_response(raw, 0) is None


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 503 X Y",
                        b"HTTP/1.1 2000 OK", b"HTTP/1.1 20x OK", b"HTTP/1.1 200 \x01"]),
       st.lists(_GOOD_LINE, max_size=6),
       st.lists(st.tuples(st.integers(0, 6), _ANY_LINE), max_size=2),
       st.integers(0, 9), st.binary(max_size=9))
def test_generated_responses_agree_with_the_full_parser(
    start: bytes,
    lines: list[tuple[bytes, bytes, bytes, bytes]],
    odd: list[tuple[int, tuple[bytes, bytes, bytes, bytes]]],
    length: int,
    body: bytes,
) -> None:
    for at, line in odd:
        lines.insert(at, line)
    lines.append((b"Content-Length", b": ", b"%d" % length, b"\r\n"))
    fields = b"".join(n + s + v + e for n, s, v, e in lines)
    raw = start + b"\r\n" + fields + b"\r\n" + (body + b"z" * length)[:length]
    check_same_response(raw)
