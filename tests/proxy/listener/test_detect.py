"""Protocol detection and first-request authorities as tables, plus properties over bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forklane.proxy.listener.detect import (
    PREFACE,
    Detected,
    classify,
    head_complete,
    request_authority,
)

TLS_HELLO = bytes.fromhex("16030100f8010000f40303")  # record header + ClientHello start
PG_STARTUP = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # SSLRequest
RESP = b"*1\r\n$4\r\nPING\r\n"


@pytest.mark.parametrize("data, expected", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Detected.HTTP1),
    (b"POST /x?y=1 HTTP/1.0\r\n", Detected.HTTP1),
    (b"OPTIONS * HTTP/1.1\r\n", Detected.HTTP1),
    (b"CONNECT db:5432 HTTP/1.1\r\n", Detected.HTTP1),
    (b"PROPFIND /dav HTTP/1.1\r\n", Detected.HTTP1),  # any token is a method
    (PREFACE, Detected.H2C),
    (PREFACE + b"\x00\x00\x00\x04", Detected.H2C),
    (TLS_HELLO, Detected.TLS),
    (PG_STARTUP, Detected.OPAQUE),
    (RESP, Detected.OPAQUE),
    (b"SSH-2.0-OpenSSH_9.2\r\n", Detected.OPAQUE),  # a token, but no space before the CRLF
    (b"GET / HTTP/2.0\r\n", Detected.OPAQUE),
    (b"GET /\r\n", Detected.OPAQUE),  # HTTP/0.9 is not forklane's
    (b"GET  / HTTP/1.1\r\n", Detected.OPAQUE),
    (b"GET / HTTP/1.1\n", Detected.OPAQUE),  # bare LF
    (b"\x16\x01", Detected.OPAQUE),
    (b"A" * 40 + b" / HTTP/1.1\r\n", Detected.OPAQUE),  # no method is that long
])
def test_classify(data: bytes, expected: Detected) -> None:
    assert classify(data) is expected


@pytest.mark.parametrize("prefix", [b"", b"G", b"GET", b"GET /", b"GET /index HTTP/1.",
                                    b"P", b"PRI * HTTP/2.0\r\n", b"\x16"])
def test_prefixes_wait_for_more(prefix: bytes) -> None:
    assert classify(prefix) is None


def test_a_request_line_longer_than_the_limit_is_not_waited_for() -> None:
    assert classify(b"GET /" + b"a" * 100, limit=64) is Detected.OPAQUE


REQUESTS = st.builds(
    lambda method, path, version: f"{method} /{path} HTTP/1.{version}\r\nHost: h\r\n\r\n".encode(),
    st.sampled_from(["GET", "POST", "DELETE", "PATCH", "M-SEARCH"]),
    st.text("abc/?=&%", max_size=30),
    st.sampled_from(["0", "1"]),
)


@given(REQUESTS, st.integers(min_value=0, max_value=80))
def test_a_prefix_of_a_request_is_http_or_undecided(request: bytes, cut: int) -> None:
    verdict = classify(request[:cut])
    assert verdict in (None, Detected.HTTP1)
    assert classify(request) is Detected.HTTP1


@given(st.binary(max_size=200))
def test_any_bytes_get_an_answer_or_a_wait_never_an_error(data: bytes) -> None:
    verdict = classify(data)
    if verdict is not None and data:
        # a decision never changes when more bytes arrive
        assert classify(data + b"\r\n\r\nmore") is verdict


@pytest.mark.parametrize("head, expected", [
    (b"GET / HTTP/1.1\r\nHost: Catalog:8080\r\nAccept: */*\r\n\r\n", b"catalog:8080"),
    (b"GET / HTTP/1.1\r\nhost:  api.example.com \r\n\r\n", b"api.example.com"),
    (b"GET http://Shop.Local:81/a?b HTTP/1.1\r\nHost: other\r\n\r\n", b"shop.local:81"),
    (b"GET http://u:p@h/ HTTP/1.1\r\n\r\n", b"h"),
    (b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n", b"db:5432"),
    (b"GET / HTTP/1.0\r\n\r\n", None),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", None),  # ambiguous
    (b"GET / HTTP/1.1\r\nbroken line\r\nHost: a\r\n\r\n", None),
    (b"GET ftp://h/ HTTP/1.1\r\n\r\n", None),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", None),
])
def test_request_authority(head: bytes, expected: bytes | None) -> None:
    assert request_authority(head) == expected


def test_head_complete() -> None:
    assert head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n") == -1
    head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert head_complete(head + b"body") == len(head)
