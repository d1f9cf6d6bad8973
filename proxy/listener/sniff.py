"""The first moments of every connection on a listener with capture on.

`Sniffer` is the listener's protocol until it knows what to do with a connection:

- not redirected (a direct connection to the listener, explicit mode): handed to the HTTP/1.1
  module at once, which behaves exactly as without capture (unknown authority → 404);
- redirected, outbound: refused if the sidecar opened it itself (a loop: the capture rules'
  UID is not ours); relayed at once when its destination port is opaque; otherwise the first
  bytes decide. HTTP/1 whose first request names an authority the routing table knows, and
  h2c, go to the HTTP modules, which then send requests for unknown authorities to the
  original destination instead of answering 404. Everything else is relayed untouched: TLS,
  any other protocol, HTTP for hosts forklane does not route, and a client that says nothing
  for `capture_detect_timeout` (a server-first protocol: MySQL, SMTP);
- redirected, inbound: HTTP/1 and h2c to the local app's port go to the HTTP module (forks may
  take them); everything else is relayed untouched to the app on the port it was sent to.

Invariants:
- the bytes read while deciding are handed on whole, in order, to whoever takes over;
- what is buffered is bounded by the header limit, and the wait by the detection timeout
  (the header timeout once an HTTP/1 request line was seen);
- the original-destination look-up happens once per connection, and only with capture on:
  requests on the HTTP path pay nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from forklane.proxy.listener.detect import Detected, classify, head_complete, request_authority
from forklane.proxy.listener.origdst import Address, captured_destination
from forklane.proxy.listener.peer import SockDiag
from forklane.proxy.listener.relay import ListenerShared, TcpRelay
from forklane.proxy.routing import routes_authority
from forklane.proxy.schema import parse_endpoint
from forklane.proxy.sockets import tune_transport
from forklane.proxy.state import TableHolder
from forklane.proxy.table import Route, Timeouts, passthrough_route

__all__ = ["CapturePolicy", "HttpConnection", "Sniffer"]

log = logging.getLogger("forklane.proxy")

_DEADLINE_DETECT = 1


class HttpConnection(Protocol):
    """The HTTP/1.1 connection protocol the sniffer hands a connection to."""

    passthrough: Route | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool | None: ...


class SnifferContext(ListenerShared, Protocol):
    @property
    def holder(self) -> TableHolder: ...
    @property
    def max_header_bytes(self) -> int: ...
    @property
    def header_timeout(self) -> float: ...
    def add(self, conn: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class CapturePolicy:
    """What one listener does with captured connections; built once at start."""

    make_http: Callable[[], HttpConnection]
    opaque_ports: frozenset[int]
    detect_timeout: float
    own_uid: int
    passthrough_timeouts: Timeouts
    app_host: str | None = None  # inbound: the local app's host (loopback)
    app_port: int | None = None  # inbound: the port whose HTTP forklane routes
    diag: SockDiag | None = None  # outbound: the loop guard's kernel look-up
    # Where a connection was redirected from (conntrack); tests outside a network namespace
    # stand a fixed address in for it.
    original: Callable[[Any], Address | None] = captured_destination

    @classmethod
    def for_listener(cls, kind: str, ctx: SnifferContext,
                     make_http: Callable[[], HttpConnection]) -> CapturePolicy:
        s = ctx.settings
        app_host = app_port = None
        if kind == "inbound" and s.local_app is not None:
            app_host, app_port = parse_endpoint(s.local_app)
        return cls(
            make_http=make_http,
            opaque_ports=frozenset(s.capture_opaque_ports),
            detect_timeout=s.capture_detect_timeout,
            own_uid=os.geteuid(),
            app_host=app_host,
            app_port=app_port,
            passthrough_timeouts=Timeouts(connect=s.relay_connect_timeout, request=15.0,
                                          idle=s.idle_timeout),
            diag=SockDiag() if kind == "outbound" else None,
        )


class Sniffer(asyncio.Protocol):
    """A connection on a capturing listener, until HTTP or a relay takes it over."""

    deadline = 0.0
    deadline_kind = 0

    def __init__(self, ctx: SnifferContext, policy: CapturePolicy) -> None:
        self.ctx = ctx
        self.policy = policy
        self.transport: asyncio.Transport | None = None
        self.target: Address | None = None
        self.buffer = b""
        self.detected: Detected | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        original = self.policy.original(sock) if sock is not None else None
        if original is None:
            self._to_http(transport, b"", None)  # not redirected: the listener as without capture
            return
        self.transport = transport
        ctx = self.ctx
        tune_transport(transport)
        ctx.add(self)
        policy = self.policy
        if policy.app_host is not None:
            self.target = Address(policy.app_host, original.port)
        else:
            self.target = original
            if self._is_loop(sock, original):
                return
        if original.port in policy.opaque_ports:
            self._relay("opaque-port")
            return
        self.deadline = ctx.loop.time() + policy.detect_timeout
        self.deadline_kind = _DEADLINE_DETECT

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer = self.buffer + data if self.buffer else data
        detected = self.detected
        if detected is None:
            detected = self.detected = classify(buffer, self.ctx.max_header_bytes)
            if detected is None:
                return
            if detected is Detected.HTTP1 and self.policy.app_port is None:
                # Outbound HTTP/1: the first request's authority decides; its head may take
                # a little longer than its first line.
                self.deadline = self.ctx.loop.time() + self.ctx.header_timeout
        self._decide(detected, eof=False)

    def eof_received(self) -> bool:
        # The client closed its side before we knew what it speaks: pass the EOF on as it is.
        self._decide(self.detected, eof=True)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.transport = None
            self._leave()

    # -- the listener's sweep and shutdown -----------------------------------------------------

    def expire_requests(self, now: float) -> None:
        """No requests yet: only the detection deadline applies."""

    def deadline_expired(self) -> None:
        self.deadline_kind = 0
        if self.transport is not None:
            self._relay("detect-timeout")

    def drain(self) -> None:
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- deciding --------------------------------------------------------------------------------

    def _decide(self, detected: Detected | None, eof: bool) -> None:
        """Hand over or relay now, or return to wait for more bytes."""
        policy = self.policy
        table = self.ctx.holder.table
        if detected is None:
            self._relay("client-eof" if eof else "not-http", eof)
            return
        if detected is Detected.TLS or detected is Detected.OPAQUE:
            self._relay("tls" if detected is Detected.TLS else "not-http", eof)
            return
        if policy.app_port is not None:  # inbound: the app's HTTP port is routed, the rest not
            assert self.target is not None
            if self.target.port != policy.app_port:
                self._relay("other-port", eof)
            elif table is None:
                self._relay("no-config", eof)  # nothing to route by yet: the app answers
            else:
                self._hand_to_http(None, eof)
            return
        if detected is Detected.H2C:
            self._hand_to_http(self._passthrough(), eof)
            return
        end = head_complete(self.buffer)
        if end < 0:
            if eof or len(self.buffer) > self.ctx.max_header_bytes:
                self._relay("unknown-authority", eof)
            return
        if table is None:
            self._relay("no-config", eof)
            return
        authority = request_authority(self.buffer[:end])
        if authority is None or not routes_authority(table, authority.decode("latin-1")):
            self._relay("unknown-authority", eof)
            return
        self._hand_to_http(self._passthrough(), eof)

    def _passthrough(self) -> Route:
        target = self.target
        assert target is not None
        return passthrough_route(target.host, target.port, self.policy.passthrough_timeouts)

    def _is_loop(self, sock: Any, original: Address) -> bool:
        """A redirected connection the sidecar opened itself: refuse it, or it loops forever."""
        diag = self.policy.diag
        if diag is None:
            return False
        peer = sock.getpeername()
        owner = diag.owner_uid(sock.family, (peer[0], peer[1]), (original.host, original.port))
        if owner != self.policy.own_uid:
            return False
        stats = self.ctx.stats
        stats.capture_loops += 1
        if stats.capture_loops == 1 or stats.capture_loops % 1000 == 0:
            log.error(
                "capture: refused %d connection(s) this sidecar opened itself (to %s): the "
                "capture rules exclude another UID than ours (%d); fix --proxy-uid",
                stats.capture_loops, original, self.policy.own_uid,
            )
        transport = self.transport
        assert transport is not None
        transport.abort()
        return True

    # -- handing over ----------------------------------------------------------------------------

    def _leave(self) -> None:
        """Stop being a connection of the listener (whoever takes over counts it anew)."""
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.stats.connections_open -= 1
        self.deadline_kind = 0

    def _hand_to_http(self, passthrough: Route | None, eof: bool) -> None:
        transport = self.transport
        assert transport is not None
        self.transport = None
        self._leave()
        self.ctx.stats.connections_total -= 1  # the HTTP connection counts itself
        self._to_http(transport, self.buffer, passthrough, eof)

    def _to_http(self, transport: asyncio.Transport, data: bytes,
                 passthrough: Route | None, eof: bool = False) -> None:
        http = self.policy.make_http()
        http.passthrough = passthrough
        transport.set_protocol(cast(asyncio.BaseProtocol, http))
        http.connection_made(transport)
        if data:
            http.data_received(data)
        if eof and not http.eof_received():
            transport.close()

    def _relay(self, reason: str, eof: bool = False) -> None:
        transport = self.transport
        target = self.target
        if transport is None or target is None:
            return
        self.transport = None
        ctx = self.ctx
        ctx.connections.discard(self)
        self.deadline_kind = 0
        # The relay takes the connection over as it is counted (open, total).
        TcpRelay(ctx, transport, target, reason, self.buffer, client_eof=eof)
