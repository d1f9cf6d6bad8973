"""The capture layer of a listener, in the test's event loop, on real loopback sockets.

Everything is real (listener, HTTP module, relay, upstream servers, clients) except where a
connection "was going": outside a network namespace with nat rules there is no conntrack
entry to read, so the listener is given the original destination the test names instead of
`SO_ORIGINAL_DST`. The real look-up, with real rules, is exercised in test_capture_netns.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import httpx
import pytest

from forklane.proxy.balancer import Balancer
from forklane.proxy.http1.server import Downstream
from forklane.proxy.http1.upstream import Pools
from forklane.proxy.listener.context import ListenerContext
from forklane.proxy.listener.origdst import Address
from forklane.proxy.listener.sniff import CapturePolicy, Sniffer
from forklane.proxy.metrics import Stats, render_prometheus
from forklane.proxy.run import http2_handoff
from forklane.proxy.schema import RoutingSnapshot
from forklane.proxy.settings import ProxySettings
from forklane.proxy.state import TableHolder
from forklane.proxy.table import LocalIdentity
from tests.integration.test_http2 import H2Upstream
from tests.support.polling import eventually
from tests.support.upstream import RecordingUpstream


class RawServer:
    """A TCP server that runs `handler(reader, writer)` per connection and records them."""

    def __init__(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                         Awaitable[None]]) -> None:
        self.handler = handler
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> RawServer:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self.writers.add(writer)
            try:
                await self.handler(reader, writer)
            except ConnectionError:
                pass
            finally:
                self.writers.discard(writer)
                writer.close()

        self.server = await asyncio.start_server(run, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.port)

    async def aclose(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in tuple(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()


async def echo_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo, and after the client's EOF keep sending a digest of everything received."""
    digest = hashlib.sha256()
    while data := await reader.read(65536):
        digest.update(data)
        writer.write(data)
        await writer.drain()
    writer.write(b"sha256:" + digest.hexdigest().encode())  # after the client half-closed
    await writer.drain()


async def banner_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 banner\r\n")
    await writer.drain()
    line = await reader.readline()
    writer.write(b"250 " + line)
    await writer.drain()


@dataclass
class Lab:
    ctx: ListenerContext
    port: int
    stats: Stats
    target: Address | None = None  # what the listener takes for the original destination
    servers: list[Any] = field(default_factory=list)  # the listener's own server and sweeper
    policy: CapturePolicy | None = None
    upstreams: dict[str, RecordingUpstream] = field(default_factory=dict)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    def metric(self, prefix: str) -> float:
        text = render_prometheus(self.stats)[0].decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(prefix))


async def start_lab(kind: str, doc: dict[str, Any], **overrides: Any) -> Lab:
    loop = asyncio.get_running_loop()
    settings = ProxySettings(**{"capture": True, "capture_detect_timeout": 0.4,
                                "header_timeout": 2.0, **overrides})
    local = None
    if kind == "inbound":
        assert settings.service and settings.local_app
        local = LocalIdentity(settings.service, settings.local_app)
    holder = TableHolder(local)
    holder.apply(RoutingSnapshot.model_validate(doc), source="test")
    stats = Stats()
    rng = random.Random(1)
    ctx = ListenerContext(kind, holder, settings, stats, Pools(loop, 8),  # type: ignore[arg-type]
                          Balancer(loop.time, rng.random), rng.random, loop)
    ctx.open_h2 = http2_handoff(ctx)  # as the process wiring does
    lab = Lab(ctx=ctx, port=0, stats=stats)
    policy = replace(CapturePolicy.for_listener(kind, ctx, partial(Downstream, ctx)),
                     original=lambda sock: lab.target)
    lab.policy = policy
    server = await loop.create_server(partial(Sniffer, ctx, policy), "127.0.0.1", 0)
    lab.port = server.sockets[0].getsockname()[1]
    lab.servers.append(server)

    async def sweep() -> None:  # the proxy's housekeeping: deadlines at 0.1 s resolution
        while True:
            ctx.sweep()
            await asyncio.sleep(0.05)

    lab.servers.append(loop.create_task(sweep()))
    return lab


async def stop_lab(lab: Lab) -> None:
    for item in lab.servers:
        if isinstance(item, asyncio.Task):
            item.cancel()
        else:
            item.close()
    for conn in tuple(lab.ctx.connections):
        conn.close()
    lab.ctx.pools.close_all()
    lab.ctx.close_h2()
    if lab.policy is not None and lab.policy.diag is not None:
        lab.policy.diag.close()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    started: list[Any] = []

    async def make(kind: str, arg: Any = None) -> Any:
        if kind == "http":
            server: Any = await RecordingUpstream(arg).start()
        elif kind == "h2":
            server = await H2Upstream(arg).start()
        else:
            server = await RawServer(arg).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.aclose()


@pytest.fixture
async def outbound(servers: Callable[..., Awaitable[Any]]) -> AsyncIterator[Lab]:
    catalog = await servers("http", "catalog")
    lab = await start_lab("outbound", {
        "version": "capture-1",
        "services": [{"name": "catalog", "authorities": ["catalog.shop.svc:8080"],
                      "endpoints": [catalog.address]}],
    })
    lab.upstreams["catalog"] = catalog
    yield lab
    await stop_lab(lab)


async def test_opaque_bytes_pass_untouched_both_ways_with_half_close(
    outbound: Lab, servers: Any
) -> None:
    echo = await servers("raw", echo_until_eof)
    outbound.target = echo.address
    payload = os.urandom(3 * 1024 * 1024) + b"\r\n\r\n"  # starts like nothing we know
    payload = b"\x00\x01" + payload
    reader, writer = await outbound.connect()

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()  # half-close: we keep reading

    sender = asyncio.create_task(send())
    received = await asyncio.wait_for(reader.read(), 30)  # until the server's FIN
    await sender
    writer.close()
    assert received[: len(payload)] == payload
    assert received[len(payload):] == b"sha256:" + hashlib.sha256(payload).hexdigest().encode()
    await eventually(lambda: outbound.stats.relays_open == 0, what="relay closed")
    assert outbound.stats.relay_connections["outbound\x1fnot-http"] == 1
    assert outbound.stats.relay_bytes["outbound"] == [len(payload), len(received)]
    assert outbound.stats.connections_open == 0
    assert outbound.metric('forklane_relay_bytes_total{direction="upstream"') == len(payload)


async def test_a_server_that_speaks_first_gets_the_connection_after_the_detect_timeout(
    outbound: Lab, servers: Any
) -> None:
    banner = await servers("raw", banner_first)
    outbound.target = banner.address
    started = time.monotonic()
    reader, writer = await outbound.connect()
    assert await asyncio.wait_for(reader.readline(), 10) == b"220 banner\r\n"
    waited = time.monotonic() - started
    writer.write(b"HELO forklane\r\n")
    assert await asyncio.wait_for(reader.readline(), 10) == b"250 HELO forklane\r\n"
    writer.close()
    assert waited >= 0.35  # nothing flowed before detection gave up (0.4 s)
    assert outbound.stats.relay_connections["outbound\x1fdetect-timeout"] == 1


async def test_an_opaque_port_is_relayed_at_once(servers: Any) -> None:
    banner = await servers("raw", banner_first)
    lab = await start_lab("outbound", {"version": "v", "services": []},
                          capture_opaque_ports=str(banner.port), capture_detect_timeout=5.0)
    try:
        lab.target = banner.address
        started = time.monotonic()
        reader, writer = await lab.connect()
        assert await asyncio.wait_for(reader.readline(), 10) == b"220 banner\r\n"
        assert time.monotonic() - started < 2.0  # not the 5 s detection wait
        writer.close()
        assert lab.stats.relay_connections["outbound\x1fopaque-port"] == 1
    finally:
        await stop_lab(lab)


async def test_backpressure_a_stalled_upstream_stops_the_client(
    outbound: Lab, servers: Any
) -> None:
    go = asyncio.Event()
    got = bytearray()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        while data := await reader.read(65536):
            got.extend(data)

    sink = await servers("raw", slow)
    outbound.target = sink.address
    client = socket.create_connection(("127.0.0.1", outbound.port))
    client.setblocking(False)
    chunk = b"\x00" * 65536
    sent = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    stalled_since: float | None = None
    while loop.time() < deadline:  # push until the kernel refuses more for a while
        try:
            sent += client.send(chunk)
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or loop.time()
            if loop.time() - stalled_since > 0.5:
                break
        await asyncio.sleep(0)
    assert stalled_since is not None, "the client was never held back"
    relay = next(c for c in outbound.ctx.connections if hasattr(c, "sides"))
    up = relay.sides[1].transport
    assert up is not None
    # what the relay holds in user space stays near one write buffer, not the whole backlog
    assert up.get_write_buffer_size() <= 512 * 1024 < sent
    go.set()
    client.setblocking(True)
    client.shutdown(socket.SHUT_WR)
    await eventually(lambda: len(got) == sent, within=20, what="all bytes delivered")
    client.close()


async def test_http_for_a_known_service_is_routed_and_unknown_hosts_pass_through(
    outbound: Lab, servers: Any
) -> None:
    original = await servers("http", "original")
    outbound.target = Address("127.0.0.1", original.port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{outbound.port}",
                                 timeout=10) as client:
        # first request names a service: the HTTP module takes the connection and routes it
        routed = await client.get("/a", headers={"host": "catalog.shop.svc:8080"})
        assert routed.json()["upstream"] == "catalog"
        seen = outbound.upstreams["catalog"].requests[-1]
        assert seen.header("via") == "1.1 forklane"
        # a later request on that connection for a host no service has: to the original
        # destination, not a 404
        other = await client.get("/b", headers={"host": "api.example.com"})
        assert other.status_code == 200 and other.json()["upstream"] == "original"
        assert original.requests[-1].header("x-forklane-routed") is None
    # a connection whose first request names an unknown host is relayed byte for byte
    reader, writer = await outbound.connect()
    request = b"GET /raw HTTP/1.1\r\nHost: api.example.com\r\nX_Odd: kept\r\n\r\n"
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()
    await eventually(lambda: bytes(original.raw).endswith(request), what="raw request relayed")
    assert outbound.stats.relay_connections["outbound\x1funknown-authority"] == 1
    rows = outbound.ctx.rows
    assert rows["\x1fpassthrough"][2] == 1 and rows["catalog\x1fbaseline"][2] == 1


async def test_h2c_streams_for_unknown_authorities_go_to_the_original_destination(
    outbound: Lab, servers: Any
) -> None:
    original = await servers("h2", "original-h2")
    outbound.target = Address("127.0.0.1", original.port)
    async with httpx.AsyncClient(http1=False, http2=True, timeout=10,
                                 base_url=f"http://127.0.0.1:{outbound.port}") as client:
        answer = await client.get("/x", headers={"host": "grpc.example.com"})
    assert answer.status_code == 200 and answer.http_version == "HTTP/2"
    assert original.header(0, ":authority") == "grpc.example.com"
    assert original.header(0, "x-forklane-routed") is None


async def test_a_connection_that_was_not_captured_keeps_the_404(outbound: Lab) -> None:
    outbound.target = None  # a direct connection to the listener (explicit mode)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{outbound.port}",
                                 timeout=10) as client:
        answer = await client.get("/", headers={"host": "api.example.com"})
        assert answer.status_code == 404
        assert answer.headers["x-forklane-error"] == "no-route"
        assert (await client.get("/", headers={"host": "catalog.shop.svc:8080"})).status_code == 200
    assert not outbound.stats.relay_connections


async def test_a_refused_upstream_resets_the_client(outbound: Lab) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there any more
    outbound.target = Address("127.0.0.1", port)
    reader, writer = await outbound.connect()
    writer.write(b"\x00hello")
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 10)
    writer.close()
    await eventually(lambda: outbound.stats.connections_open == 0, what="connection gone")
    assert outbound.stats.upstream_errors["relay-connect-failed"] == 1


async def test_our_own_connection_captured_again_is_refused(servers: Any) -> None:
    """The loop guard: the test process plays the sidecar whose upstream connection came back
    (same UID as the listener). The listener refuses it instead of relaying it onward."""
    lab = await start_lab("outbound", {"version": "v", "services": []})
    try:
        # The connection's original destination is the listener itself: relaying it would
        # connect to the listener again, and again (what a wrong proxy UID does in a pod).
        lab.target = Address("127.0.0.1", lab.port)
        reader, writer = await lab.connect()
        writer.write(b"\x00ping")
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 10)
        writer.close()
        if lab.stats.capture_loops == 0:
            pytest.skip("this kernel offers no sock_diag: the guard cannot see owners")
        assert lab.stats.capture_loops == 1
        assert lab.stats.connections_total == 1  # nothing was relayed onward
        assert not lab.stats.relay_connections
        assert lab.metric("forklane_capture_loops_refused_total") == 1
    finally:
        await stop_lab(lab)


async def test_inbound_http_to_the_app_port_is_routed_the_rest_relayed(servers: Any) -> None:
    app = await servers("http", "app")
    echo = await servers("raw", echo_until_eof)
    lab = await start_lab("inbound", {"version": "v", "services": []},
                          service="app", local_app=f"127.0.0.1:{app.port}")
    try:
        lab.target = Address("198.18.0.1", app.port)  # the pod's address, the app's port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{lab.port}",
                                     timeout=10) as client:
            answer = await client.get("/hello", headers={"host": "app.shop.svc"})
        assert answer.json()["upstream"] == "app"
        assert app.requests[-1].header("via") == "1.1 forklane"
        # another port of the pod: delivered to the app's host on that port, untouched
        lab.target = Address("198.18.0.1", echo.port)
        reader, writer = await lab.connect()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert data.startswith(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nsha256:")
        assert lab.stats.relay_connections["inbound\x1fother-port"] == 1
    finally:
        await stop_lab(lab)
