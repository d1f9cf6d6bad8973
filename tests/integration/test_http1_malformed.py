"""Malformed and ambiguous HTTP/1.1 requests are answered by the proxy and never forwarded.

Every case of the corpus is written over a raw socket together with a smuggled second request
in the same write. The proxy must answer the first with the status the specifications call for
(400, 431, 501, 505, 405) and an `x-forklane-error` reason, close the connection, and the
recording upstream must never see a byte of the smuggled request.

Two kinds of failure are told apart:
- `HEAD`: the problem is in the request line or the fields, so nothing at all may reach the
  upstream;
- `BODY`: the problem is in a chunked body the proxy was already streaming. The head may have
  gone out, but the upstream connection is cut, so the upstream never sees a complete request.

After each case a sentinel request on a fresh connection proves the proxy still serves, and
fences the upstream recording: whatever the case had sent upstream has arrived by then.
One proxy and one pair of upstreams serve the whole module to keep it fast.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.support.processes import Proc, start_proxy, write_config
from tests.support.rawhttp import parse_responses, send_raw
from tests.support.upstream import RecordingUpstream

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the loop the rig lives in

HEAD, BODY = "head", "body"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n"
KEY = "alice-1"


@dataclass(frozen=True)
class Case:
    id: str
    raw: bytes
    status: int = 400
    error: str | None = None  # expected x-forklane-error, when the reason is specific
    phase: str = HEAD


def get(*fields: bytes, target: bytes = b"/", version: bytes = b"HTTP/1.1") -> bytes:
    """A GET with `Host: svc` first, then `fields`, then the blank line."""
    lines = [b"GET " + target + b" " + version, b"Host: svc", *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def post(*fields: bytes, body: bytes = b"") -> bytes:
    lines = [b"POST /upload HTTP/1.1", b"Host: svc", *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked", body=body)


def _corpus() -> list[Case]:
    cases: list[Case] = []

    def add(id: str, raw: bytes, status: int = 400, error: str | None = None,
            phase: str = HEAD) -> None:
        cases.append(Case(id, raw, status, error, phase))

    # -- Content-Length together with Transfer-Encoding (RFC 9112 §6.1, §6.3) ---------------
    add("cl-then-te", post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"))
    add("te-then-cl", post(b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n"))
    add("cl-zero-and-te", post(b"Content-Length: 0", b"Transfer-Encoding: chunked",
                               body=b"0\r\n\r\n"))
    add("cl-and-te-gzip-chunked", post(b"Content-Length: 5",
                                       b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"))

    # -- Content-Length must be 1*DIGIT ------------------------------------------------------
    for id, value in [
        ("cl-plus-sign", b"+4"),
        ("cl-minus-sign", b"-4"),
        ("cl-underscore", b"1_0"),
        ("cl-hex-prefix", b"0x4"),
        ("cl-hex-digits", b"4a"),
        ("cl-space-inside", b"1 0"),
        ("cl-tab-inside", b"1\t0"),
        ("cl-empty", b""),
        ("cl-letters", b"four"),
        ("cl-decimal-point", b"4.0"),
        ("cl-exponent", b"4e0"),
        ("cl-huge", b"99999999999999999999999999"),
        ("cl-2-pow-64", b"18446744073709551616"),
        ("cl-trailing-comma", b"4,"),
        ("cl-list-unequal", b"4, 5"),
        ("cl-list-equal", b"4, 4"),
    ]:
        add(id, post(b"Content-Length: " + value, body=b"abcd"))
    add("cl-two-lines-unequal", post(b"Content-Length: 4", b"Content-Length: 5", body=b"abcd"))
    add("cl-two-lines-equal", post(b"Content-Length: 4", b"Content-Length: 4", body=b"abcd"))

    # -- Transfer-Encoding: last coding chunked, and only codings we can forward -------------
    for id, value, status, error in [
        ("te-gzip-only", b"gzip", 400, "bad-transfer-encoding"),
        ("te-identity", b"identity", 400, "bad-transfer-encoding"),
        ("te-xchunked", b"xchunked", 400, "bad-transfer-encoding"),
        ("te-chunked-then-gzip", b"chunked, gzip", 400, None),
        ("te-chunked-twice", b"chunked, chunked", 400, None),
        ("te-empty", b"", 400, None),
        ("te-gzip-then-chunked", b"gzip, chunked", 501, "unsupported-transfer-coding"),
        ("te-deflate-then-chunked", b"deflate, chunked", 501, "unsupported-transfer-coding"),
        ("te-unknown-then-chunked", b"x-custom, chunked", 501, "unsupported-transfer-coding"),
    ]:
        add(id, post(b"Transfer-Encoding: " + value, body=b"0\r\n\r\n"), status, error)
    add("te-two-lines-gzip-chunked",
        post(b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        501, "unsupported-transfer-coding")
    add("te-two-lines-chunked-gzip",
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", body=b"0\r\n\r\n"))
    add("te-space-before-colon", post(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"))
    add("te-vertical-tab", post(b"Transfer-Encoding:\x0bchunked", body=b"0\r\n\r\n"))
    add("te-http-1.0",
        b"POST /upload HTTP/1.0\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400, "bad-transfer-encoding")

    # -- chunk sizes are 1*HEXDIG; chunk framing exact (the body is already streaming) -------
    for id, body in [
        ("chunk-size-0x-prefix", b"0x4\r\nabcd\r\n0\r\n\r\n"),
        ("chunk-size-leading-space", b" 4\r\nabcd\r\n0\r\n\r\n"),
        ("chunk-size-trailing-space", b"4 \r\nabcd\r\n0\r\n\r\n"),
        ("chunk-size-negative", b"-4\r\nabcd\r\n0\r\n\r\n"),
        ("chunk-size-plus", b"+4\r\nabcd\r\n0\r\n\r\n"),
        ("chunk-size-overflow", b"FFFFFFFFFFFFFFFFF\r\nabcd\r\n0\r\n\r\n"),
        ("chunk-size-overflow-by-one", b"10000000000000000\r\nabcd\r\n0\r\n\r\n"),
        ("chunk-size-empty", b"\r\nabcd\r\n0\r\n\r\n"),
        ("chunk-size-not-hex", b"g\r\nabcd\r\n0\r\n\r\n"),
        ("chunk-size-underscore", b"1_0\r\nabcd\r\n0\r\n\r\n"),
        ("chunk-size-bare-lf", b"4\nabcd\r\n0\r\n\r\n"),
        ("chunk-data-too-long", b"4\r\nabcdX\r\n0\r\n\r\n"),
        ("chunk-data-bare-lf", b"4\r\nabcd\n0\r\n\r\n"),
        ("chunk-ext-bare-lf", b"4;a\nb\r\nabcd\r\n0\r\n\r\n"),
        ("chunk-ext-nul", b"4;a\x00b\r\nabcd\r\n0\r\n\r\n"),
        ("chunk-last-bare-lf", b"4\r\nabcd\r\n0\n\r\n"),
        ("chunk-trailer-space-before-colon", b"4\r\nabcd\r\n0\r\nX-T : v\r\n\r\n"),
        ("chunk-trailer-nul", b"4\r\nabcd\r\n0\r\nX-T: a\x00b\r\n\r\n"),
    ]:
        add(id, chunked(body), phase=BODY)

    # -- field syntax: whitespace before the colon, obs-fold, missing colon ------------------
    add("space-before-colon", get(b"X-A : b"))
    add("tab-before-colon", get(b"X-A\t: b"))
    add("space-before-colon-host", b"GET / HTTP/1.1\r\nHost : svc\r\n\r\n")
    add("obs-fold-space", get(b"X-A: b", b" c"))
    add("obs-fold-tab", get(b"X-A: b", b"\tc"))
    add("obs-fold-into-cl", post(b"Content-Length:", b" 4", body=b"abcd"))
    add("leading-space-first-field", b"GET / HTTP/1.1\r\n Host: svc\r\n\r\n")
    add("field-without-colon", get(b"X-A b"))
    add("field-empty-name", get(b": b"))

    # -- CR, LF, NUL and every other CTL in a field value (RFC 9110 §5.5); HTAB is allowed --
    ctls = [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]
    for byte in ctls:
        add(f"value-ctl-{byte:02x}", get(b"X-A: a" + bytes([byte]) + b"b"))
    add("value-bare-cr", get(b"X-A: a\rb"))
    add("value-bare-lf", get(b"X-A: a\nb"))
    add("host-value-nul", b"GET / HTTP/1.1\r\nHost: svc\x00.evil\r\n\r\n")

    # -- field names are tokens: CTLs and separators are not allowed -------------------------
    for byte in (0x00, 0x01, 0x0D, 0x7F):
        add(f"name-ctl-{byte:02x}", get(b"X" + bytes([byte]) + b"A: b"))
    for char in b' "(),/;<=>?@[\\]{}':
        add(f"name-separator-{char:02x}", get(b"X" + bytes([char]) + b"A: b"))

    # -- line endings are CRLF -----------------------------------------------------------------
    add("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: svc\n\n")
    add("bare-lf-request-line", b"GET / HTTP/1.1\nHost: svc\r\n\r\n")
    add("bare-lf-after-field", b"GET / HTTP/1.1\r\nHost: svc\nX-A: b\r\n\r\n")
    add("bare-lf-terminator", b"GET / HTTP/1.1\r\nHost: svc\r\n\n")
    add("bare-cr-request-line", b"GET / HTTP/1.1\rHost: svc\r\n\r\n")
    add("bare-cr-after-field", b"GET / HTTP/1.1\r\nHost: svc\rX-A: b\r\n\r\n")

    # -- Host: exactly one, and a valid authority (RFC 9112 §3.2) -----------------------------
    add("host-missing", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", error="missing-host")
    add("host-twice-same", get(b"Host: svc"), error="duplicate-host")
    add("host-twice-different", get(b"Host: other"), error="duplicate-host")
    add("host-twice-first-empty", b"GET / HTTP/1.1\r\nHost: \r\nHost: svc\r\n\r\n",
        error="duplicate-host")
    for id, value in [
        ("host-space-inside", b"s vc"),
        ("host-userinfo", b"user@svc"),
        ("host-slash", b"svc/path"),
        ("host-question-mark", b"svc?x"),
        ("host-fragment", b"svc#x"),
        ("host-backslash", b"svc\\x"),
        ("host-port-letters", b"svc:abc"),
        ("host-port-too-long", b"svc:123456"),
        ("host-two-ports", b"svc:80:80"),
        ("host-unclosed-bracket", b"[::1"),
        ("host-bad-ip-literal", b"[::g]"),
        ("host-quote", b'"svc"'),
    ]:
        add(id, b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n", error="bad-host")

    # -- HTTP versions: this parser speaks 1.0 and 1.1 only (505) --------------------------
    add("http-0.9-bare", b"GET /\r\n\r\n", 505, "unsupported-version")
    add("http-0.9", get(version=b"HTTP/0.9"), 505, "unsupported-version")
    add("http-1.2", get(version=b"HTTP/1.2"), 505, "unsupported-version")
    add("http-2.0", get(version=b"HTTP/2.0"), 505, "unsupported-version")
    add("http-3.0", get(version=b"HTTP/3.0"), 505, "unsupported-version")
    add("http-version-lowercase", get(version=b"http/1.1"))
    add("http-version-two-digits", get(version=b"HTTP/11.1"))
    add("http-version-missing-minor", get(version=b"HTTP/1"))
    # (The HTTP/2 preface itself is valid h2c now; see test_http2's preface-smuggling case.)

    # -- methods ----------------------------------------------------------------------------
    # Methods are case-sensitive tokens (RFC 9110 §9.1): `get` and `FOO` are extension methods
    # this parser cannot read, answered 501 as §9.1 recommends; `G@T` is not a token (400).
    add("method-lowercase", b"get / HTTP/1.1\r\nHost: svc\r\n\r\n", 501, "unknown-method")
    add("method-unknown", b"FOO / HTTP/1.1\r\nHost: svc\r\n\r\n", 501, "unknown-method")
    add("method-extension", b"PURGEX /x HTTP/1.1\r\nHost: svc\r\n\r\n", 501,
        "unknown-method")
    add("method-separator", b"G@T / HTTP/1.1\r\nHost: svc\r\n\r\n")
    add("method-empty", b" / HTTP/1.1\r\nHost: svc\r\n\r\n")
    add("method-connect", b"CONNECT svc:80 HTTP/1.1\r\nHost: svc:80\r\n\r\n", 405,
        "connect-unsupported")

    # -- request targets --------------------------------------------------------------------
    add("target-space-inside", get(target=b"/a b"))
    add("target-tab-inside", get(target=b"/a\tb"))
    add("target-nul", get(target=b"/a\x00b"))
    add("target-del", get(target=b"/a\x7fb"))
    add("target-empty", b"GET  HTTP/1.1\r\nHost: svc\r\n\r\n")
    add("target-relative", get(target=b"a/b"))
    add("target-absolute-no-host", get(target=b"http:///x"))
    add("target-absolute-bad-port", get(target=b"http://svc:abc/x"))

    # -- Connection must not nominate what frames or routes the request (RFC 9110 §7.6.1) ----
    # The body of each is itself a request: forwarded without its framing, an upstream would
    # read it as a second, never-routed request.
    inner = b"GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n"
    length = b"Content-Length: %d" % len(inner)
    for id, conn in [
        ("connection-names-content-length", b"content-length"),
        ("connection-names-content-length-mixed-case", b"Content-Length"),
        ("connection-names-keep-alive-and-content-length", b"keep-alive, content-length"),
        ("connection-names-content-length-after-close", b"close,content-length"),
        ("connection-names-host", b"host"),
        ("connection-names-routing-header", b"x-forklane-routing-key"),
        ("connection-names-baggage", b"baggage"),
        ("connection-names-routed-mark", b"x-forklane-routed"),
        ("connection-names-traceparent", b"traceparent"),
    ]:
        add(id, post(b"Connection: " + conn, length, body=inner), error="bad-connection-header")
    add("connection-two-lines-second-names-content-length",
        post(b"Connection: keep-alive", b"Connection: content-length", length, body=inner),
        error="bad-connection-header")
    add("connection-names-transfer-encoding",
        post(b"Connection: transfer-encoding", b"Transfer-Encoding: chunked",
             body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)),
        error="bad-connection-header")

    # -- limits (Envoy's defaults: 60 KiB, 100 fields) -> 431 --------------------------------
    add("field-value-70kib", get(b"X-A: " + b"a" * 70_000), 431, "headers-too-large")
    add("fields-101", get(*(b"X-F%d: v" % i for i in range(100))), 431, "headers-too-large")
    add("fields-many-small-over-60kib", get(*(b"X-F%d: %s" % (i, b"v" * 700)
                                              for i in range(90))), 431, "headers-too-large")
    add("target-70kib", get(target=b"/" + b"a" * 70_000), 431, "headers-too-large")
    return cases


CORPUS = _corpus()
# What ran in this session, so the metrics check at the end counts exactly that.
_ran: list[str] = []
_underscored: list[str] = []


@dataclass
class Rig:
    proxy: Proc
    baseline: RecordingUpstream
    fork: RecordingUpstream

    @property
    def port(self) -> int:
        return self.proxy.ports["outbound"]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    """One proxy in front of a baseline and a fork of `svc`, shared by the whole corpus."""
    baseline = await RecordingUpstream("baseline").start()
    fork = await RecordingUpstream("fork").start()
    path: Path = tmp_path_factory.mktemp("malformed")
    config = write_config(path / "routing.yaml", {
        "version": "malformed-1",
        "services": [{"name": "svc", "endpoints": [baseline.address]}],
        "forks": [{"routing_key": KEY, "service": "svc", "endpoints": [fork.address]}],
    })
    proxy = await asyncio.to_thread(start_proxy, config, path / "proxy.log")
    try:
        yield Rig(proxy, baseline, fork)
    finally:
        await asyncio.to_thread(proxy.stop)
        await baseline.aclose()
        await fork.aclose()


async def sentinel(rig: Rig, name: str) -> None:
    """A well-formed request after a case: the proxy still serves, and it reaches baseline."""
    data = await send_raw(
        rig.port, b"GET /sentinel/" + name.encode() + b" HTTP/1.1\r\nHost: svc\r\n"
        b"Connection: close\r\n\r\n")
    [resp] = parse_responses(data)
    assert resp.status == 200 and resp.header("x-upstream") == "baseline", data


def test_corpus_is_large_and_ids_unique() -> None:
    ids = [c.id for c in CORPUS]
    assert len(ids) >= 100
    assert len(set(ids)) == len(ids)


@in_module_loop
@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
async def test_malformed_request_is_answered_and_never_forwarded(rig: Rig, case: Case) -> None:
    raw_before = len(rig.baseline.raw)
    requests_before = len(rig.baseline.requests)
    fork_before = len(rig.fork.raw)

    data = await send_raw(rig.port, case.raw + SMUGGLED)  # returns only once the proxy closed
    _ran.append(case.id)

    responses = parse_responses(data)
    assert len(responses) == 1, f"expected exactly one answer, got {data!r}"
    [resp] = responses
    assert resp.complete, data
    assert resp.status == case.status, data
    error = resp.header("x-forklane-error")
    assert error, data
    if case.error is not None:
        assert error == case.error, data
    assert resp.header("connection") == "close", data

    await sentinel(rig, case.id)
    seen = bytes(rig.baseline.raw[raw_before:])
    assert b"/smuggled" not in seen
    assert [r.target for r in rig.baseline.requests[requests_before:]] == [
        f"/sentinel/{case.id}"
    ], "the upstream received a complete request it should never have seen"
    if case.phase == HEAD:
        assert seen.count(b" HTTP/1.1\r\n") == 1, f"bytes of the case reached the upstream: {seen!r}"
    assert len(rig.fork.raw) == fork_before


@in_module_loop
@pytest.mark.parametrize(
    "name",
    ["x_forklane_routing_key", "X_Forklane_Routing_Key", "x-forklane_routing-key",
     "x_forklane-routing-key"],
)
async def test_underscore_lookalike_never_routes_nor_reaches_upstream(rig: Rig, name: str) -> None:
    """Envoy's headers_with_underscores_action: a look-alike of the routing header is dropped,
    so it neither steers this hop to the fork nor a later hop that folds `_` into `-`."""
    before = len(rig.baseline.raw)
    fork_before = len(rig.fork.raw)
    async with httpx.AsyncClient(base_url=rig.proxy.url()) as client:
        resp = await client.get("/lookalike", headers={"host": "svc", name: KEY})
    _underscored.append(name)
    assert resp.status_code == 200
    assert resp.headers["x-upstream"] == "baseline"
    seen = bytes(rig.baseline.raw[before:]).lower()
    assert b"/lookalike" in seen
    assert b"x_forklane" not in seen and b"forklane_routing" not in seen
    assert KEY.encode() not in seen
    assert len(rig.fork.raw) == fork_before


@in_module_loop
async def test_routing_header_itself_reaches_the_fork(rig: Rig) -> None:
    """The control for the look-alike cases: the real header does route to the fork."""
    async with httpx.AsyncClient(base_url=rig.proxy.url()) as client:
        resp = await client.get("/keyed", headers={"host": "svc", "x-forklane-routing-key": KEY})
    assert resp.status_code == 200
    assert resp.headers["x-upstream"] == "fork"


def _metric_sum(text: str, family: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"{family}(\{{.*\}})? ", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


@in_module_loop
async def test_proxy_is_healthy_after_the_corpus(rig: Rig) -> None:
    """Runs last: a normal request still works, nothing smuggled ever arrived, and every
    rejected case was counted."""
    async with httpx.AsyncClient(base_url=rig.proxy.url()) as client:
        resp = await client.get("/after-corpus", headers={"host": "svc"})
    assert resp.status_code == 200 and resp.headers["x-upstream"] == "baseline"
    assert b"/smuggled" not in rig.baseline.raw
    assert b"/smuggled" not in rig.fork.raw
    async with httpx.AsyncClient(base_url=rig.proxy.url("admin")) as admin:
        metrics = (await admin.get("/metrics")).text
    assert _metric_sum(metrics, "forklane_rejected_requests_total") == len(_ran)
    assert _metric_sum(metrics, "forklane_underscore_headers_dropped_total") == len(_underscored)
