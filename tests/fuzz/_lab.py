"""One in-process listener for the protocol harnesses: a real `ListenerContext` routing `svc`
to a real recording upstream, and client connections over real socketpairs (the listener's
own protocol classes on real asyncio transports). Any exception that reaches the event loop
(a protocol callback that raised, a task that failed) is recorded: that is a crash."""

from __future__ import annotations

import asyncio
import random
import socket
from functools import partial
from typing import Any

from forklane.proxy.balancer import Balancer
from forklane.proxy.http1.server import Downstream
from forklane.proxy.http1.upstream import Pools
from forklane.proxy.listener.context import ListenerContext
from forklane.proxy.metrics import Stats
from forklane.proxy.run import http2_handoff
from forklane.proxy.schema import RoutingSnapshot
from forklane.proxy.settings import ProxySettings
from forklane.proxy.state import TableHolder
from tests.support.upstream import RecordingUpstream


class Lab:
    """`h2`: the upstream speaks h2c (what the HTTP/2 listener forwards to), else HTTP/1.1."""

    def __init__(self, h2: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self.crashes: list[dict[str, Any]] = []
        self.loop.set_exception_handler(self._record)
        self.upstream: Any = self.loop.run_until_complete(self._upstream(h2))
        settings = ProxySettings(header_timeout=1.0, idle_timeout=2.0, body_timeout=1.0)
        holder = TableHolder()
        holder.apply(RoutingSnapshot.model_validate({
            "version": "fuzz",
            "carriers": [{"kind": "header", "name": "x-forklane-routing-key"},
                         {"kind": "baggage", "name": "forklane-routing-key"},
                         {"kind": "tracestate", "name": "forklane"}],
            "services": [{"name": "svc", "endpoints": [self.upstream.address],
                          "timeouts": {"request": 1.0}}],
            "forks": [{"routing_key": "k1", "service": "svc",
                       "endpoints": [self.upstream.address]}],
        }), source="fuzz")
        rng = random.Random(7)
        self.stats = Stats()
        self.ctx = ListenerContext("outbound", holder, settings, self.stats,
                                   Pools(self.loop, 8), Balancer(self.loop.time, rng.random),
                                   rng.random, self.loop)
        self.ctx.open_h2 = http2_handoff(self.ctx)
        self.sweeper = self.loop.create_task(self._sweep())

    def _record(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """A crash of the proxy's code; the test upstream's own troubles (the h2c one is a
        plain h2 state machine that refuses odd input by raising) are not the proxy's."""
        exc = context.get("exception")
        tb = exc.__traceback__ if exc is not None else None
        files = []
        while tb is not None:
            files.append(tb.tb_frame.f_code.co_filename)
            tb = tb.tb_next
        ours = any("/forklane/" in f for f in files)
        if files and not ours and any("/tests/" in f for f in files):
            return
        self.crashes.append(context)

    @staticmethod
    async def _upstream(h2: bool) -> Any:
        if h2:
            from tests.integration.test_http2 import H2Upstream

            return await H2Upstream("fuzz").start()
        return await RecordingUpstream("fuzz").start()

    async def _sweep(self) -> None:  # the proxy's housekeeping: deadlines every 50 ms
        while True:
            self.ctx.sweep()
            await asyncio.sleep(0.05)

    def exchange(self, chunks: list[bytes], within: float = 4.0) -> tuple[bytes, bool]:
        """Send `chunks` on a fresh client connection, then half-close it; what came back
        and whether the proxy closed the connection by `within` seconds."""
        return self.loop.run_until_complete(self._exchange(chunks, within))

    async def _exchange(self, chunks: list[bytes], within: float) -> tuple[bytes, bool]:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        await self.loop.connect_accepted_socket(partial(Downstream, self.ctx), theirs)
        out = bytearray()
        closed = False
        try:
            for chunk in chunks:
                await self.loop.sock_sendall(ours, chunk)
            # Let answers arrive before the half-close (HTTP/2 ends the connection at EOF):
            # read until the proxy has been quiet for a moment.
            while True:
                try:
                    data = await asyncio.wait_for(self.loop.sock_recv(ours, 65536), 0.05)
                except TimeoutError:
                    break
                if not data:
                    closed = True
                    break
                out += data
            if not closed:
                ours.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the proxy closed early (an answer that ends the connection): fine
        try:
            async with asyncio.timeout(within):
                while not closed:
                    try:
                        data = await self.loop.sock_recv(ours, 65536)
                    except OSError:
                        closed = True
                        break
                    if not data:
                        closed = True
                        break
                    out += data
        except TimeoutError:
            pass
        ours.close()
        return bytes(out), closed

    def close(self) -> None:
        self.sweeper.cancel()
        for conn in tuple(self.ctx.connections):
            conn.close()
        self.loop.run_until_complete(self.upstream.aclose())
        self.loop.run_until_complete(asyncio.sleep(0.05))
        self.loop.close()
