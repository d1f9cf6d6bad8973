"""HTTP/2 listener connections: one `H2Downstream` per client connection, one `H2Stream` per
request, proxied to a stream on a pooled upstream h2c connection.

The HTTP/1.1 listener hands a connection over when it starts with the HTTP/2 preface (h2c
prior knowledge) or when TLS negotiated ALPN `h2`; from then on this module owns it.

Invariants:
- one routing decision per stream, made from the same `RequestView` as on HTTP/1.1, on the
  table that was current when the stream's headers arrived;
- every stream ends exactly once (`H2Stream.finish`): counted in the listener's rows, removed
  from its connection, its upstream stream cancelled if still open;
- a gRPC stream never gets an HTTP error page from the proxy, only a gRPC status;
- nothing is read from one side faster than the other side's window drains it (see `_flow`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from forklane.proxy.context.carriers import inject_routing_key
from forklane.proxy.http2 import grpc
from forklane.proxy.http2._flow import GracefulH2Connection, Peer, Pipe
from forklane.proxy.http2._guard import FrameGuard
from forklane.proxy.http2.upstream import CONNECTION_WINDOW, H2Upstream
from forklane.proxy.requestlog import count_request, log_request
from forklane.proxy.routing import Decision, RequestView, decide
from forklane.proxy.sockets import tune_transport
from forklane.proxy.table import (
    ROUTED_MARKER,
    Destination,
    Endpoint,
    Route,
    RoutingTable,
    routed_by_sidecar,
)

if TYPE_CHECKING:
    from forklane.proxy.http1.server import ListenerContext
    from forklane.proxy.tracing import ProxySpan

__all__ = ["PREFACE", "H2Downstream"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_CONCURRENT_STREAMS = 100
_VIA_HOP = b"2 forklane"

# What the request path does with a header name (lowercase; h2 delivers lowercase names).
(_DROP, _TE, _HOST, _CTYPE, _GRPC_TIMEOUT, _XFF, _XFP, _VIA, _MARKER, _INTERESTING,
 _EXPLAIN, _MALFORMED) = range(12)
_SPECIAL: dict[bytes, int] = {
    # Connection-specific fields make an HTTP/2 request malformed (RFC 9113 §8.2.2); h2's
    # validation refuses them too when it is on. Never dropped silently: what a client meant
    # to say with them to this hop cannot be honoured.
    b"connection": _MALFORMED,
    b"keep-alive": _MALFORMED,
    b"proxy-connection": _MALFORMED,
    b"transfer-encoding": _MALFORMED,
    b"upgrade": _MALFORMED,
    b"proxy-authorization": _DROP,
    b"proxy-authenticate": _DROP,
    b"trailer": _DROP,
    b"http2-settings": _DROP,
    b"te": _TE,
    b"host": _HOST,
    b"content-type": _CTYPE,
    b"grpc-timeout": _GRPC_TIMEOUT,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFP,
    b"via": _VIA,
    ROUTED_MARKER.encode(): _MARKER,
}
# Response fields that never cross a hop.
_RESPONSE_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                           b"transfer-encoding", b"upgrade", b"trailer"})


class _Actions:
    """The header action map of one routing table, built once per table swap."""

    __slots__ = ("map", "table")

    def __init__(self, table: RoutingTable | None, explain: bytes | None) -> None:
        actions = dict(_SPECIAL)
        if table is not None:
            for name in table.interesting_raw:
                actions.setdefault(name, _INTERESTING)
        if explain is not None:
            actions.setdefault(explain, _EXPLAIN)
        self.map = actions
        self.table = table


class H2Stream:
    """One request and its response on a downstream HTTP/2 connection."""

    # Class-level defaults: most streams keep them (cheaper than setting each per stream).
    grpc = False
    explain = False
    is_head = False
    route: Route | None = None
    decision: Decision | None = None
    span: ProxySpan | None = None
    dest: Destination | None = None
    endpoint: Endpoint | None = None
    track = False
    up: H2Upstream | None = None
    up_sid = 0
    resp_started = False
    status = 0
    done = False
    req_ended = False
    deadline = 0.0  # 0: none. Plain HTTP/2: until the response head. gRPC: until the end.
    grpc_deadline = 0.0
    attempts = 0
    fallback_used = False
    error = ""
    method = b""
    path = b""
    authority = b""

    def __init__(self, down: H2Downstream, sid: int, started: float) -> None:
        self.down = down
        self.sid = sid
        self.started = started
        self.headers: list[tuple[bytes, bytes]] = []  # the forwarded request head
        self.req = Pipe(down, sid, _nothing)
        self.resp = Pipe(None, 0, self.response_sent)

    # -- routing and dispatch ----------------------------------------------------------------

    def dispatch(self, dest: Destination, exclude: Endpoint | None, fresh: bool) -> None:
        ctx = self.down.ctx
        endpoint = ctx.balancer.pick(dest, exclude)
        self.dest = dest
        self.endpoint = endpoint
        self.track = len(dest.endpoints) > 1
        conn = None if fresh else ctx.h2_pools.take(endpoint.address)
        if conn is not None:
            self.bind(conn)
        else:
            ctx.spawn(self._open(dest, endpoint))

    async def _open(self, dest: Destination, endpoint: Endpoint) -> None:
        ctx = self.down.ctx
        try:
            async with asyncio.timeout(dest.timeouts.connect):
                conn = await ctx.h2_pools.connect(endpoint)
        except (OSError, TimeoutError, ConnectionError, ProtocolError) as exc:
            reason = "connect-timeout" if isinstance(exc, TimeoutError) else "connect-failed"
            self.connect_failed(dest, endpoint, reason)
            return
        if self.done:
            return
        if conn.has_capacity():
            self.bind(conn)
        else:
            self.dispatch(dest, endpoint if len(dest.endpoints) > 1 else None, fresh=False)

    def connect_failed(self, dest: Destination, endpoint: Endpoint, reason: str) -> None:
        if self.done:
            return
        ctx = self.down.ctx
        ctx.balancer.failed(endpoint)
        ctx.stats.upstream_errors[reason] += 1
        route = self.route
        assert route is not None
        if self.attempts < ctx.retries and len(dest.endpoints) > 1:
            self.attempts += 1
            self.dispatch(dest, endpoint, fresh=True)
            return
        if route.fallback is not None and not self.fallback_used:
            self.fallback_used = True
            ctx.stats.fork_fallbacks += 1
            self.dispatch(route.fallback, None, fresh=False)
            return
        error = "fork-unavailable" if route.kind == "fork" else f"upstream-{reason}"
        self.fail(503, grpc.UNAVAILABLE, error, f"{dest.name} is not reachable ({reason})")

    def bind(self, conn: H2Upstream) -> None:
        """Open the upstream stream and start moving the request body."""
        req = self.req
        headers_only = req.ended and not req.chunks and req.trailers is None
        try:
            sid = conn.open_stream(self, self.headers, headers_only)
        except ProtocolError:
            assert self.dest is not None
            self.dispatch(self.dest, None, fresh=True)
            return
        self.up = conn
        self.up_sid = sid
        if self.track:
            assert self.endpoint is not None
            self.down.ctx.balancer.endpoint_health(self.endpoint).active += 1
        if headers_only:
            req.done = True
        else:
            req.bind(conn, sid)
        resp = self.resp
        resp.src = conn
        resp.src_sid = sid
        if not self.grpc:
            assert self.dest is not None
            self.deadline = self.started + self.dest.timeouts.request

    # -- events from the client ----------------------------------------------------------------

    def client_data(self, data: bytes, flow_len: int) -> None:
        self.req.push(data, flow_len)

    def client_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        self.req_ended = True
        self.req.finish(trailers)

    def client_reset(self) -> None:
        if self.done:
            return
        self.req.discard()
        self.resp.discard()
        self.finish(0, reset=True)

    # -- UpstreamSink: events from the upstream stream -----------------------------------------

    def up_response(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self.done:
            return
        down = self.down
        status = 0
        out: list[tuple[bytes, bytes]] = []
        via: bytes | None = None
        for name, value in headers:
            if name == b":status":
                status = int(value)
                out.insert(0, (name, value))
            elif name in _RESPONSE_HOP:
                continue
            elif name == b"via":
                via = value if via is None else via + b", " + value
            else:
                out.append((name, value))
        out.append((b"via", via + b", " + _VIA_HOP if via else _VIA_HOP))
        if self.explain:
            out.append(self.explanation())
        if self.track:
            assert self.endpoint is not None
            balancer = down.ctx.balancer
            if status >= 500:
                balancer.failed(self.endpoint)
            else:
                balancer.succeeded(self.endpoint)
        self.resp_started = True
        self.status = status
        if not self.grpc:
            self.deadline = 0.0
        try:
            down.h2.send_headers(self.sid, out, end_stream=ended)
        except ProtocolError:
            self.finish(0, reset=True)
            return
        down.mark()
        if ended:
            self.resp.done = True
            self.response_sent()
        else:
            self.resp.bind(down, self.sid)

    def up_data(self, data: bytes, flow_len: int) -> None:
        self.resp.push(data, flow_len)

    def up_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.resp.finish([(n, v) for n, v in headers if n not in _RESPONSE_HOP])

    def up_end(self) -> None:
        self.up = None  # the upstream stream is over on both sides or will be reset below
        if not self.req.done:
            # The upstream answered without reading the whole request: stop sending it.
            conn, sid = self.resp.src, self.up_sid
            self.req.discard()
            if isinstance(conn, H2Upstream):
                conn.cancel(sid, ErrorCodes.NO_ERROR)
        self._release_endpoint()
        if not self.resp_started:
            self.fail(502, grpc.INTERNAL, "upstream-no-response",
                      "the upstream ended the stream without a response")
            return
        self.resp.finish(None)

    def up_reset(self, code: int, refused: bool) -> None:
        self.up = None
        self._release_endpoint()
        if self.done:
            return
        ctx = self.down.ctx
        if refused and self.req.sent == 0 and not self.resp_started and self.attempts < 3:
            # Never processed by the upstream (REFUSED_STREAM, or above a GOAWAY's last id).
            self.attempts += 1
            req = self.req
            req.dst = None
            req.done = False
            assert self.dest is not None
            self.dispatch(self.dest, None, fresh=False)
            return
        ctx.stats.upstream_errors["upstream-reset"] += 1
        if self.endpoint is not None:
            ctx.balancer.failed(self.endpoint)
        self.req.discard()
        self.fail(502, grpc.UNAVAILABLE, "upstream-reset",
                  f"the upstream reset the stream ({_code_name(code)})")

    def _release_endpoint(self) -> None:
        if self.track and self.endpoint is not None:
            self.down.ctx.balancer.endpoint_health(self.endpoint).active -= 1
            self.track = False

    # -- answers the proxy makes itself ----------------------------------------------------------

    def fail(self, status: int, grpc_status: int, error: str, message: str) -> None:
        """End the stream with an error: a gRPC status for gRPC, else an HTTP error answer
        (or a stream reset when the response head already went out)."""
        if self.done:
            return
        self.error = error
        down = self.down
        up, self.up = self.up, None
        if up is not None:
            up.cancel(self.up_sid)
            self._release_endpoint()
        self.deadline = 0.0
        resp = self.resp
        if self.resp_started:
            if self.grpc and not resp.ended:
                # A partial message is useless; the status says why. Give the upstream
                # connection its window back for what is dropped.
                resp.ack(sum(len(c) for c in resp.chunks))
                resp.chunks.clear()
                resp.src = None
                resp.finish(grpc.trailers(grpc_status, message))
                return
            self.resp.discard()
            try:
                down.h2.reset_stream(self.sid, ErrorCodes.INTERNAL_ERROR)
            except ProtocolError:
                pass
            down.mark()
            self.finish(0, reset=True)
            return
        self.resp_started = True
        resp.src = None
        try:
            if self.grpc:
                self.status = 200
                down.h2.send_headers(self.sid, grpc.trailers_only(grpc_status, message, error),
                                     end_stream=True)
                down.mark()
                resp.done = True
                self.response_sent()
                return
            self.status = status
            body = (message + "\n").encode("utf-8", "replace")
            head = [
                (b":status", b"%d" % status),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                (b"x-forklane-error", error.encode("ascii", "replace")),
                (b"cache-control", b"no-store"),
            ]
            if self.explain:
                head.append(self.explanation())
            down.h2.send_headers(self.sid, head, end_stream=self.is_head)
        except ProtocolError:
            self.finish(0, reset=True)
            return
        down.mark()
        if self.is_head:
            resp.done = True
            self.response_sent()
            return
        resp.chunks.append(body)
        resp.ended = True
        resp.bind(down, self.sid)

    def timed_out(self) -> None:
        ctx = self.down.ctx
        if self.grpc:
            ctx.stats.upstream_errors["grpc-deadline"] += 1
            self.fail(504, grpc.DEADLINE_EXCEEDED, "deadline-exceeded",
                      "the call's deadline passed in the proxy")
        elif not self.resp_started:
            ctx.stats.upstream_errors["upstream-timeout"] += 1
            self.fail(504, grpc.DEADLINE_EXCEEDED, "upstream-timeout",
                      "the upstream did not answer in time")

    def response_sent(self) -> None:
        """The last frame of the response went to the client."""
        self.finish(self.status, reset=False)

    def finish(self, status: int, reset: bool) -> None:
        if self.done:
            return
        self.done = True
        down = self.down
        ctx = down.ctx
        down.streams.pop(self.sid, None)
        up, self.up = self.up, None
        if up is not None:
            up.cancel(self.up_sid)
        self._release_endpoint()
        if not reset and not self.req_ended:
            # RFC 9113 §8.1: a complete response may end the request early with NO_ERROR.
            self.req.discard()
            try:
                down.h2.reset_stream(self.sid, ErrorCodes.NO_ERROR)
            except ProtocolError:
                pass
            down.mark()
        now = ctx.loop.time()
        count_request(ctx, self.route, status, now - self.started)
        span = self.span
        if span is not None:
            self.span = None
            span.finish(status, self.dest, self.endpoint)
        if ctx.access_log or ctx.stats.taps:
            self._log(status, now)
        down.stream_finished(self)

    def _log(self, status: int, now: float) -> None:
        """The same access-log / live-tap record as HTTP/1.1, with the protocol named."""
        log_request(
            self.down.ctx, protocol="grpc" if self.grpc else "h2", method=self.method,
            target=self.path, host=self.authority, status=status, elapsed=now - self.started,
            route=self.route, decision=self.decision, dest=self.dest, endpoint=self.endpoint,
            fallback=self.fallback_used, error=self.error or None, peer=self.down.peer,
        )

    def explanation(self) -> tuple[bytes, bytes]:
        decision = self.decision
        route = self.route
        if decision is None or route is None:
            return (b"x-forklane-route", b"-")
        parts = [
            f"kind={route.kind}",
            f"rule={route.rule}",
            f"destination={self.dest.name if self.dest else '-'}",
            f"endpoint={self.endpoint.address if self.endpoint else '-'}",
            f"carrier={decision.key.carrier or '-'}",
        ]
        if self.fallback_used:
            parts.append("fallback=baseline")
        return (b"x-forklane-route", "; ".join(parts).encode("ascii", "replace"))


def _nothing() -> None:
    return None


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


class H2Downstream(asyncio.Protocol, Peer):
    """One client HTTP/2 connection on a listener."""

    # What the listener's sweep reads (HTTP/2 connections have no request queue).
    queue: tuple[()] = ()
    deadline = 0.0
    deadline_kind = 1  # ask the sweep every tick: stream deadlines and idleness are checked here
    passthrough: Route | None = None  # captured connection: where unknown authorities go

    def __init__(self, ctx: ListenerContext, tls: bool = False) -> None:
        Peer.__init__(self, ctx.h2_hub)
        self.ctx = ctx
        self.tls = tls
        settings = ctx.settings
        self.h2 = GracefulH2Connection(H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=settings.h2_validate_headers,
        ))
        self.streams: dict[int, H2Stream] = {}
        self.actions = _Actions(None, ctx.explain_raw)
        self.peer = b""
        self.streams_total = 0
        self.premature_resets = 0
        self.reset_threshold = settings.h2_rapid_reset_threshold
        self.last_sid = 0
        self.goaway_sent = False
        self.closing = False
        self.idle_since = ctx.loop.time()
        self.starting: list[H2Stream] = []  # routed in this read, dispatched at its end
        self.backlog = b""  # input beyond one turn's share, taken in the next iteration
        self.read_paused = False
        self.abused = False
        self.guard: FrameGuard

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        ctx = self.ctx
        self.peer = tune_transport(transport)
        ctx.connections.add(self)
        ctx.stats.connections_open += 1
        ctx.stats.connections_total += 1
        now = ctx.loop.time()
        strikes = ctx.h2_abuse.strikes(self.peer, now)
        if strikes:
            # Caught abusing recently: reconnecting does not buy a fresh budget.
            self.reset_threshold = max(1, self.reset_threshold // 10**strikes)
        self.guard = FrameGuard(ctx.h2_limits, now, strikes)
        h2 = self.h2
        h2.initiate_connection()
        h2.update_settings({
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: 2 * ctx.max_header_bytes,
            SettingCodes.ENABLE_PUSH: 0,
        })
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.mark()

    def data_received(self, data: bytes) -> None:
        if self.backlog:
            self.backlog += data  # reading is paused; bytes that were already on their way
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        """Hand `data` to the codec, at most one turn's worth (see `_guard`): the rest waits
        for a later loop iteration with reading paused, so other connections get their turn."""
        guard = self.guard
        take, violation = guard.scan(data, self.ctx.loop.time(), self.sent_bytes)
        if violation is not None:
            if take and violation.reason != "h2-control-flood":
                self._receive(data[:take])
            self.abuse(violation.reason, violation.error_code, violation.detail)
            return
        if take < len(data):
            self.backlog = data[take:]
            if self.transport is not None and not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
            self.ctx.loop.call_soon(self._take_backlog)
        if take:
            self._receive(data[:take] if take < len(data) else data)

    def _take_backlog(self) -> None:
        data, self.backlog = self.backlog, b""
        if self.transport is None or not data:
            return
        self._take(data)
        if not self.backlog and self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def _receive(self, data: bytes) -> None:
        h2 = self.h2
        try:
            events = h2.receive_data(data)
        except ProtocolError:
            # h2 queued a GOAWAY with the right error code: send it and close.
            self.ctx.stats.rejected["h2-protocol-error"] += 1
            self.mark()
            self.hub.flush()
            if self.transport is not None:
                self.transport.close()
            return
        streams = self.streams
        for event in events:
            if self.abused:
                return
            if isinstance(event, DataReceived):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.client_data(event.data, event.flow_controlled_length)
                else:
                    h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, RequestReceived):
                self.request_received(event.stream_id, event.headers,
                                      event.stream_ended is not None)
            elif isinstance(event, StreamEnded):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.client_end(None)
            elif isinstance(event, TrailersReceived):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.client_end(list(event.headers))
            elif isinstance(event, StreamReset):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    self.client_reset(stream)
            elif isinstance(event, WindowUpdated):
                self.unblock()
            elif isinstance(event, ConnectionTerminated):
                # The client opens no more streams; after NO_ERROR the ones in flight finish
                # (GracefulH2Connection kept the state machine open for them).
                self.closing = True
                if event.error_code != ErrorCodes.NO_ERROR and self.transport is not None:
                    self.transport.close()
        starting = self.starting
        if starting:
            # Streams opened by this read go upstream only now: one the client reset within
            # the same read (Rapid Reset) never costs the upstream anything.
            self.starting = []
            for stream in starting:
                if not stream.done:
                    assert stream.route is not None and stream.route.destination is not None
                    stream.dispatch(stream.route.destination, None, fresh=False)
        self.mark()
        self.hub.flush()  # now rather than at the end of the iteration: lower latency
        if self.closing and not self.streams and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        ctx = self.ctx
        self.transport = None
        ctx.connections.discard(self)
        ctx.stats.connections_open -= 1
        for stream in tuple(self.streams.values()):
            if not stream.done:
                ctx.stats.destroyed_with_active_request += 1
                stream.req.discard()
                stream.resp.discard()
                stream.finish(0, reset=True)
        self.streams.clear()
        self.blocked.clear()
        if ctx.draining and not ctx.connections and ctx.on_idle is not None:
            ctx.on_idle()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.unblock()
        self.hub.flush()

    # -- requests ----------------------------------------------------------------------------

    def request_received(
        self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool
    ) -> None:
        ctx = self.ctx
        self.last_sid = sid
        if self.goaway_sent:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        stream = H2Stream(self, sid, ctx.loop.time())
        self.streams[sid] = stream
        self.streams_total += 1
        if ended:
            stream.req_ended = True
            stream.req.ended = True
        table = ctx.holder.table
        actions = self.actions
        if actions.table is not table:
            actions = self.actions = _Actions(table, ctx.explain_raw)
        amap = actions.map
        method = path = authority = scheme = None
        host: bytes | None = None
        xff: bytes | None = None
        via: bytes | None = None
        xfp = False
        lines: list[tuple[bytes, bytes]] = []
        view: dict[str, str] = {}
        size = 0
        count = 0
        malformed: bytes | None = None
        for name, value in headers:
            size += len(name) + len(value) + 32
            if name[0] == 58:  # b":"
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                elif name == b":scheme":
                    scheme = value
                continue
            count += 1
            action = amap.get(name)
            if action is not None:
                if action == _INTERESTING:
                    key = name.decode("latin-1")
                    text = value.decode("latin-1")
                    prev = view.get(key)
                    if prev is None:
                        view[key] = text
                    else:
                        view[key] = prev + ("; " if key == "cookie" else ",") + text
                elif action == _CTYPE:
                    stream.grpc = grpc.is_grpc(value)
                elif action == _GRPC_TIMEOUT:
                    timeout = grpc.parse_grpc_timeout(value)
                    if timeout is not None:
                        stream.grpc_deadline = stream.started + timeout
                elif action == _EXPLAIN:
                    stream.explain = True
                elif action == _TE:
                    if value.strip().lower() != b"trailers":
                        malformed = name  # RFC 9113 §8.2.2: TE may only say "trailers"
                        continue
                elif action == _MALFORMED:
                    malformed = name
                    continue
                elif action == _HOST:
                    host = value
                    continue
                elif action == _XFF:
                    xff = value if xff is None else xff + b", " + value
                    continue
                elif action == _XFP:
                    xfp = True
                elif action == _VIA:
                    via = value if via is None else via + b", " + value
                    continue
                elif action == _MARKER:
                    view[ROUTED_MARKER] = "1"
                    continue
                else:  # hop-by-hop
                    continue
            elif b"_" in name:
                spelled = name.replace(b"_", b"-")
                if spelled.startswith(b"x-forklane") or (
                    table is not None and spelled in table.interesting_raw
                ):
                    ctx.stats.underscore_headers_dropped += 1
                    continue
            lines.append((name, value))
        if stream.grpc and stream.grpc_deadline:
            stream.deadline = stream.grpc_deadline
        if size > ctx.max_header_bytes or count > ctx.max_header_count:
            ctx.stats.rejected["headers-too-large"] += 1
            stream.fail(431, grpc.RESOURCE_EXHAUSTED, "headers-too-large",
                        "too many or too large request headers")
            return
        if malformed is not None:
            ctx.stats.rejected["malformed-request"] += 1
            stream.fail(400, grpc.INTERNAL, "malformed-request",
                        f"{malformed.decode('latin-1')} is a connection-specific field, not "
                        "allowed in HTTP/2 (RFC 9113 §8.2.2)")
            return
        if method is None or path is None or method == b"CONNECT":
            error = "connect-unsupported" if method == b"CONNECT" else "malformed-request"
            ctx.stats.rejected[error] += 1
            stream.fail(405 if method == b"CONNECT" else 400, grpc.INTERNAL, error,
                        "CONNECT is not supported" if method == b"CONNECT"
                        else "a request needs :method and :path")
            return
        stream.is_head = method == b"HEAD"
        if authority is None:
            authority = host or b""
        stream.method = method
        stream.path = path
        stream.authority = authority
        if table is None:
            stream.fail(503, grpc.UNAVAILABLE, "no-config", "no routing table loaded yet")
            return
        qmark = path.find(b"?")
        view_path = path if qmark < 0 else path[:qmark]
        if via is not None and routed_by_sidecar(via):
            view[ROUTED_MARKER] = "1"
        request_view = RequestView(
            listener=ctx.kind,
            method=method.decode("latin-1"),
            path=view_path.decode("latin-1"),
            authority=authority.lower().decode("latin-1"),
            headers=view,
        )
        decision = decide(request_view, table, ctx.draw)
        hooks = ctx.hooks
        if hooks is not None:
            # trace repair / gap counting / spans: the same hooks as HTTP/1.1
            decision, stream.span = hooks.after_decide(request_view, table, decision, ctx.draw,
                                                       None)
            span = stream.span
            if span is not None:
                dropped = {b"traceparent"} if span.keeps_tracestate else {b"traceparent",
                                                                          b"tracestate"}
                lines = [item for item in lines if item[0] not in dropped]
                lines.append((b"traceparent", span.traceparent))
        stream.decision = decision
        route = stream.route = decision.route
        if decision.key.conflict:
            ctx.stats.key_conflicts += 1
        out = [(b":method", method), (b":scheme", scheme or b"http"),
               (b":authority", authority), (b":path", path)]
        routing_key = decision.key.key
        updates = (inject_routing_key(table.carriers, routing_key, view)
                   if routing_key is not None else None)
        if updates:
            replaced = {name.encode("latin-1") for name in updates}
            out += [item for item in lines if item[0] not in replaced]
            out += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in updates.items()]
        else:
            out += lines
        out.append((b"x-forwarded-for", xff + b", " + self.peer if xff else self.peer))
        if not xfp:
            out.append((b"x-forwarded-proto", b"https" if self.tls else b"http"))
        out.append((b"via", via + b", " + _VIA_HOP if via else _VIA_HOP))
        stream.headers = out
        if route.destination is None:
            passthrough = self.passthrough
            if passthrough is not None and route is table.no_route:
                # A captured connection: the request goes where the client meant it to go.
                stream.route = passthrough
                assert passthrough.destination is not None
                stream.dispatch(passthrough.destination, None, fresh=False)
                return
            stream.fail(route.status or 404, grpc.UNAVAILABLE, route.error or "no-route",
                        route.reason)
            return
        self.starting.append(stream)  # dispatched once the whole read is processed

    def client_reset(self, stream: H2Stream) -> None:
        """The client reset a stream; many resets of unfinished streams are an attack."""
        stream.client_reset()
        self.premature_resets += 1
        if (
            self.premature_resets >= self.reset_threshold
            and self.premature_resets * 2 >= self.streams_total
        ):
            self.abuse("h2-rapid-reset", ErrorCodes.ENHANCE_YOUR_CALM, "too many reset streams")

    def abuse(self, reason: str, error_code: int, detail: str) -> None:
        """The peer floods (control frames, resets, oversized frames or header blocks): count
        it, remember its address for a while, end every stream, GOAWAY and close."""
        ctx = self.ctx
        ctx.stats.rejected[reason] += 1
        ctx.h2_abuse.strike(self.peer, ctx.loop.time())
        self.abused = True
        self.backlog = b""
        self.starting = []
        for other in tuple(self.streams.values()):
            other.req.discard()
            other.resp.discard()
            other.finish(0, reset=True)
        try:
            self.h2.close_connection(error_code, detail.encode("ascii", "replace"),
                                     self.last_sid)
        except ProtocolError:
            pass
        self.closing = True
        self.mark()
        self.hub.flush()
        if self.transport is not None:
            self.transport.close()

    def stream_finished(self, stream: H2Stream) -> None:
        if not self.streams:
            self.idle_since = self.ctx.loop.time()
            if self.closing and self.transport is not None:
                self.mark()
                self.hub.flush()
                self.transport.close()

    # -- listener housekeeping -----------------------------------------------------------------

    def deadline_expired(self) -> None:
        """Called by the listener's sweep ten times a second."""
        now = self.ctx.loop.time()
        for stream in tuple(self.streams.values()):
            if stream.deadline and now >= stream.deadline and not stream.done:
                stream.timed_out()
        if not self.streams and now - self.idle_since >= self.ctx.idle_timeout:
            self.drain()

    def drain(self) -> None:
        """Graceful end: GOAWAY naming the last stream we took; streams in flight finish.

        The GOAWAY frame is written directly: h2's state machine refuses to send anything
        after its own GOAWAY, which would cut the streams RFC 9113 §6.8 lets finish."""
        if self.goaway_sent or self.transport is None:
            return
        self.goaway_sent = True
        self.closing = True
        self.hub.flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_sid
        frame.error_code = 0
        self.transport.write(frame.serialize())
        if not self.streams:
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.hub.flush()
            self.transport.close()
