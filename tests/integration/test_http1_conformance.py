"""HTTP/1.1 done properly, as a client and an upstream see it through the proxy.

Keep-alive on both sides, pipelining, HEAD/204/304, `Expect: 100-continue`, chunked bodies
streamed both ways with trailers, hop-by-hop fields, X-Forwarded-* and Via, HTTP/1.0 clients,
the header deadline (408), and 1 GiB each way with the proxy's memory bounded.

Real clients (httpx, aiohttp, raw sockets where the exact bytes matter) talk to a real proxy
process in front of recording upstreams. Most tests share one proxy (module scope) and reset
the upstreams' behaviour; those that need other proxy flags start their own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import pytest_asyncio

from tests.support.processes import Proc, start_proxy, write_config
from tests.support.rawhttp import (
    parse_responses,
    read_head,
    read_response,
    read_until_closed,
    send_raw,
)
from tests.support.upstream import Behaviour, RecordingUpstream

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the loop the shared rig lives in
KEY = "bob-42"


@dataclass
class Rig:
    proxy: Proc
    base: RecordingUpstream  # service `svc`
    fork: RecordingUpstream  # KEY's fork of `svc`
    slow: RecordingUpstream  # service `slow`
    keepalive: RecordingUpstream  # service `ka`, used by one test only (connection counts)

    @property
    def port(self) -> int:
        return self.proxy.ports["outbound"]

    def reset(self) -> None:
        for up in (self.base, self.fork, self.slow, self.keepalive):
            up.behaviour = Behaviour()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared_rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    ups = [await RecordingUpstream(n).start() for n in ("baseline", "fork", "slow", "ka")]
    base, fork, slow, keepalive = ups
    path: Path = tmp_path_factory.mktemp("conformance")
    config = write_config(path / "routing.yaml", {
        "version": "conformance-1",
        "services": [
            {"name": "svc", "endpoints": [base.address]},
            {"name": "slow", "endpoints": [slow.address]},
            {"name": "ka", "endpoints": [keepalive.address]},
        ],
        "forks": [{"routing_key": KEY, "service": "svc", "endpoints": [fork.address]}],
    })
    proxy = await asyncio.to_thread(start_proxy, config, path / "proxy.log")
    try:
        yield Rig(proxy, base, fork, slow, keepalive)
    finally:
        await asyncio.to_thread(proxy.stop)
        for up in ups:
            await up.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def rig(shared_rig: Rig) -> Rig:
    shared_rig.reset()
    return shared_rig


async def open_conn(rig: Rig) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", rig.port)


async def close_conn(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition with a deadline (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def names(headers: list[tuple[str, str]]) -> set[str]:
    return {k.lower() for k, _ in headers}


# -- keep-alive and pipelining ----------------------------------------------------------------


@in_module_loop
async def test_keep_alive_on_both_sides(rig: Rig) -> None:
    """Ten sequential requests on one client connection use one upstream connection."""
    reader, writer = await open_conn(rig)
    try:
        for i in range(10):
            writer.write(b"GET /ka/%d HTTP/1.1\r\nHost: ka\r\n\r\n" % i)
            resp, _ = await read_response(reader)
            assert resp.status == 200
            assert json.loads(resp.body)["target"] == f"/ka/{i}"
            assert resp.header("connection") is None
    finally:
        await close_conn(writer)
    assert [r.target for r in rig.keepalive.requests] == [f"/ka/{i}" for i in range(10)]
    assert rig.keepalive.connections == 1


@in_module_loop
async def test_a_request_whose_first_read_is_one_byte_stays_http1(rig: Rig) -> None:
    """`P` alone could begin HTTP/2's preface (`PRI`) or `POST`/`PUT`/`PATCH`: the listener
    waits for the third byte instead of handing the connection to HTTP/2."""
    reader, writer = await open_conn(rig)
    try:
        writer.write(b"P")
        await writer.drain()
        await asyncio.sleep(0.05)  # pacing a slow client, so the proxy reads `P` alone
        writer.write(b"OST /one-byte HTTP/1.1\r\nHost: ka\r\nContent-Length: 0\r\n\r\n")
        resp, _ = await read_response(reader)
    finally:
        await close_conn(writer)
    assert resp.status == 200
    assert json.loads(resp.body)["target"] == "/one-byte"


@in_module_loop
async def test_aiohttp_client_reuses_its_connection(rig: Rig) -> None:
    """A pooling client (aiohttp, one connection) gets every answer on the same connection."""
    created: list[object] = []
    reused: list[object] = []

    async def on_create(session: Any, ctx: Any, params: Any) -> None:
        created.append(params)

    async def on_reuse(session: Any, ctx: Any, params: Any) -> None:
        reused.append(params)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        for i in range(5):
            async with session.get(f"{rig.proxy.url()}/aio/{i}", headers={"Host": "svc"}) as resp:
                assert resp.status == 200
                assert json.loads(await resp.read())["target"] == f"/aio/{i}"
    assert (len(created), len(reused)) == (1, 4)


@in_module_loop
async def test_pipelined_requests_are_answered_in_order(rig: Rig) -> None:
    """Four requests in one write: a slow one first, a local 404 in between, all in order."""
    rig.slow.behaviour.delay = 0.3
    reader, writer = await open_conn(rig)
    try:
        writer.write(
            b"GET /first HTTP/1.1\r\nHost: slow\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: svc\r\n\r\n"
            b"GET /third HTTP/1.1\r\nHost: nowhere.example\r\n\r\n"
            b"POST /fourth HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n"
            b"Connection: close\r\n\r\nabc"
        )
        data = await read_until_closed(reader)
    finally:
        await close_conn(writer)
    responses = parse_responses(data)
    assert [r.status for r in responses] == [200, 200, 404, 200]
    assert [r.header("x-upstream") for r in responses] == ["slow", "baseline", None, "baseline"]
    assert json.loads(responses[0].body)["target"] == "/first"
    assert json.loads(responses[1].body)["target"] == "/second"
    assert responses[2].header("x-forklane-error")
    assert json.loads(responses[3].body) == {
        "upstream": "baseline", "method": "POST", "target": "/fourth", "body_len": 3}


# -- responses without a body ------------------------------------------------------------------


@in_module_loop
async def test_head_response_has_no_body_even_with_content_length(rig: Rig) -> None:
    reader, writer = await open_conn(rig)
    try:
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: svc\r\n\r\n")
        head, _ = await read_response(reader, head_request=True)
        assert head.status == 200
        assert int(head.header("content-length") or 0) > 0  # what a GET would have carried
        writer.write(b"GET /after-head HTTP/1.1\r\nHost: svc\r\n\r\n")
        resp, _ = await read_response(reader)
    finally:
        await close_conn(writer)
    # Had the proxy sent a body after the HEAD answer, it would be read as this response.
    assert resp.status == 200 and json.loads(resp.body)["target"] == "/after-head"


@in_module_loop
@pytest.mark.parametrize("status", [204, 304])
async def test_204_and_304_carry_no_body_and_keep_the_connection(rig: Rig, status: int) -> None:
    rig.base.behaviour.status = status
    rig.base.behaviour.body = b"must not be sent"
    reader, writer = await open_conn(rig)
    try:
        writer.write(b"GET /empty HTTP/1.1\r\nHost: svc\r\n\r\n")
        resp, _ = await read_response(reader)
        assert resp.status == status
        assert resp.header("transfer-encoding") is None
        if status == 204:
            assert resp.header("content-length") is None
        rig.base.behaviour = Behaviour()
        writer.write(b"GET /next HTTP/1.1\r\nHost: svc\r\n\r\n")
        nxt, _ = await read_response(reader)
    finally:
        await close_conn(writer)
    assert nxt.status == 200 and json.loads(nxt.body)["target"] == "/next"


# -- Expect: 100-continue ------------------------------------------------------------------------


@in_module_loop
async def test_expect_100_continue_arrives_before_the_body_is_sent(rig: Rig) -> None:
    reader, writer = await open_conn(rig)
    try:
        writer.write(b"POST /expect HTTP/1.1\r\nHost: svc\r\nContent-Length: 11\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        interim = await read_head(reader)
        assert interim.startswith(b"HTTP/1.1 100 ")
        assert rig.base.requests == [] or rig.base.requests[-1].target != "/expect"
        writer.write(b"hello world")
        resp, _ = await read_response(reader)
    finally:
        await close_conn(writer)
    assert resp.status == 200
    assert json.loads(resp.body)["body_len"] == 11
    assert rig.base.requests[-1].body == b"hello world"


# -- chunked bodies, streamed, with trailers ------------------------------------------------------


@in_module_loop
async def test_chunked_request_is_streamed_and_keeps_its_trailers(rig: Rig) -> None:
    reader, writer = await open_conn(rig)
    try:
        writer.write(b"POST /stream-up HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n"
                     b"\r\n7\r\nfirst..\r\n")
        # The upstream has the first chunk while the client has not finished: streamed.
        await wait_until(lambda: b"first.." in rig.base.raw)
        assert not any(r.target == "/stream-up" for r in rig.base.requests)
        writer.write(b"6\r\nsecond\r\n0\r\nX-Checksum: abc123\r\n\r\n")
        resp, _ = await read_response(reader)
    finally:
        await close_conn(writer)
    assert resp.status == 200
    seen = rig.base.requests[-1]
    assert seen.target == "/stream-up" and seen.body == b"first..second"
    assert seen.header("x-checksum") == "abc123"  # the trailer field arrived (after the body)
    assert seen.header("transfer-encoding") == "chunked"


@in_module_loop
async def test_chunked_response_is_streamed_with_trailers(rig: Rig) -> None:
    gate = asyncio.Event()
    rig.base.behaviour = Behaviour(chunked=True, body=b"A" * 500 + b"B" * 500, mid_body=gate,
                                   trailers=[("x-digest", "42")])
    reader, writer = await open_conn(rig)
    try:
        writer.write(b"GET /stream-down HTTP/1.1\r\nHost: svc\r\nTE: trailers\r\n\r\n")
        head = await read_head(reader)
        assert b"transfer-encoding: chunked" in head.lower()
        async with asyncio.timeout(5):
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            first = await reader.readexactly(size + 2)
        # The client holds the first half while the upstream has not sent the second.
        assert first == b"A" * 500 + b"\r\n"
        gate.set()
        async with asyncio.timeout(5):
            rest = await reader.readuntil(b"\r\n0\r\n")
            trailers = await reader.readuntil(b"\r\n\r\n")
    finally:
        await close_conn(writer)
    assert rest.endswith(b"B" * 500 + b"\r\n0\r\n")
    assert trailers.lower() == b"x-digest: 42\r\n\r\n"


@in_module_loop
async def test_httpx_reads_a_chunked_response_whole(rig: Rig) -> None:
    body = bytes(range(256)) * 400
    rig.base.behaviour = Behaviour(chunked=True, body=body)
    async with httpx.AsyncClient(base_url=rig.proxy.url()) as client:
        resp = await client.get("/binary", headers={"host": "svc"})
    assert resp.status_code == 200
    assert resp.headers["transfer-encoding"] == "chunked"
    assert resp.content == body


# -- hop-by-hop fields and the forwarding headers --------------------------------------------


HOP_REQUEST = [
    ("Connection", "keep-alive, X-Secret-Hop"),
    ("X-Secret-Hop", "1"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ("TE", "trailers"),
    ("Trailer", "X-Foo"),
    ("Upgrade", "websocket"),
]


@in_module_loop
async def test_hop_by_hop_fields_are_removed_both_ways(rig: Rig) -> None:
    rig.base.behaviour.extra_headers = [
        ("Connection", "X-Resp-Hop"),
        ("X-Resp-Hop", "1"),
        ("Keep-Alive", "timeout=9"),
        ("Proxy-Authenticate", "Basic"),
        ("Proxy-Connection", "keep-alive"),
        ("Trailer", "X-T"),
        ("Upgrade", "foo"),
        ("X-Resp-Kept", "yes"),
    ]
    head = b"GET /hop HTTP/1.1\r\nHost: svc\r\nX-Kept: yes\r\n" + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in HOP_REQUEST) + b"\r\n"
    reader, writer = await open_conn(rig)
    try:
        writer.write(head)
        resp, _ = await read_response(reader)
    finally:
        await close_conn(writer)
    assert resp.status == 200
    seen = rig.base.requests[-1]
    forwarded = names(seen.headers)
    assert "x-kept" in forwarded
    for name in ("connection", "x-secret-hop", "keep-alive", "proxy-connection",
                 "proxy-authorization", "te", "trailer", "upgrade"):
        assert name not in forwarded, name
    answered = names(resp.headers)
    assert "x-resp-kept" in answered
    for name in ("x-resp-hop", "keep-alive", "proxy-authenticate", "proxy-connection",
                 "trailer", "upgrade"):
        assert name not in answered, name
    assert "x-resp-hop" not in (resp.header("connection") or "").lower()


@in_module_loop
@pytest.mark.parametrize(
    "carrier",
    [("x-forklane-routing-key", KEY), ("baggage", f"forklane-routing-key={KEY}")],
    ids=["header", "baggage"],
)
async def test_routing_carrier_named_in_connection_is_refused(
    rig: Rig, carrier: tuple[str, str]
) -> None:
    """A carrier nominated in Connection would route this hop on a field the next hop never
    sees: refused (400 `bad-connection-header`), never forwarded anywhere."""
    name, value = carrier
    base_before, fork_before = len(rig.base.requests), len(rig.fork.requests)
    async with httpx.AsyncClient(base_url=rig.proxy.url()) as client:
        named = await client.get("/hop-key", headers={
            "host": "svc", name: value, "connection": f"keep-alive, {name}"})
        control = await client.get("/key", headers={"host": "svc", name: value})
    assert named.status_code == 400
    assert named.headers["x-forklane-error"] == "bad-connection-header"
    assert name in named.text
    assert rig.base.requests[base_before:] == []
    assert [r.target for r in rig.fork.requests[fork_before:]] == ["/key"]
    assert control.headers["x-upstream"] == "fork"  # the same carrier, not nominated, routes


@in_module_loop
async def test_forwarded_headers_and_via_are_added(rig: Rig) -> None:
    async with httpx.AsyncClient(base_url=rig.proxy.url()) as client:
        plain = await client.get("/fwd-plain", headers={"host": "svc"})
        chained = await client.get("/fwd-chained", headers={
            "host": "svc", "x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https",
            "x-forwarded-host": "shop.example", "via": "1.0 edge"})
    first, second = rig.base.requests[-2:]
    assert first.header("x-forwarded-for") == "127.0.0.1"
    assert first.header("x-forwarded-proto") == "http"
    assert first.header("x-forwarded-host") == "svc"
    assert first.header("via") == "1.1 forklane"
    assert second.header("x-forwarded-for") == "203.0.113.7, 127.0.0.1"
    assert second.header("x-forwarded-proto") == "https"
    assert second.header("x-forwarded-host") == "shop.example"
    assert second.header("via") == "1.0 edge, 1.1 forklane"
    assert "1.1 forklane" in plain.headers["via"]
    assert chained.status_code == 200


@in_module_loop
async def test_absolute_form_target_replaces_the_host_header(rig: Rig) -> None:
    """As HTTP_PROXY: the target's authority routes and is the Host the upstream sees."""
    data = await send_raw(rig.port, b"GET http://svc/abs?q=1 HTTP/1.1\r\nHost: slow\r\n"
                                    b"Connection: close\r\n\r\n")
    [resp] = parse_responses(data)
    assert resp.status == 200 and resp.header("x-upstream") == "baseline"
    seen = rig.base.requests[-1]
    assert seen.target == "/abs?q=1"
    assert seen.header("host") == "svc"


# -- HTTP/1.0 clients ---------------------------------------------------------------------------


@in_module_loop
async def test_http10_client_gets_a_close_delimited_answer(rig: Rig) -> None:
    rig.base.behaviour.chunked = True  # the upstream streams; a 1.0 client can't read chunks
    data = await send_raw(rig.port, b"GET /ten HTTP/1.0\r\nHost: svc\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert json.loads(body)["target"] == "/ten"


@in_module_loop
async def test_http10_keep_alive_is_honoured(rig: Rig) -> None:
    reader, writer = await open_conn(rig)
    try:
        for i in range(2):
            writer.write(b"GET /ten-ka/%d HTTP/1.0\r\nHost: svc\r\nConnection: keep-alive\r\n\r\n"
                         % i)
            resp, _ = await read_response(reader)
            assert resp.status == 200
            assert (resp.header("connection") or "").lower() == "keep-alive"
            assert json.loads(resp.body)["target"] == f"/ten-ka/{i}"
    finally:
        await close_conn(writer)


# -- the header deadline ------------------------------------------------------------------------


@pytest.fixture
async def deadline_proxy(
    upstreams: Callable[[str], Any], proxy_factory: Callable[..., Proc]
) -> Proc:
    base = await upstreams("baseline")
    return proxy_factory(
        {"version": "deadline-1", "services": [{"name": "svc", "endpoints": [base.address]}]},
        "--header-timeout", "0.5",
    )


async def test_slow_headers_get_408_and_close(deadline_proxy: Proc) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_proxy.ports["outbound"])
    started = time.monotonic()
    try:
        writer.write(b"GET /slow HTTP/1.1\r\nHost: svc\r\n")  # the blank line never comes
        data = await read_until_closed(reader, within=5)
    finally:
        await close_conn(writer)
    assert time.monotonic() - started >= 0.45
    [resp] = parse_responses(data)
    assert resp.status == 408 and resp.header("x-forklane-error") == "header-timeout"


async def test_trickled_headers_do_not_extend_the_deadline(deadline_proxy: Proc) -> None:
    """A slowloris client sending a byte every 100 ms still hits the 0.5 s header deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_proxy.ports["outbound"])
    head = b"GET /trickle HTTP/1.1\r\nHost: svc\r\nX-Pad: " + b"a" * 100
    answer = asyncio.ensure_future(read_until_closed(reader, within=5))
    try:
        for i in range(len(head)):
            if answer.done():
                break
            try:
                writer.write(head[i:i + 1])
            except ConnectionError:
                break
            await asyncio.sleep(0.1)  # pacing the slow client; the deadline is the proxy's
        data = await answer
    finally:
        answer.cancel()
        await close_conn(writer)
    [resp] = parse_responses(data)
    assert resp.status == 408


async def test_an_error_answer_survives_the_bytes_the_client_still_sends(rig: Rig) -> None:
    """A malformed head followed by 256 KiB the proxy will never read: the 400 still arrives.

    Closing with unread input makes the kernel reset the connection, and the reset can overtake
    the answer; the proxy shuts its side and reads the rest away first (a lingering close)."""
    for _ in range(5):
        reader, writer = await open_conn(rig)
        try:
            writer.write(b"GET /x HTTP/1.1\r\nHost: svc\r\nBad Header\r\n\r\n" + b"z" * 262144)
            data = await read_until_closed(reader, within=5)
        finally:
            await close_conn(writer)
        [resp] = parse_responses(data)
        assert resp.status == 400


async def test_silent_connection_is_closed_without_an_answer(deadline_proxy: Proc) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_proxy.ports["outbound"])
    try:
        data = await read_until_closed(reader, within=5)
    finally:
        await close_conn(writer)
    assert data == b""


# -- 1 GiB each way, memory bounded ------------------------------------------------------------

GIB = 1 << 30
RSS_LIMIT_KB = 120 * 1024  # the whole proxy process
GROWTH_LIMIT_KB = 24 * 1024  # over its peak before the transfer; buffering would need 1 GiB


def assert_memory_bounded(proxy: Proc, idle_peak_kb: int) -> None:
    peak = proxy.rss_peak_kb()
    assert peak < RSS_LIMIT_KB, f"the proxy's peak RSS was {peak} kB"
    assert peak - idle_peak_kb < GROWTH_LIMIT_KB, f"grew from {idle_peak_kb} to {peak} kB"


@pytest.fixture
async def big_rig(
    upstreams: Callable[[str], Any], proxy_factory: Callable[..., Proc]
) -> tuple[Proc, RecordingUpstream]:
    base = await upstreams("bulk")
    proxy = proxy_factory(
        {"version": "bulk-1", "services": [{"name": "svc", "endpoints": [base.address],
                                            "timeouts": {"request": 60}}]})
    return proxy, base


@pytest.mark.slow
async def test_upload_1gib_streams_with_bounded_memory(
    big_rig: tuple[Proc, RecordingUpstream]
) -> None:
    proxy, base = big_rig
    base.count_only = True
    idle_peak = proxy.rss_peak_kb()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports["outbound"])
    block = b"u" * (1 << 20)
    try:
        async with asyncio.timeout(60):
            writer.write(b"POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % GIB)
            for _ in range(GIB // len(block)):
                writer.write(block)
                await writer.drain()
            resp, _ = await read_response(reader, within=30)
    finally:
        await close_conn(writer)
    assert resp.status == 200
    assert base.body_bytes == GIB
    assert_memory_bounded(proxy, idle_peak)


@pytest.mark.slow
async def test_download_1gib_streams_with_bounded_memory(
    big_rig: tuple[Proc, RecordingUpstream]
) -> None:
    proxy, base = big_rig
    base.download_bytes = GIB
    idle_peak = proxy.rss_peak_kb()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports["outbound"])
    received = 0
    try:
        async with asyncio.timeout(60):
            writer.write(b"GET /download HTTP/1.1\r\nHost: svc\r\n\r\n")
            head = await read_head(reader)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"content-length: %d" % GIB in head.lower()
            while received < GIB:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    break
                received += len(chunk)
    finally:
        await close_conn(writer)
    assert received == GIB
    assert_memory_bounded(proxy, idle_peak)
