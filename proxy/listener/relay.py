"""Opaque TCP relay: bytes pass unchanged between a client and the destination it meant.

Used for every captured connection forklane does not route (TLS, databases, unknown hosts,
server-first protocols): the sidecar is then a plain TCP hop, as Envoy's `tcp_proxy` and
Linkerd's opaque transport are.

Invariants:
- bytes are never changed, reordered or dropped: what one side sent is what the other gets,
  starting with the bytes read while detecting the protocol;
- backpressure both ways: a side whose write buffer is full pauses reading on the other, so a
  relay holds at most about one write buffer per direction (plus the detection bytes);
- half-close is passed on: EOF from one side becomes a write shutdown towards the other, and
  the other direction keeps flowing until it ends too;
- a failed or timed-out upstream connect resets the client connection (what a refused
  connect would have looked like without the sidecar) and is counted;
- every relay is counted once when it starts, its bytes per direction as they pass, and it
  leaves the listener's connection set exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from forklane.proxy.listener.origdst import Address
from forklane.proxy.metrics import Stats
from forklane.proxy.settings import ProxySettings
from forklane.proxy.sockets import tune_transport

__all__ = ["ListenerShared", "TcpRelay"]

_DEADLINE_IDLE = 2  # the listener sweep's "idle" kind: expire() closes quietly


class ListenerShared(Protocol):
    """What a relay needs of its listener's shared context."""

    @property
    def kind(self) -> str: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def stats(self) -> Stats: ...
    @property
    def settings(self) -> ProxySettings: ...
    @property
    def connections(self) -> set[Any]: ...
    @property
    def draining(self) -> bool: ...
    @property
    def on_idle(self) -> Callable[[], None] | None: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...
    def adopt(self, conn: Any) -> None: ...


class _Side(asyncio.Protocol):
    """One end of a relay. `up` is the destination side, the other is the client side."""

    __slots__ = ("blocked", "eof", "index", "relay", "transport")

    def __init__(self, relay: TcpRelay, index: int) -> None:
        self.relay = relay
        self.index = index  # 0: bytes from the client (upstream direction), 1: from upstream
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.blocked = False  # our write buffer is full: the other side's reading is paused

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        relay.active = True
        relay.bytes[self.index] += len(data)
        peer = relay.sides[1 - self.index].transport
        if peer is not None:
            peer.write(data)
        else:
            relay.pending.append(data)  # client bytes while the upstream connect is under way

    def eof_received(self) -> bool:
        self.eof = True
        self.relay.half_closed(self.index)
        return True  # keep the other direction open

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.relay.side_lost(self.index, exc)

    def pause_writing(self) -> None:
        self.blocked = True
        peer = self.relay.sides[1 - self.index].transport
        if peer is not None:
            peer.pause_reading()

    def resume_writing(self) -> None:
        self.blocked = False
        peer = self.relay.sides[1 - self.index].transport
        if peer is not None:
            peer.resume_reading()


class _UpstreamSide(_Side):
    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        tune_transport(self.transport)


class TcpRelay:
    """One relayed connection, registered with its listener like an HTTP connection is."""

    deadline_kind = _DEADLINE_IDLE

    def __init__(self, ctx: ListenerShared, client: asyncio.Transport, target: Address,
                 reason: str, initial: bytes, client_eof: bool = False) -> None:
        self.ctx = ctx
        self.target = target
        self.reason = reason
        self.pending: list[bytes] = [initial] if initial else []
        self.active = False
        self.closed = False
        self.sides = (_Side(self, 0), _UpstreamSide(self, 1))
        stats = ctx.stats
        counts = stats.relay_bytes.get(ctx.kind)
        if counts is None:
            counts = stats.relay_bytes[ctx.kind] = [0, 0]
        self.bytes = counts
        counts[0] += len(initial)
        stats.relay_connections[f"{ctx.kind}\x1f{reason}"] += 1
        stats.relays_open += 1
        self.idle = ctx.settings.relay_idle_timeout
        self.deadline = ctx.loop.time() + self.idle
        down = self.sides[0]
        down.transport = client
        down.eof = client_eof
        client.set_protocol(down)
        client.pause_reading()  # until the upstream is there: bounded by `initial`
        ctx.adopt(self)  # the sniffer counted the connection; the sweep watches its idleness
        ctx.spawn(self._connect())

    async def _connect(self) -> None:
        ctx = self.ctx
        up = self.sides[1]
        try:
            async with asyncio.timeout(ctx.settings.relay_connect_timeout):
                await ctx.loop.create_connection(lambda: up, self.target.host, self.target.port)
        except (OSError, TimeoutError) as exc:
            reason = "relay-connect-timeout" if isinstance(exc, TimeoutError) else "relay-connect-failed"
            ctx.stats.upstream_errors[reason] += 1
            client = self.sides[0].transport
            if client is not None:
                client.abort()
            return
        transport = up.transport
        client = self.sides[0].transport
        if transport is None:
            return
        if client is None or self.closed:
            transport.abort()
            return
        pending, self.pending = self.pending, []
        if pending:
            transport.writelines(pending)
        if self.sides[0].eof:
            self.half_closed(0)
        elif not up.blocked:
            client.resume_reading()

    # -- events from the sides -------------------------------------------------------------

    def half_closed(self, index: int) -> None:
        """Side `index` sent EOF: shut down writing towards the other; both done → close."""
        other = self.sides[1 - index]
        if other.transport is None:
            return  # the upstream is not connected yet: `_connect` passes the EOF on
        if other.eof and self.sides[index].eof:
            self.close()
            return
        if other.transport.can_write_eof():
            other.transport.write_eof()
        else:  # pragma: no cover - TCP transports can always write EOF
            self.close()

    def side_lost(self, index: int, exc: Exception | None) -> None:
        other = self.sides[1 - index].transport
        if other is not None:
            if exc is None:
                other.close()  # after what is buffered for it
            else:
                other.abort()  # a reset is passed on as a reset
        if self.sides[0].transport is None and self.sides[1].transport is None:
            self._finished()
        elif index == 0 and self.sides[1].transport is None:
            self._finished()  # the client left before the upstream connect finished

    def _finished(self) -> None:
        if self.closed:
            return
        self.closed = True
        ctx = self.ctx
        ctx.stats.relays_open -= 1
        ctx.stats.connections_open -= 1
        ctx.connections.discard(self)
        if ctx.draining and not ctx.connections and ctx.on_idle is not None:
            ctx.on_idle()

    # -- the listener's sweep and shutdown --------------------------------------------------

    def deadline_expired(self) -> None:
        if self.active:
            self.active = False
            self.deadline = self.ctx.loop.time() + self.idle
            self.deadline_kind = _DEADLINE_IDLE
            return
        self.close()

    def expire_requests(self, now: float) -> None:
        """No requests: the sweep finds nothing to time out but idleness."""

    def drain(self) -> None:
        """Shutdown: a relay has no request boundary to stop at; it ends at the drain deadline."""

    def close(self) -> None:
        for side in self.sides:
            if side.transport is not None:
                side.transport.close()
        if self.sides[1].transport is None:
            self._finished()
