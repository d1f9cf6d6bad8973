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

import h2.config
import h2.events

from forklane.proxy.http2._flow import GracefulH2Connection
from tests.integration.test_http2 import H2Upstream, _UpConn
from tests.support.polling import eventually
from tests.support.processes import Proc
from tests.support.upstream import RecordingUpstream

Upstreams = Callable[[str], Any]
ProxyFactory = Callable[..., Proc]


async def test_sigterm_sends_goaway_and_streams_in_flight_finish(
    proxy_factory: ProxyFactory,
) -> None:
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
    # A client that, as RFC 9113 §6.8 allows, reads the streams at or below a graceful
    # GOAWAY's last stream id to their end (h2 alone would close at the GOAWAY).
    conn = GracefulH2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sids = []
    for _ in range(3):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                (":authority", "svc")], end_stream=True)
        sids.append(sid)
    await loop.sock_sendall(sock, conn.data_to_send())
    try:
        await eventually(lambda: len(up.seen) == 3, within=10, what="three streams upstream")
        proxy.popen.send_signal(signal.SIGTERM)
        goaway: h2.events.ConnectionTerminated | None = None
        statuses: dict[int, str] = {}
        ended: set[int] = set()
        released = False
        while len(ended) < 3:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
            assert data, f"closed early: goaway={goaway}, ended={ended}"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    goaway = event
                elif isinstance(event, h2.events.ResponseReceived):
                    statuses[event.stream_id] = dict(event.headers)[b":status"].decode()
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length,
                                                   event.stream_id)
            await loop.sock_sendall(sock, conn.data_to_send())
            if goaway is not None and not released:
                released = True
                release.set()  # the answers come only after the GOAWAY went out
        assert goaway is not None and goaway.error_code == 0
        assert goaway.last_stream_id == max(sids)
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
