"""Graceful drain on HTTP/2 and for mirror copies, through a real proxy process.

- SIGTERM with HTTP/2 streams in flight: the client gets GOAWAY naming the last stream the
  proxy took (NO_ERROR), every stream in flight finishes with its answer, the process exits 0;
- a mirror copy in flight at SIGTERM still reaches its target before the process exits (the
  drain waits for copies as for requests, up to the drain deadline).
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from typing import Any

import hpack

from tests.integration.test_http2 import H2Upstream, _UpConn
from tests.support.polling import eventually
from tests.support.processes import Proc
from tests.support.upstream import RecordingUpstream

Upstreams = Callable[[str], Any]
ProxyFactory = Callable[..., Proc]


def _frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + \
        payload


async def test_sigterm_sends_goaway_and_streams_in_flight_finish(
    proxy_factory: ProxyFactory,
) -> None:
    """A raw HTTP/2 client (frames by hand, HPACK by the hpack package), so that nothing
    between the test and the wire decides what a GOAWAY means."""
    up = await H2Upstream("slow").start()
    release = asyncio.Event()

    async def hold(conn: _UpConn, sid: int, headers: dict[str, str]) -> None:
        await release.wait()

    up.behaviour = hold
    proxy = proxy_factory({"version": "h2-drain", "services": [
        {"name": "svc", "endpoints": [up.address]}]}, "--drain-seconds", "10")
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", proxy.ports["outbound"]))
    sock.setblocking(False)
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(0x4, 0, 0, b"")
    sids = [1, 3, 5]
    for sid in sids:
        block = encoder.encode([(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                (":authority", "svc")])
        out += _frame(0x1, 0x4 | 0x1, sid, block)  # END_HEADERS | END_STREAM
    await loop.sock_sendall(sock, out)
    try:
        await eventually(lambda: len(up.seen) == 3, within=10, what="three streams upstream")
        proxy.popen.send_signal(signal.SIGTERM)
        goaway: tuple[int, int] | None = None  # (last stream id, error code)
        statuses: dict[int, str] = {}
        ended: set[int] = set()
        buffer = b""
        while len(ended) < 3:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
            assert data, f"closed early: goaway={goaway}, ended={ended}"
            buffer += data
            while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                length = int.from_bytes(buffer[:3], "big")
                kind, flags = buffer[3], buffer[4]
                sid = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                payload, buffer = buffer[9:9 + length], buffer[9 + length:]
                if kind == 0x7:
                    goaway = (int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                              int.from_bytes(payload[4:8], "big"))
                    release.set()  # the answers come only after the GOAWAY went out
                elif kind == 0x4 and not flags & 0x1:
                    await loop.sock_sendall(sock, _frame(0x4, 0x1, 0, b""))  # SETTINGS ACK
                elif kind == 0x1:
                    fields = dict(decoder.decode(payload))
                    statuses[sid] = fields[":status"]
                if kind in (0x0, 0x1) and flags & 0x1:
                    ended.add(sid)
        assert goaway == (max(sids), 0)  # NO_ERROR, naming the last stream taken
        assert statuses == {sid: "200" for sid in sids}
        assert await asyncio.to_thread(proxy.popen.wait, 15) == 0
    finally:
        release.set()
        sock.close()
        await up.aclose()


class SlowShadow(RecordingUpstream):
    """Answers each copy after a second, and notes whether the proxy was still there."""

    still_connected: list[bool]

    async def answer(self, conn: Any, seen: Any, keep_alive: bool) -> None:
        await asyncio.sleep(1.0)  # the copy is still on its way when the answer is back
        self.still_connected.append(conn.transport in self.open_transports)
        await super().answer(conn, seen, keep_alive)


async def test_a_mirror_copy_in_flight_at_sigterm_still_arrives(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    primary: RecordingUpstream = await upstreams("primary")
    shadow = SlowShadow("shadow")
    shadow.still_connected = []
    await shadow.start()
    proxy = proxy_factory({
        "version": "mirror-drain",
        "services": [{"name": "svc", "endpoints": [primary.address]}],
        "mirrors": [{"name": "copy", "service": "svc", "percent": 100,
                     "endpoints": [shadow.address]}],
    }, "--drain-seconds", "10")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports["outbound"])
    writer.write(b"GET /m HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    await eventually(lambda: len(shadow.requests) == 1, within=5, what="the copy upstream")
    proxy.popen.send_signal(signal.SIGTERM)
    try:
        assert await asyncio.to_thread(proxy.popen.wait, 15) == 0
        # The proxy was still connected when the copy's answer came: it waited for it.
        await eventually(lambda: len(shadow.still_connected) == 1, within=5, what="an answer")
        assert shadow.still_connected == [True]
    finally:
        await shadow.aclose()
