"""Request smuggling through `Connection`, and every other place where a name the client (or
an upstream) chooses decides what the proxy drops or keeps.

RFC 9110 §7.6.1: `Connection` nominates fields for this hop only, but a sender must not
nominate fields that frame or route the message, and a proxy must not let a nomination strip
them. Before the fix, `Connection: content-length` made the proxy forward a POST without its
Content-Length but with its body, which the upstream then read as a second, never-routed
request; on a pooled upstream connection, the next client got that request's response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Proc, start_proxy, write_config
from tests.support.rawhttp import parse_responses, send_raw
from tests.support.upstream import RecordingUpstream

INNER = b"GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n"


def smuggling_post(connection: bytes) -> bytes:
    return (b"POST /x HTTP/1.1\r\nHost: svc\r\nConnection: " + connection +
            b"\r\nContent-Length: %d\r\n\r\n" % len(INNER) + INNER)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Proc, RecordingUpstream]]:
    upstream = await RecordingUpstream("baseline").start()
    config = write_config(tmp_path / "routing.yaml", {
        "version": "smuggling-1",
        "services": [{"name": "svc", "endpoints": [upstream.address]}],
    })
    proxy = await asyncio.to_thread(start_proxy, config, tmp_path / "proxy.log")
    try:
        yield proxy, upstream
    finally:
        await asyncio.to_thread(proxy.stop)
        await upstream.aclose()


@pytest.mark.parametrize("connection", [
    b"content-length", b"keep-alive, content-length", b"host", b"Content-Length, x-other",
])
async def test_pooled_connection_never_carries_a_smuggled_request_to_the_next_client(
    rig: tuple[Proc, RecordingUpstream], connection: bytes
) -> None:
    """Five rounds: a keep-alive client warms the pool, the attacker tries, a second client's
    request must get its own answer, and the upstream never sees a byte of the inner request."""
    proxy, upstream = rig
    async with httpx.AsyncClient(base_url=proxy.url(), headers={"host": "svc"}) as client:
        for round in range(5):
            warm = await client.get(f"/warm/{round}")
            assert warm.status_code == 200
            data = await send_raw(proxy.ports["outbound"], smuggling_post(connection))
            [answer] = parse_responses(data)
            assert answer.status == 400
            assert answer.header("x-forklane-error") == "bad-connection-header"
            assert answer.header("connection") == "close"
            mine = await client.get(f"/mine/{round}")
            assert mine.status_code == 200
            assert mine.json()["target"] == f"/mine/{round}"
    assert b"/smuggled" not in upstream.raw
    assert b"POST /x" not in upstream.raw
    assert [r.target for r in upstream.requests] == [
        t for round in range(5) for t in (f"/warm/{round}", f"/mine/{round}")
    ]


async def test_nominated_forwarding_fields_are_this_hops_only(
    rig: tuple[Proc, RecordingUpstream]
) -> None:
    """`Connection: x-forwarded-for, via` consumes the client's values at this hop: the next
    hop sees the proxy's own view of the client, not what the client claimed."""
    proxy, upstream = rig
    async with httpx.AsyncClient(base_url=proxy.url()) as client:
        resp = await client.get("/fwd", headers={
            "host": "svc", "connection": "x-forwarded-for, via, x-custom",
            "x-forwarded-for": "203.0.113.9", "via": "1.1 spoofed", "x-custom": "1",
            "x-kept": "yes",
        })
    assert resp.status_code == 200
    [seen] = upstream.requests
    assert seen.header("x-forwarded-for") == "127.0.0.1"
    assert seen.header("via") == "1.1 forklane"
    assert seen.header("x-custom") is None
    assert seen.header("x-kept") == "yes"


async def test_request_trailers_never_carry_framing_or_routing_fields(
    rig: tuple[Proc, RecordingUpstream]
) -> None:
    """(A Content-Length in trailers is already refused by the parser, with 400.)"""
    proxy, upstream = rig
    raw = (b"POST /t HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n"
           b"4\r\nabcd\r\n0\r\nx-checksum: 42\r\nhost: elsewhere\r\n"
           b"x-forklane-routed: 1\r\nx-forklane-routing-key: alice\r\n\r\n")
    [resp] = parse_responses(await send_raw(proxy.ports["outbound"], raw))
    assert resp.status == 200
    [seen] = upstream.requests
    assert seen.body == b"abcd"
    assert seen.header("x-checksum") == "42"
    assert seen.header("host") == "svc"  # the trailer's Host never reached it
    assert seen.header("x-forklane-routing-key") is None
    # the sidecars' own mark is the Via entry on the head; the trailer's look-alike is gone
    assert seen.header("via") == "1.1 forklane"
    assert upstream.raw.count(b"x-forklane-routed") == 0


class _NominatingUpstream(asyncio.Protocol):
    """Answers every request with a response whose Connection nominates its own framing."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nConnection: content-length, x-hop\r\nx-hop: secret\r\n"
                b"Content-Length: 5\r\nx-end: kept\r\n\r\nhello"
            )


async def test_an_upstream_response_keeps_its_framing_whatever_connection_names(
    tmp_path: Path,
) -> None:
    """The same rule for responses: the framing is the proxy's own (recomputed), so a
    nomination of Content-Length changes nothing; the other nominated fields are dropped.
    Two requests on one client connection prove the framing stayed exact."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_NominatingUpstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = write_config(tmp_path / "routing.yaml", {
        "version": "nominating-1",
        "services": [{"name": "svc", "endpoints": [f"127.0.0.1:{port}"]}],
    })
    proxy = await asyncio.to_thread(start_proxy, config, tmp_path / "proxy.log")
    try:
        async with httpx.AsyncClient(base_url=proxy.url(), headers={"host": "svc"}) as client:
            for _ in range(2):
                resp = await client.get("/")
                assert resp.status_code == 200 and resp.content == b"hello"
                assert resp.headers["content-length"] == "5"
                assert "x-hop" not in resp.headers
                assert resp.headers["x-end"] == "kept"
    finally:
        await asyncio.to_thread(proxy.stop)
        server.close()
        await server.wait_closed()

