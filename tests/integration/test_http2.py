"""Plain HTTP/2 through a real proxy process: h2c prior knowledge and TLS with ALPN.

Upstreams are real h2c servers built on the `h2` state machine in the test loop; clients are
httpx with HTTP/2 and, where a test must misbehave on purpose (never reading, resetting every
stream), a raw `h2` client. The HTTP/1.1 routing matrix runs again here, unchanged.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import httpx
import pytest

from tests.integration.test_routing import KEY_CATALOG, KEY_PRICING, MATRIX
from tests.support.h2graceful import GracefulH2Connection
from tests.support.polling import eventually

pytestmark = pytest.mark.asyncio


class _UpConn(asyncio.Protocol):
    def __init__(self, server: H2Upstream) -> None:
        self.server = server
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, dict[str, Any]] = {}
        self.pending: dict[int, bytes] = {}  # response bytes waiting for window

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.connections += 1
        self.server.open.add(self)
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:  # e.g. an HTTP/1.1 request: h2c only here
            self.write()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                headers = list(event.headers)
                self.requests[event.stream_id] = {"headers": headers, "body": bytearray()}
                self.server.active += 1
                self.server.max_active = max(self.server.max_active, self.server.active)
            elif isinstance(event, h2.events.DataReceived):
                self.requests[event.stream_id]["body"] += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                req = self.requests[event.stream_id]
                self.server.seen.append(req)
                self.server.loop.create_task(self.answer(event.stream_id, req))
            elif isinstance(event, h2.events.WindowUpdated):
                self.flush_pending()
            elif isinstance(event, h2.events.StreamReset):
                self.server.resets.append(event.error_code)
                self.server.reset_seen.set()
                self.pending.pop(event.stream_id, None)
        self.write()

    def write(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())

    async def answer(self, sid: int, req: dict[str, Any]) -> None:
        server = self.server
        headers = dict(req["headers"])
        await server.behaviour(self, sid, headers)
        server.active -= 1
        if self.transport is None or self.transport.is_closing() or sid not in self.requests:
            return
        if headers[":path"].startswith("/big/"):
            body = b"z" * int(headers[":path"][5:])
        elif headers[":method"] == "POST":
            body = bytes(req["body"])
        else:
            body = json.dumps({"target": headers[":path"], "headers": req["headers"]}).encode()
        self.h2.send_headers(sid, [(":status", "200"), ("x-upstream", server.name),
                                   ("content-length", str(len(body)))])
        self.pending[sid] = body
        self.flush_pending()
        self.write()

    def flush_pending(self) -> None:
        for sid, body in list(self.pending.items()):
            while body:
                window = min(self.h2.local_flow_control_window(sid),
                             self.h2.max_outbound_frame_size)
                if window <= 0:
                    break
                self.h2.send_data(sid, body[:window])
                self.server.sent += min(window, len(body))
                body = body[window:]
            if body:
                self.pending[sid] = body
            else:
                del self.pending[sid]
                self.h2.end_stream(sid)


async def _answer_now(conn: _UpConn, sid: int, headers: dict[str, str]) -> None:
    return None


class H2Upstream:
    """An h2c server that answers with its name and records every request."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.seen: list[dict[str, Any]] = []
        self.resets: list[int] = []
        self.reset_seen = asyncio.Event()
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.sent = 0
        self.open: set[_UpConn] = set()
        self.behaviour: Callable[[_UpConn, int, dict[str, str]], Awaitable[None]] = _answer_now
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> H2Upstream:
        self.server = await self.loop.create_server(lambda: _UpConn(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def header(self, index: int, name: str) -> str | None:
        values = [v for k, v in self.seen[index]["headers"] if k == name]
        return ",".join(values) if values else None

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in tuple(self.open):
                if conn.transport is not None:
                    conn.transport.abort()
            await self.server.wait_closed()


@pytest.fixture
async def h2_upstreams() -> AsyncIterator[Callable[[str], Awaitable[H2Upstream]]]:
    started: list[H2Upstream] = []

    async def make(name: str) -> H2Upstream:
        up = await H2Upstream(name).start()
        started.append(up)
        return up

    yield make
    for up in started:
        await up.aclose()


def _client(**kw: Any) -> httpx.AsyncClient:
    """HTTP/2 only: with http1 off, httpx speaks h2c with prior knowledge."""
    return httpx.AsyncClient(http1=False, http2=True, timeout=20, **kw)


@pytest.fixture
async def mesh(h2_upstreams: Any, proxy_factory: Any) -> dict[str, Any]:
    names = ["pricing", "pricing-fork", "catalog", "catalog-fork"]
    ups = {n: await h2_upstreams(n) for n in names}
    doc = {
        "version": "m1",
        "carriers": [
            {"kind": "header", "name": "x-forklane-routing-key"},
            {"kind": "baggage", "name": "forklane-routing-key"},
            {"kind": "baggage", "name": "sd-routing-key", "emit": False},
            {"kind": "header", "name": "x-team-key", "emit": False},
        ],
        "services": [
            {"name": "pricing", "authorities": ["pricing.shop.svc:8080"],
             "endpoints": [ups["pricing"].address]},
            {"name": "catalog", "endpoints": [ups["catalog"].address]},
            {"name": "ghost", "endpoints": ["127.0.0.1:1"]},
        ],
        "forks": [
            {"routing_key": KEY_PRICING, "service": "pricing",
             "endpoints": [ups["pricing-fork"].address], "sandbox": "alice"},
            {"routing_key": KEY_CATALOG, "service": "catalog",
             "endpoints": [ups["catalog-fork"].address], "sandbox": "bob"},
        ],
    }
    proc = proxy_factory(doc, "--explain-header", "x-forklane-explain")
    return {"ups": ups, "proc": proc}


async def test_outbound_routing_matrix_over_http2(mesh: dict[str, Any]) -> None:
    """Every case of the HTTP/1.1 matrix, on one proxy, over one HTTP/2 connection."""
    proc = mesh["proc"]
    async with _client() as client:
        for case, host, headers, expected, carrier in MATRIX:
            before = {name: len(up.seen) for name, up in mesh["ups"].items()}
            r = await client.get(f"{proc.url()}/items?x=1",
                                 headers={"host": host, "x-forklane-explain": "1", **headers})
            assert r.http_version == "HTTP/2", case
            assert r.status_code == 200, (case, r.text)
            assert r.headers["x-upstream"] == expected, case
            assert r.json()["target"] == "/items?x=1", case
            assert f"carrier={carrier or '-'}" in r.headers["x-forklane-route"], case
            for name, up in mesh["ups"].items():
                assert len(up.seen) - before[name] == (1 if name == expected else 0), (case, name)


async def test_the_key_reaches_the_fork_in_every_emitted_carrier(mesh: dict[str, Any]) -> None:
    async with _client() as client:
        r = await client.get(mesh["proc"].url(), headers={
            "host": "catalog", "x-team-key": KEY_CATALOG, "baggage": "a=1,b=2",
            "te": "trailers", "x_forklane_routing_key": KEY_PRICING})
    assert r.headers["x-upstream"] == "catalog-fork"
    fork = mesh["ups"]["catalog-fork"]
    assert fork.header(0, "x-forklane-routing-key") == KEY_CATALOG
    assert fork.header(0, "baggage") == f"forklane-routing-key={KEY_CATALOG},a=1,b=2"
    assert fork.header(0, "x-forklane-routed") is None  # the sidecars' mark is the Via entry
    assert fork.header(0, "te") == "trailers"
    assert fork.header(0, "x_forklane_routing_key") is None  # a look-alike never passes
    assert fork.header(0, ":authority") == "catalog"


async def test_many_concurrent_streams_share_one_connection_each_way(
    mesh: dict[str, Any],
) -> None:
    """150 requests at once on one client connection: 100 (the advertised limit) are in
    flight together through the proxy, and the upstream sees them multiplexed."""
    up = mesh["ups"]["pricing"]
    all_in = asyncio.Event()

    async def hold(conn: _UpConn, sid: int, headers: dict[str, str]) -> None:
        if up.active >= 100:
            all_in.set()
        try:
            await asyncio.wait_for(all_in.wait(), 10)
        except TimeoutError:
            pass

    up.behaviour = hold
    async with _client() as client:
        rs = await asyncio.gather(*(
            client.get(f"{mesh['proc'].url()}/n/{i}", headers={"host": "pricing"})
            for i in range(150)))
    assert [r.status_code for r in rs] == [200] * 150
    assert sorted(r.json()["target"] for r in rs) == sorted(f"/n/{i}" for i in range(150))
    assert up.max_active >= 100
    assert up.connections == 1
    async with httpx.AsyncClient() as admin:
        metrics = (await admin.get(mesh["proc"].url("admin") + "/metrics")).text
    assert "forklane_downstream_connections_total 1.0" in metrics


async def test_large_bodies_stream_both_ways(mesh: dict[str, Any]) -> None:
    body = bytes(range(256)) * 20_000  # 5 MB: many windows in each direction
    async with _client() as client:
        echoed = await client.post(mesh["proc"].url(), content=body,
                                   headers={"host": "pricing"})
        big = await client.get(mesh["proc"].url() + "/big/3000000", headers={"host": "pricing"})
    assert echoed.content == body
    assert big.content == b"z" * 3_000_000


async def test_local_answers_over_http2(mesh: dict[str, Any]) -> None:
    async with _client() as client:
        missing = await client.get(mesh["proc"].url(), headers={"host": "nowhere"})
        dead = await client.get(mesh["proc"].url(), headers={"host": "ghost"})
    assert missing.status_code == 404
    assert missing.headers["x-forklane-error"] == "no-route"
    assert dead.status_code == 503
    assert dead.headers["x-forklane-error"] == "upstream-connect-failed"
    assert "not reachable" in dead.text


async def _raw_h2(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                        h2.connection.H2Connection]:
    """A raw h2 client that, unlike plain `h2`, keeps its streams after a graceful GOAWAY."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = GracefulH2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    return reader, writer, conn


async def test_a_client_that_stops_reading_stops_the_upstream(mesh: dict[str, Any]) -> None:
    """Flow control end to end: the proxy reads no faster than the client drains."""
    up = mesh["ups"]["pricing"]
    reader, writer, conn = await _raw_h2(mesh["proc"].ports["outbound"])
    try:
        conn.send_headers(1, [(":method", "GET"), (":scheme", "http"),
                              (":authority", "pricing"), (":path", "/big/20000000")],
                          end_stream=True)
        writer.write(conn.data_to_send())
        received = 0
        deadline = time.monotonic() + 10
        last, still = -1, 0
        while time.monotonic() < deadline and still < 5:
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.1)
            except TimeoutError:
                data = b""
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    received += len(event.data)  # never acknowledged: the window closes
            still = still + 1 if up.sent == last else 0
            last = up.sent
        assert still >= 5, "the upstream never stopped sending"
        assert received <= 65_535
        # the client's window + the proxy's upstream window + socket buffers, not 20 MB
        assert up.sent < 1_000_000, up.sent
    finally:
        writer.close()


async def test_rapid_reset_flood_ends_with_goaway(mesh: dict[str, Any]) -> None:
    up = mesh["ups"]["pricing"]
    never = asyncio.Event()

    async def hang(conn: _UpConn, sid: int, headers: dict[str, str]) -> None:
        try:
            await asyncio.wait_for(never.wait(), 5)
        except TimeoutError:
            pass

    up.behaviour = hang
    reader, writer, conn = await _raw_h2(mesh["proc"].ports["outbound"])
    try:
        goaway: h2.events.ConnectionTerminated | None = None
        sid = 1
        for _ in range(400):
            conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"),
                                    (":authority", "pricing"), (":path", "/")],
                              end_stream=True)
            conn.reset_stream(sid)
            sid += 2
        writer.write(conn.data_to_send())
        deadline = time.monotonic() + 10
        while goaway is None and time.monotonic() < deadline:
            data = await asyncio.wait_for(reader.read(65536), 10)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    goaway = event
        assert goaway is not None, "no GOAWAY after a reset flood"
        assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        writer.close()
    # a well-behaved client on a new connection is still served
    up.behaviour = _answer_now
    async with _client() as client:
        r = await client.get(mesh["proc"].url(), headers={"host": "pricing"})
    assert r.status_code == 200


async def test_upstream_reset_mid_body_resets_the_stream(mesh: dict[str, Any]) -> None:
    up = mesh["ups"]["pricing"]

    async def cut(conn: _UpConn, sid: int, headers: dict[str, str]) -> None:
        conn.h2.send_headers(sid, [(":status", "200"), ("content-length", "100000")])
        conn.h2.send_data(sid, b"a" * 1000)
        conn.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        conn.requests.pop(sid)
        conn.write()

    up.behaviour = cut
    async with _client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(mesh["proc"].url(), headers={"host": "pricing"})
        up.behaviour = _answer_now
        # the connection survives a reset stream
        r = await client.get(mesh["proc"].url(), headers={"host": "pricing"})
        assert r.status_code == 200


async def test_http1_and_http2_share_the_listener(mesh: dict[str, Any]) -> None:
    async with httpx.AsyncClient() as h1, _client() as h2c:
        r1 = await h1.get(mesh["proc"].url(), headers={"host": "pricing"})
        r2 = await h2c.get(mesh["proc"].url(), headers={"host": "pricing"})
    assert (r1.http_version, r2.http_version) == ("HTTP/1.1", "HTTP/2")


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_tls_alpn_offers_h2_and_http1(
    h2_upstreams: Any, proxy_factory: Any, tls_pair: tuple[Path, Path],
) -> None:
    up = await h2_upstreams("web")
    doc = {"version": "t1", "services": [{"name": "web", "endpoints": [up.address]}]}
    cert, key = tls_pair
    proc = proxy_factory(doc, "--tls-cert", str(cert), "--tls-key", str(key))
    url = f"https://127.0.0.1:{proc.ports['outbound']}/secure"
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    async with httpx.AsyncClient(http2=True, verify=ctx) as client:
        r2 = await client.get(url, headers={"host": "web"})
    assert (r2.http_version, r2.headers["x-upstream"]) == ("HTTP/2", "web")
    assert up.header(0, "x-forwarded-proto") == "https"
    async with httpx.AsyncClient(verify=ctx) as client:
        r1 = await client.get(url, headers={"host": "web"})
    # ALPN http/1.1 is served by the HTTP/1.1 data plane, which speaks HTTP/1.1 upstream
    # too: this h2c-only upstream refuses it.
    assert (r1.http_version, r1.status_code) == ("HTTP/1.1", 502)


async def test_preface_followed_by_http1_bytes_is_a_protocol_error(mesh: dict[str, Any]) -> None:
    """An h2c preface commits the connection to HTTP/2: what follows is never parsed as an
    HTTP/1.1 request (no smuggling through the preface); the frame is refused at once."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh["proc"].ports["outbound"])
    try:
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: pricing\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)  # until the proxy closes
    finally:
        writer.close()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    events = conn.receive_data(data)
    [goaway] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway.error_code == h2.errors.ErrorCodes.FRAME_SIZE_ERROR
    assert all(not up.seen for up in mesh["ups"].values())


async def test_grpc_timeout_is_enforced_by_the_proxy(mesh: dict[str, Any]) -> None:
    """The upstream here knows nothing of gRPC deadlines: the proxy ends the call itself
    with DEADLINE_EXCEEDED, as a gRPC status, and cancels the upstream stream."""
    up = mesh["ups"]["pricing"]
    never = asyncio.Event()

    async def hang(conn: _UpConn, sid: int, headers: dict[str, str]) -> None:
        try:
            await asyncio.wait_for(never.wait(), 10)
        except TimeoutError:
            pass

    up.behaviour = hang
    started = time.monotonic()
    async with _client() as client:
        r = await client.post(mesh["proc"].url() + "/pkg.Svc/Call", content=b"\0\0\0\0\0",
                              headers={"host": "pricing", "content-type": "application/grpc",
                                       "te": "trailers", "grpc-timeout": "300m"})
    assert time.monotonic() - started < 3
    assert r.status_code == 200
    assert r.headers["grpc-status"] == "4"
    assert r.headers["x-forklane-error"] == "deadline-exceeded"
    await asyncio.wait_for(up.reset_seen.wait(), 5)
    assert up.resets == [h2.errors.ErrorCodes.CANCEL]


async def test_too_many_headers_is_431_for_that_stream_only(mesh: dict[str, Any]) -> None:
    async with _client() as client:
        many = {f"x-h{i}": "v" for i in range(150)}
        big = await client.get(mesh["proc"].url(), headers={"host": "pricing", **many})
        ok = await client.get(mesh["proc"].url(), headers={"host": "pricing"})
    assert big.status_code == 431
    assert big.headers["x-forklane-error"] == "headers-too-large"
    assert ok.status_code == 200  # same connection, next stream: unaffected
    assert len(mesh["ups"]["pricing"].seen) == 1


async def test_sigterm_sends_goaway_and_lets_streams_in_flight_finish(
    mesh: dict[str, Any],
) -> None:
    """Raw h2 client: httpx fails every open stream on any GOAWAY, which RFC 9113 does not."""
    up = mesh["ups"]["pricing"]
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def hold(conn: _UpConn, sid: int, headers: dict[str, str]) -> None:
        arrived.set()
        await asyncio.wait_for(release.wait(), 10)

    up.behaviour = hold
    proc = mesh["proc"]
    reader, writer, conn = await _raw_h2(proc.ports["outbound"])
    try:
        conn.send_headers(1, [(":method", "GET"), (":scheme", "http"),
                              (":authority", "pricing"), (":path", "/slow")], end_stream=True)
        writer.write(conn.data_to_send())
        await asyncio.wait_for(arrived.wait(), 10)
        proc.popen.send_signal(signal.SIGTERM)
        seen: list[str] = []
        body = b""
        deadline = time.monotonic() + 10
        while "end" not in seen and time.monotonic() < deadline:
            data = await asyncio.wait_for(reader.read(65536), 10)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    seen.append(f"goaway:{event.error_code}:{event.last_stream_id}")
                    release.set()  # only now may the held response go out
                elif isinstance(event, h2.events.ResponseReceived):
                    seen.append("response")
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    seen.append("end")
            writer.write(conn.data_to_send())
    finally:
        writer.close()
    assert seen == ["goaway:0:1", "response", "end"]
    assert json.loads(body)["target"] == "/slow"
    assert await asyncio.to_thread(proc.popen.wait, 10) == 0


async def test_inbound_listener_over_http2(h2_upstreams: Any, proxy_factory: Any) -> None:
    app, fork = await h2_upstreams("local-app"), await h2_upstreams("pricing-fork")
    doc = {
        "version": "i1",
        "services": [{"name": "pricing", "endpoints": ["127.0.0.1:1"]}],
        "forks": [{"routing_key": KEY_PRICING, "service": "pricing",
                   "endpoints": [fork.address]}],
    }
    proc = proxy_factory(doc, "--service", "pricing", "--local-app", app.address, inbound=True)
    url = proc.url("inbound")
    async with _client() as client:
        plain = await client.get(url, headers={"host": "pricing"})
        forked = await client.get(url, headers={"x-forklane-routing-key": KEY_PRICING})
        already = await client.get(url, headers={"x-forklane-routing-key": KEY_PRICING,
                                                 "via": "2 forklane"})
    assert [r.headers["x-upstream"] for r in (plain, forked, already)] == [
        "local-app", "pricing-fork", "local-app"]
    # the marker is between sidecars only: the app never sees it
    assert all(app.header(i, "x-forklane-routed") is None for i in range(len(app.seen)))
    assert fork.header(0, "x-forklane-routed") is None


async def test_an_extension_method_passes_over_http2(mesh: dict[str, Any]) -> None:
    """RFC 9110 §9.1: a method is any token. HTTP/2 carries it in `:method`, and the proxy
    forwards it untouched (HTTP/1.1 answers 501 `unknown-method`: its parser's list is fixed)."""
    async with _client() as client:
        r = await client.request("PURGEX", f"{mesh['proc'].url()}/x", headers={"host": "catalog"})
    assert r.status_code == 200, r.text
    assert r.headers["x-upstream"] == "catalog"
    assert mesh["ups"]["catalog"].header(-1, ":method") == "PURGEX"


async def _events_until_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            conn: h2.connection.H2Connection, sid: int) -> list[Any]:
    """Events of stream `sid` until it ends (or is reset), read with a deadline."""
    seen: list[Any] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = await asyncio.wait_for(reader.read(65536), 10)
        if not data:
            break
        for event in conn.receive_data(data):
            if getattr(event, "stream_id", None) == sid:
                seen.append(event)
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return seen
        writer.write(conn.data_to_send())
    raise AssertionError(f"stream {sid} did not end: {seen}")


async def test_informational_responses_are_forwarded_before_the_answer(
    mesh: dict[str, Any],
) -> None:
    up = mesh["ups"]["pricing"]

    async def hints(conn: _UpConn, sid: int, headers: dict[str, str]) -> None:
        conn.h2.send_headers(sid, [(":status", "103"), ("link", "</app.css>; rel=preload")])
        conn.write()

    up.behaviour = hints
    reader, writer, conn = await _raw_h2(mesh["proc"].ports["outbound"])
    try:
        conn.send_headers(1, [(":method", "GET"), (":scheme", "http"),
                              (":authority", "pricing"), (":path", "/")], end_stream=True)
        writer.write(conn.data_to_send())
        events = await _events_until_end(reader, writer, conn, 1)
    finally:
        writer.close()
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["InformationalResponseReceived", "ResponseReceived"], kinds
    info = dict(events[0].headers)
    assert info[b":status"] == b"103"
    assert info[b"link"] == b"</app.css>; rel=preload"
    assert dict(events[1].headers)[b":status"] == b"200"


async def test_a_malformed_head_is_400_for_that_stream_and_the_connection_lives(
    mesh: dict[str, Any],
) -> None:
    """An uppercase field name (RFC 9113 §8.2.1): that stream is answered 400 and never
    forwarded; the next stream on the same connection is served."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh["proc"].ports["outbound"])
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
    conn.initiate_connection()
    try:
        conn.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", "pricing"),
                              (":path", "/"), ("X-Shouting", "1")], end_stream=True)
        writer.write(conn.data_to_send())
        bad = await _events_until_end(reader, writer, conn, 1)
        conn.send_headers(3, [(":method", "GET"), (":scheme", "http"), (":authority", "pricing"),
                              (":path", "/")], end_stream=True)
        writer.write(conn.data_to_send())
        good = await _events_until_end(reader, writer, conn, 3)
    finally:
        writer.close()
    head = dict(bad[0].headers)
    assert head[b":status"] == b"400"
    assert head[b"x-forklane-error"] == b"malformed-request"
    assert dict(good[0].headers)[b":status"] == b"200"
    assert len(mesh["ups"]["pricing"].seen) == 1


async def test_a_malformed_field_from_the_hpack_table_is_refused_every_time(
    mesh: dict[str, Any],
) -> None:
    """Request fields are checked where HPACK decodes them: a literal when it arrives, a field
    indexed from the connection's table only while the table holds one that failed. The same
    uppercase field sent again (now a one-byte index into the table) is refused again, and so
    are pseudo-header fields out of order or repeated; the good streams around them are
    served."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh["proc"].ports["outbound"])
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
    conn.initiate_connection()
    base = [(":method", "GET"), (":scheme", "http"), (":authority", "pricing"), (":path", "/")]
    heads = [
        [*base, ("X-Shouting", "1")],
        base,
        [*base, ("X-Shouting", "1")],  # indexed this time: the encoder added it to its table
        [*base[:2], ("x-early", "1"), *base[2:]],  # a pseudo-header field after a regular one
        [*base, (":path", "/again")],
        base,
    ]
    statuses = []
    try:
        for i, head in enumerate(heads):
            sid = 1 + 2 * i
            conn.send_headers(sid, head, end_stream=True)
            writer.write(conn.data_to_send())
            events = await _events_until_end(reader, writer, conn, sid)
            statuses.append(dict(events[0].headers)[b":status"])
        indexed = any(n == b"X-Shouting" for n, _ in conn.encoder.header_table.dynamic_entries)
    finally:
        writer.close()
    assert indexed  # the third head really referred to the table
    assert statuses == [b"400", b"200", b"400", b"400", b"400", b"200"]
    assert len(mesh["ups"]["pricing"].seen) == 2


async def test_mirrors_get_a_copy_over_http2_and_never_fail_the_caller(
    h2_upstreams: Any, proxy_factory: Any
) -> None:
    main, shadow = await h2_upstreams("main"), await h2_upstreams("shadow")
    doc = {
        "version": "mi2",
        "services": [{"name": "a", "endpoints": [main.address]},
                     {"name": "c", "endpoints": [main.address]}],
        "mirrors": [
            {"name": "copy", "service": "a", "percent": 100, "endpoints": [shadow.address]},
            {"name": "dead", "service": "c", "percent": 100, "endpoints": ["127.0.0.1:1"]},
        ],
    }
    proc = proxy_factory(doc)
    body = bytes(range(256)) * 400  # 102,400 bytes: more than the copy's stream window
    async with _client() as client:
        r = await client.post(proc.url() + "/orders", headers={"host": "a"}, content=body)
        assert r.status_code == 200 and r.headers["x-upstream"] == "main"
        assert r.content == body
        for _ in range(3):
            r = await client.post(proc.url(), headers={"host": "c"}, content=b"payload")
            assert r.status_code == 200 and r.headers["x-upstream"] == "main"
    await eventually(lambda: bool(shadow.seen), within=5, what="the mirror's copy")
    copy = shadow.seen[0]
    fields = dict(copy["headers"])
    assert fields[":method"] == "POST" and fields[":path"] == "/orders"
    assert fields["x-forklane-mirror"] == "1"
    assert bytes(copy["body"]) == body
    assert len(main.seen) == 4 and all("x-forklane-mirror" not in dict(s["headers"])
                                       for s in main.seen)
    async with httpx.AsyncClient() as client:
        async def counted() -> bool:
            text = (await client.get(proc.url("admin") + "/metrics")).text
            return ('kind="mirror",listener="outbound",service="a",status_class="2xx"} 1.0'
                    in text and
                    'kind="mirror",listener="outbound",service="c",status_class="reset"} 3.0'
                    in text)

        await eventually(counted, what="mirror rows in /metrics")
