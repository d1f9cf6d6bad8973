"""HTTP/2 listener connections: one `H2Downstream` per client connection, one `H2Stream` per
request, proxied to a stream on a pooled upstream h2c connection.

The HTTP/1.1 listener hands a connection over when it starts with the HTTP/2 preface (h2c
prior knowledge) or when TLS negotiated ALPN `h2` (`take_over`); from then on this module owns
it. What a request's fields mean, the decision, the forwarded fields, the errors, retries and
fallback and the accounting come from the forwarding core (`forward`), exactly as on HTTP/1.1;
this module turns frames into heads and back.

Invariants:
- one routing decision per stream, made by the same core as on HTTP/1.1, on the table that
  was current when the stream's headers arrived;
- every stream ends exactly once (`H2Stream.finish`): counted in the listener's rows, removed
  from its connection, its upstream stream cancelled if still open, its endpoint lease
  released;
- a gRPC stream never gets an HTTP error page from the proxy, only a gRPC status;
- nothing is read from one side faster than the other side's window drains it (see `_flow`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from forklane.proxy.balancer import NO_LEASE, Circuit, Lease
from forklane.proxy.forward import core, errors
from forklane.proxy.forward.accounting import count_request, log_request
from forklane.proxy.forward.attempts import (
    Fail,
    Failure,
    Fallback,
    Retry,
    after_failure,
    retry_answer,
    retry_budget,
    retry_grpc_answer,
    wants_grpc_replay,
)
from forklane.proxy.forward.core import (
    F_CONNECTION,
    F_CONTENT_TYPE,
    F_EXPLAIN,
    F_GRPC_TIMEOUT,
    F_HOST,
    F_INTERESTING,
    F_KEEP_ALIVE,
    F_MARKER,
    F_TE,
    F_TRANSFER_ENCODING,
    F_UPGRADE,
    F_VIA,
    F_XFF,
    F_XFH,
    F_XFP,
    Hop,
    TableFields,
)
from forklane.proxy.forward.errors import ProxyError
from forklane.proxy.forward.phases import ABORTED, CONNECTING, DONE, QUEUED, SENT, STREAMING
from forklane.proxy.forward.replay import Replay
from forklane.proxy.http2 import grpc
from forklane.proxy.http2._flow import Hub, Peer, Pipe
from forklane.proxy.http2._guard import AbuseMemory, FloodLimits, FrameGuard
from forklane.proxy.http2.conn import (
    EV_DATA,
    EV_END,
    EV_GOAWAY,
    EV_HEADERS,
    EV_RESET,
    EV_TRAILERS,
    EV_WINDOW,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_HEADER_LIST_SIZE,
    ErrorCode,
    H2Conn,
    H2Error,
    code_name,
)
from forklane.proxy.http2.mirror import H2MirrorCopy
from forklane.proxy.http2.upstream import CONNECTION_WINDOW, H2Pools, H2Upstream
from forklane.proxy.listener.context import ListenerContext
from forklane.proxy.routing import Decision
from forklane.proxy.sockets import tune_transport
from forklane.proxy.table import (
    GRPC_RETRY_ON,
    RETRY_ON_HEADER,
    ROUTED_MARKER,
    Destination,
    Endpoint,
    RetryRules,
    Route,
)
from forklane.proxy.tap_capture import open_capture

if TYPE_CHECKING:
    from forklane.proxy.tap_capture import Capture
    from forklane.proxy.tracing import ProxySpan

__all__ = ["H2Downstream", "H2Shared", "take_over"]

MAX_CONCURRENT_STREAMS = 100
_VIA_HOP = b"2 forklane"
# Connection-specific fields make an HTTP/2 request malformed (RFC 9113 §8.2.2); h2's
# validation refuses them too when it is on. Never dropped silently: what a client meant to
# say with them to this hop cannot be honoured.
_MALFORMED = frozenset({F_CONNECTION, F_KEEP_ALIVE, F_TRANSFER_ENCODING, F_UPGRADE})
# Response fields that never cross a hop.
_RESPONSE_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                           b"transfer-encoding", b"upgrade", b"trailer"})
_GRPC_RETRY_LABEL = {code: f"grpc-{name}" for name, code in GRPC_RETRY_ON.items()}


class H2Shared:
    """The HTTP/2 state one listener's connections share, made with its first HTTP/2
    connection."""

    def __init__(self, ctx: ListenerContext) -> None:
        settings = ctx.settings
        self.hub = Hub(ctx.loop)
        self.pools = H2Pools(ctx.loop, self.hub, 4 * settings.max_header_bytes)
        self.limits = FloodLimits(
            max_header_block=2 * settings.max_header_bytes + 16384,
            control_base=float(settings.h2_control_frame_budget),
        )
        self.abuse = AbuseMemory(ttl=settings.h2_abuse_memory_seconds)


def shared(ctx: ListenerContext) -> H2Shared:
    state: H2Shared | None = ctx.h2
    if state is None:
        state = ctx.h2 = H2Shared(ctx)
    return state


def take_over(
    ctx: ListenerContext, transport: asyncio.Transport, data: bytes, passthrough: Route | None
) -> None:
    """The HTTP/1.1 module's hand-off: this connection speaks HTTP/2 from now on.
    `passthrough`: on a captured connection, where unknown authorities go."""
    h2 = H2Downstream(ctx, tls=transport.get_extra_info("ssl_object") is not None)
    h2.passthrough = passthrough
    transport.set_protocol(h2)
    h2.connection_made(transport)
    if data:
        h2.data_received(data)
    else:
        h2.hub.flush()


class H2Stream:
    """One request and its response on a downstream HTTP/2 connection."""

    # Class-level defaults: most streams keep them (cheaper than setting each per stream).
    phase = QUEUED
    grpc = False
    explain = False
    is_head = False
    route: Route | None = None
    decision: Decision | None = None
    span: ProxySpan | None = None
    dest: Destination | None = None
    endpoint: Endpoint | None = None
    track = False
    lease: Lease = NO_LEASE
    circuit: Circuit | None = None  # the destination's breaker counts this stream holds
    retrying = False  # counted in the circuit's retries
    answer_retries = 0  # retries after an answer (RetryRules)
    retry_on: str | None = None  # the request's x-forklane-retry-on
    up: H2Upstream | None = None
    up_sid = 0
    status = 0
    req_ended = False
    deadline = 0.0  # 0: none. Plain HTTP/2: until the response head. gRPC: until the end.
    grpc_deadline = 0.0
    attempts = 0
    fallback_used = False
    error = ""
    method = b""
    path = b""
    authority = b""
    mirrors: list[H2MirrorCopy] | None = None
    capture: Capture | None = None  # a live tap copies this request (`tap_capture`)
    replay: Replay | None = None  # the request kept for a gRPC-status retry

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
        circuit = self.circuit
        if circuit is None or circuit.name != dest.name:
            # First attempt, or a fallback to another destination: its breakers decide.
            held = circuit
            circuit = ctx.balancer.circuit(dest)
            if held is not None:
                held.leave(self.retrying)
                self.retrying = False
                self.circuit = None
            if ctx.overload.over_memory and held is None:
                self.overloaded()
                return
            if not circuit.enter():
                self.circuit_open(dest, "max_requests")
                return
            self.circuit = circuit
        endpoint = ctx.balancer.pick(dest, exclude)
        self.phase = CONNECTING
        self.dest = dest
        self.endpoint = endpoint
        self.track = len(dest.endpoints) > 1
        conn = None if fresh else self.down.shared.pools.take(endpoint.address)
        if conn is not None:
            self.bind(conn)
        else:
            # Upstream HTTP/2 connections are multiplexed: only the waiting streams count.
            if not circuit.may_connect(0):
                self.circuit_open(dest, "max_pending_requests")
                return
            circuit.pending += 1
            ctx.spawn(self._open(dest, endpoint, circuit))

    async def dispatch_later(self, dest: Destination, delay: float) -> None:
        await asyncio.sleep(delay)  # the fault's delay, not synchronisation
        if self.phase < DONE:
            self.dispatch(dest, None, fresh=False)

    def overloaded(self) -> None:
        error = errors.OVERLOADED
        self.down.ctx.stats.rejected[error.label] += 1
        self.fail(error, "the proxy is short of memory: try again shortly")

    def circuit_open(self, dest: Destination, limit: str) -> None:
        error = errors.CIRCUIT_OPEN
        self.down.ctx.stats.upstream_errors[error.label] += 1
        self.fail(error, f"{dest.name}: {limit} reached")

    async def _open(self, dest: Destination, endpoint: Endpoint, circuit: Circuit) -> None:
        try:
            async with asyncio.timeout(dest.timeouts.connect):
                conn = await self.down.shared.pools.connect(endpoint)
        except (OSError, TimeoutError, ConnectionError, H2Error) as exc:
            circuit.pending -= 1
            failure = (Failure.CONNECT_TIMEOUT if isinstance(exc, TimeoutError)
                       else Failure.CONNECT_FAILED)
            self.connect_failed(dest, endpoint, failure)
            return
        except BaseException:
            circuit.pending -= 1
            raise
        circuit.pending -= 1
        if self.phase >= DONE:
            return
        if conn.has_capacity():
            self.bind(conn)
        else:
            self.dispatch(dest, endpoint if len(dest.endpoints) > 1 else None, fresh=False)

    def connect_failed(self, dest: Destination, endpoint: Endpoint, failure: Failure) -> None:
        if self.phase >= DONE:
            return
        ctx = self.down.ctx
        ctx.balancer.failed(endpoint, dest)
        ctx.stats.upstream_errors[failure.label] += 1
        route = self.route
        assert route is not None
        step = after_failure(failure, route=route, destination=dest, endpoint=endpoint,
                             attempts=self.attempts, fallback_used=self.fallback_used,
                             retries=ctx.retries)
        if isinstance(step, Retry) and not self.retrying:
            circuit = self.circuit
            if circuit is not None and not circuit.may_retry():
                step = after_failure(failure, route=route, destination=dest, endpoint=endpoint,
                                     attempts=self.attempts, fallback_used=self.fallback_used,
                                     retries=0)
            else:
                self.retrying = True
        if isinstance(step, Fail):
            self.fail(step.error, step.detail)
        elif isinstance(step, Fallback):
            self.fallback_used = True
            ctx.stats.fork_fallbacks += 1
            self.dispatch(step.destination, None, fresh=False)
        else:
            self.attempts += 1
            self.dispatch(step.destination, step.exclude, fresh=step.fresh)

    def bind(self, conn: H2Upstream) -> None:
        """Open the upstream stream and start moving the request body."""
        req = self.req
        headers_only = req.ended and not req.chunks and req.trailers is None
        try:
            sid = conn.open_stream(self, self.headers, headers_only)
        except H2Error:
            assert self.dest is not None
            self.dispatch(self.dest, None, fresh=True)
            return
        self.up = conn
        self.up_sid = sid
        self.phase = SENT
        assert self.dest is not None and self.endpoint is not None
        self.lease = self.down.ctx.balancer.lease(self.dest, self.endpoint)
        if headers_only:
            req.done = True
        else:
            req.bind(conn, sid)
        resp = self.resp
        resp.src = conn
        resp.src_sid = sid
        if not self.grpc:
            dest = self.dest
            assert dest is not None
            deadline = self.started + dest.timeouts.request
            per_try = dest.retry.per_try_timeout
            now = self.down.ctx.clock.now
            if per_try and now + per_try < deadline:
                deadline = now + per_try
            self.deadline = deadline

    # -- events from the client ----------------------------------------------------------------

    def client_data(self, data: bytes, flow_len: int) -> None:
        capture = self.capture
        if capture is not None:
            capture.request_data(data)
        self.req.push(data, flow_len)
        replay = self.replay
        if replay is not None:
            replay.add(data)
        mirrors = self.mirrors
        if mirrors is not None:
            for mirror in mirrors:
                mirror.send_body(data)

    def client_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        self.req_ended = True
        self.req.finish(trailers)
        if self.replay is not None:
            self.replay.finish(trailers)
        mirrors = self.mirrors
        if mirrors is not None:
            for mirror in mirrors:
                mirror.send_end(trailers)

    def client_reset(self) -> None:
        mirrors = self.mirrors
        if mirrors is not None and not self.req_ended:
            for mirror in mirrors:
                mirror.abandon("failed")  # the copy of a request that never completed
        if self.phase >= DONE:
            return
        self.req.discard()
        self.resp.discard()
        self.finish(0, reset=True)

    # -- UpstreamSink: events from the upstream stream -----------------------------------------

    def up_response(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self.phase >= DONE:
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
                balancer.failed(self.endpoint, self.dest, status)
            else:
                balancer.succeeded(self.endpoint, self.dest)
        dest = self.dest
        if status >= 500 and dest is not None and dest.retry.attempts and self.retry(status):
            return
        if self.replay is not None:
            if ended and self.retry_grpc(headers):
                return  # trailers-only: nothing of this answer reached the client
            self.replay = None  # an answer goes to the client: the copy has done its job
        self.phase = STREAMING
        self.status = status
        if not self.grpc:
            self.deadline = 0.0
        if self.capture is not None:
            self.capture.response_head = out
        try:
            down.h2.send_headers(self.sid, out, end_stream=ended)
        except H2Error:
            self.finish(0, reset=True)
            return
        down.mark()
        if ended:
            self.resp.done = True
            self.response_sent()
        else:
            self.resp.bind(down, self.sid)

    def up_info(self, headers: list[tuple[bytes, bytes]]) -> None:
        """A 1xx head (103 Early Hints, 100 Continue…): forwarded as it came, before the
        final response (RFC 9113 §8.1)."""
        if self.phase >= STREAMING or headers[0][1] == b"101":
            return  # (101 has no meaning in HTTP/2)
        out = [(n, v) for n, v in headers if n not in _RESPONSE_HOP]
        try:
            self.down.h2.send_headers(self.sid, out, end_stream=False)
        except H2Error:
            return
        self.down.mark()

    def up_data(self, data: bytes, flow_len: int) -> None:
        capture = self.capture
        if capture is not None:
            capture.response_data(data)
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
                conn.cancel(sid, ErrorCode.NO_ERROR)
        self.lease.release()
        if self.phase < STREAMING:
            error = errors.UPSTREAM_NO_RESPONSE
            self.down.ctx.stats.upstream_errors[error.label] += 1
            self.fail(error, "the upstream ended the stream without a response")
            return
        self.resp.finish(None)

    def up_reset(self, code: int, refused: bool) -> None:
        self.up = None
        self.lease.release()
        if self.phase >= DONE:
            return
        ctx = self.down.ctx
        route, dest, endpoint = self.route, self.dest, self.endpoint
        assert route is not None and dest is not None and endpoint is not None
        step = after_failure(
            Failure.NEVER_SEEN if refused and self.phase < STREAMING else Failure.RESET,
            route=route, destination=dest, endpoint=endpoint, attempts=self.attempts,
            fallback_used=self.fallback_used, retries=ctx.retries,
            replayable=self.req.sent == 0, pooled=True,
        )
        if isinstance(step, Retry):
            # Never processed by the upstream (REFUSED_STREAM, or above a GOAWAY's last id).
            self.attempts += 1
            req = self.req
            req.dst = None
            req.done = False
            self.dispatch(step.destination, None, fresh=step.fresh)
            return
        assert isinstance(step, Fail)  # a stream the upstream saw never falls back
        ctx.stats.upstream_errors[step.error.label] += 1
        ctx.balancer.failed(endpoint, dest)
        self.req.discard()
        self.fail(step.error, f"the upstream reset the stream ({code_name(code)})")

    # -- answers the proxy makes itself ----------------------------------------------------------

    def fail(self, err: ProxyError, message: str, status: int = 0, grpc_status: int = 0) -> None:
        """End the stream with an error of the table: a gRPC status for gRPC, else an HTTP
        error answer (or a stream reset when the response head already went out). `status`
        and `grpc_status` override the table's (a route's own reject status)."""
        if self.phase >= DONE:
            return
        error = err.reason
        grpc_status = grpc_status or err.grpc_status
        status = status or err.status
        self.error = error
        down = self.down
        up, self.up = self.up, None
        if up is not None:
            up.cancel(self.up_sid)
        self.lease.release()
        self.deadline = 0.0
        resp = self.resp
        if self.phase >= STREAMING:
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
                down.h2.reset_stream(self.sid, ErrorCode.INTERNAL_ERROR)
            except H2Error:
                pass
            down.mark()
            self.finish(0, reset=True)
            return
        self.phase = STREAMING
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
        except H2Error:
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

    def retry(self, status: int) -> bool:
        """Send the request again instead of passing this answer on (see HTTP/1.1's)."""
        dest = self.dest
        assert dest is not None
        rules = dest.retry
        req = self.req
        if not self.req_ended or req.sent or not retry_answer(
            rules, status, self.method, False, self.answer_retries, self.retry_on
        ) or not self.retry_slot(rules):
            return False
        self.answer_retries += 1
        self.down.ctx.stats.retries[str(status)] += 1
        req.dst = None
        req.done = False
        self.send_again(dest)
        return True

    def retry_grpc(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Send the kept request again instead of passing on this trailers-only gRPC answer
        (the decision: `forward.attempts.retry_grpc_answer`)."""
        dest, replay = self.dest, self.replay
        assert dest is not None and replay is not None
        rules = dest.retry
        code = grpc.status_of(headers)
        if not retry_grpc_answer(rules, code, replay.complete, self.answer_retries,
                                 self.retry_on) or not self.retry_slot(rules):
            return False
        self.answer_retries += 1
        self.down.ctx.stats.retries[_GRPC_RETRY_LABEL.get(code or 0, "grpc")] += 1
        self.req.discard()  # the client's window back for what it still held
        req = self.req = Pipe(None, 0, _nothing)  # from the copy: nothing to acknowledge
        req.chunks.extend(replay.chunks)
        req.ended = True
        req.trailers = replay.trailers
        self.send_again(dest)
        return True

    def retry_slot(self, rules: RetryRules) -> bool:
        """Hold one of the circuit's retry slots (max_retries and the budget), once."""
        if not self.retrying:
            circuit = self.circuit
            if circuit is None or not circuit.may_retry(retry_budget(rules, circuit.requests)):
                return False
            self.retrying = True
        return True

    def send_again(self, dest: Destination) -> None:
        """Drop the answer being retried with its upstream stream and dispatch anew."""
        up, self.up = self.up, None
        if up is not None:
            up.cancel(self.up_sid)
        self.lease.release()
        self.resp.discard()
        self.resp = Pipe(None, 0, self.response_sent)
        exclude = self.endpoint if len(dest.endpoints) > 1 else None
        self.dispatch(dest, exclude, fresh=False)

    def timed_out(self) -> None:
        ctx = self.down.ctx
        dest = self.dest
        if (
            not self.grpc and self.phase < STREAMING and dest is not None
            and dest.retry.per_try_timeout and ctx.clock.now < self.started + dest.timeouts.request
            and self.retry(504)
        ):
            return  # the attempt's own timeout passed, not the request's: try again
        if self.grpc:
            error = errors.DEADLINE_EXCEEDED
            ctx.stats.upstream_errors[error.label] += 1
            self.fail(error, "the call's deadline passed in the proxy")
        elif self.phase < STREAMING:
            error = errors.UPSTREAM_TIMEOUT
            ctx.stats.upstream_errors[error.label] += 1
            self.fail(error, "the upstream did not answer in time")

    def response_sent(self) -> None:
        """The last frame of the response went to the client."""
        self.finish(self.status, reset=False)

    def finish(self, status: int, reset: bool) -> None:
        if self.phase >= DONE:
            return
        self.phase = ABORTED if reset else DONE
        down = self.down
        ctx = down.ctx
        circuit = self.circuit
        if circuit is not None:
            self.circuit = None
            circuit.leave(self.retrying)
        down.streams.pop(self.sid, None)
        up, self.up = self.up, None
        if up is not None:
            up.cancel(self.up_sid)
        self.lease.release()
        if not reset and not self.req_ended:
            # RFC 9113 §8.1: a complete response may end the request early with NO_ERROR.
            self.req.discard()
            try:
                down.h2.reset_stream(self.sid, ErrorCode.NO_ERROR)
            except H2Error:
                pass
            down.mark()
        now = ctx.clock.now
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
            capture=self.capture,
        )

    def explanation(self) -> tuple[bytes, bytes]:
        return (b"x-forklane-route", core.explanation_value(self.decision, self.dest,
                                                            self.endpoint, self.fallback_used))


def _nothing() -> None:
    return None


class H2Downstream(asyncio.Protocol, Peer):
    """One client HTTP/2 connection on a listener."""

    # What the listener's sweep reads: no connection-level deadline (see expire_requests).
    deadline = 0.0
    deadline_kind = 0
    passthrough: Route | None = None  # captured connection: where unknown authorities go

    def __init__(self, ctx: ListenerContext, tls: bool = False) -> None:
        state = shared(ctx)
        Peer.__init__(self, state.hub)
        self.ctx = ctx
        self.shared = state
        self.tls = tls
        settings = ctx.settings
        self.validate = settings.h2_validate_headers
        self.h2 = H2Conn(False, max_concurrent=MAX_CONCURRENT_STREAMS,
                         connection_window=CONNECTION_WINDOW,
                         max_list_decoded=2 * settings.max_header_bytes,
                         check_fields=self.validate)
        self.streams: dict[int, H2Stream] = {}
        self.peer = b""
        self.hop = Hop(b"", b"https" if tls else b"http", _VIA_HOP)
        self.streams_total = 0
        self.premature_resets = 0
        self.reset_threshold = settings.h2_rapid_reset_threshold
        self.last_sid = 0
        self.goaway_sent = False
        self.closing = False
        self.idle_since = ctx.clock.now
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
        self.hop = Hop(self.peer, self.hop.proto, _VIA_HOP)
        ctx.add(self)
        now = ctx.clock.tick()
        strikes = self.shared.abuse.strikes(self.peer, now)
        if strikes:
            # Caught abusing recently: reconnecting does not buy a fresh budget.
            self.reset_threshold = max(1, self.reset_threshold // 10**strikes)
        self.guard = FrameGuard(self.shared.limits, now, strikes)
        self.h2.initiate([
            (S_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS),
            (S_MAX_HEADER_LIST_SIZE, 2 * ctx.max_header_bytes),
        ])
        self.mark()

    def data_received(self, data: bytes) -> None:
        if self.backlog:
            self.backlog += data  # reading is paused; bytes that were already on their way
            return
        hub = self.hub
        if hub.scheduled:
            self._take(data)
            return
        # This callback flushes when it ends: what it marks needs no flush scheduled for the
        # end of the iteration (a ready callback would cost the loop another turn).
        hub.scheduled = True
        try:
            self._take(data)
        finally:
            hub.flush()

    def _take(self, data: bytes) -> None:
        """Hand `data` to the codec, at most one turn's worth (see `_guard`): the rest waits
        for a later loop iteration with reading paused, so other connections get their turn."""
        guard = self.guard
        take, violation = guard.scan(data, self.ctx.clock.tick(), self.sent_bytes)
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
            events = h2.receive(data)
        except H2Error:
            # A connection error: GOAWAY with its code is queued; send it and close.
            self.ctx.stats.rejected["h2-protocol-error"] += 1
            self.mark()
            self.hub.flush()
            if self.transport is not None:
                self.transport.close()
            return
        streams = self.streams
        for kind, sid, a, b in events:
            if self.abused:
                return
            if kind == EV_DATA:
                stream = streams.get(sid)
                if stream is not None:
                    stream.client_data(a, b)  # type: ignore[arg-type]
                else:
                    h2.ack(b, sid)  # type: ignore[arg-type]
            elif kind == EV_HEADERS:
                self.request_received(sid, a, bool(b))  # type: ignore[arg-type]
            elif kind == EV_END:
                stream = streams.get(sid)
                if stream is not None:
                    stream.client_end(None)
            elif kind == EV_TRAILERS:
                stream = streams.get(sid)
                if stream is not None:
                    stream.client_end(a)  # type: ignore[arg-type]
            elif kind == EV_RESET:
                stream = streams.get(sid)
                if stream is not None:
                    self.client_reset(stream)
            elif kind == EV_WINDOW:
                self.unblock()
            elif kind == EV_GOAWAY:
                # The client opens no more streams; after NO_ERROR the ones in flight finish.
                self.closing = True
                if a != ErrorCode.NO_ERROR and self.transport is not None:
                    self.transport.close()
        starting = self.starting
        if starting:
            # Streams opened by this read go upstream only now: one the client reset within
            # the same read (Rapid Reset) never costs the upstream anything.
            self.starting = []
            for stream in starting:
                if stream.phase < DONE:
                    route = stream.route
                    assert route is not None and route.destination is not None
                    if route.delay:  # an injected fault: hold the stream, then forward it
                        self.ctx.spawn(stream.dispatch_later(route.destination, route.delay))
                    else:
                        stream.dispatch(route.destination, None, fresh=False)
                    if stream.mirrors is not None:
                        for mirror in stream.mirrors:
                            mirror.start()
                elif stream.mirrors is not None:
                    for mirror in stream.mirrors:
                        mirror.abandon("failed")  # reset before it went anywhere
        self.mark()
        self.hub.flush()  # now rather than at the end of the iteration: lower latency
        if self.closing and not self.streams and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        ctx = self.ctx
        self.transport = None
        ctx.clock.tick()
        for stream in tuple(self.streams.values()):
            if stream.phase < DONE:
                ctx.stats.destroyed_with_active_request += 1
                stream.req.discard()
                stream.resp.discard()
                stream.finish(0, reset=True)
        self.streams.clear()
        self.blocked.clear()
        ctx.remove(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.unblock()
        self.hub.flush()

    # -- requests ----------------------------------------------------------------------------

    def request_received(
        self, sid: int, headers: list[tuple[bytes, bytes]] | None, ended: bool
    ) -> None:
        ctx = self.ctx
        self.last_sid = sid
        problems = self.h2.problems
        problem = problems.pop(sid, None) if problems else None
        if self.goaway_sent:
            self.h2.reset_stream(sid, ErrorCode.REFUSED_STREAM)
            return
        stream = H2Stream(self, sid, ctx.clock.now)
        self.streams[sid] = stream
        self.streams_total += 1
        if ended:
            stream.req_ended = True
            stream.req.ended = True
        if headers is None:  # the decoded list passed twice our header limit: not kept
            self._refuse(stream, errors.HEADERS_TOO_LARGE, "too many or too large request headers")
            return
        validate = self.validate
        if problem is not None:  # a field the decoder found malformed (checks.field_problem)
            self._refuse(stream, errors.MALFORMED_REQUEST, problem)
            return
        table = ctx.holder.table
        fields: TableFields | None = ctx.fields
        if fields is None or fields.table is not table:
            fields = ctx.fields = TableFields(table, ctx.explain_raw)
        amap = fields.h2
        method = path = authority = scheme = None
        host: bytes | None = None
        xff: bytes | None = None
        via: bytes | None = None
        xfp = xfh = False
        kept: list[tuple[bytes, bytes]] = []
        view: dict[str, str] = {}
        size = 0
        count = 0
        malformed: bytes | None = None
        protocol = False
        for name, value in headers:
            size += len(name) + len(value) + 32
            if name[0] == 58:  # b":"
                # The pseudo-header rules of checks.request_problem, in this one pass.
                twice = False
                if name == b":method":
                    twice = method is not None
                    method = value
                elif name == b":path":
                    twice = path is not None
                    path = value
                elif name == b":authority":
                    twice = authority is not None
                    authority = value
                elif name == b":scheme":
                    twice = scheme is not None
                    scheme = value
                elif name == b":protocol":
                    twice = protocol
                    protocol = True
                elif validate and problem is None:
                    problem = f"unknown pseudo-header field {name.decode('latin-1')!r}"
                if validate and problem is None:
                    if count:
                        problem = "a pseudo-header field after a regular one"
                    elif twice:
                        problem = f"{name.decode('latin-1')} appears twice"
                continue
            count += 1
            action = amap.get(name)
            if action is not None:
                if action == F_INTERESTING:
                    core.join_view(view, name.decode("latin-1"), value.decode("latin-1"))
                elif action == F_CONTENT_TYPE:
                    stream.grpc = grpc.is_grpc(value)
                elif action == F_GRPC_TIMEOUT:
                    timeout = grpc.parse_grpc_timeout(value)
                    if timeout is not None:
                        stream.grpc_deadline = stream.started + timeout
                elif action == F_EXPLAIN:
                    stream.explain = True
                elif action == F_TE:
                    if value.strip().lower() != b"trailers":
                        malformed = name  # RFC 9113 §8.2.2: TE may only say "trailers"
                        continue
                elif action in _MALFORMED:
                    malformed = name
                    continue
                elif action == F_HOST:
                    host = value
                    continue
                elif action == F_XFF:
                    xff = value if xff is None else xff + b", " + value
                    continue
                elif action == F_XFP:
                    xfp = True
                elif action == F_XFH:
                    xfh = True
                elif action == F_VIA:
                    via = value if via is None else via + b", " + value
                    continue
                elif action == F_MARKER:
                    view[ROUTED_MARKER] = "1"
                    continue
                else:  # hop-by-hop
                    continue
            elif name.find(b"_") >= 0 and core.lookalike(name, fields.interesting_raw):
                # (find, not `in`: a bytes needle first fails as an integer, at a TypeError's cost)
                ctx.stats.underscore_headers_dropped += 1
                continue
            kept.append((name, value))
        if problem is not None:
            stream.grpc = stream.explain = False  # a malformed head is answered plainly
            self._refuse(stream, errors.MALFORMED_REQUEST, problem)
            return
        if stream.grpc and stream.grpc_deadline:
            stream.deadline = stream.grpc_deadline
        if size > ctx.max_header_bytes or count > ctx.max_header_count:
            self._refuse(stream, errors.HEADERS_TOO_LARGE, "too many or too large request headers")
            return
        if malformed is not None:
            self._refuse(stream, errors.MALFORMED_REQUEST,
                         f"{malformed.decode('latin-1')} is a connection-specific field, not "
                         "allowed in HTTP/2 (RFC 9113 §8.2.2)")
            return
        if method == b"CONNECT":
            self._refuse(stream, errors.CONNECT_UNSUPPORTED, "CONNECT is not supported")
            return
        if method is None or path is None:
            self._refuse(stream, errors.MALFORMED_REQUEST, "a request needs :method and :path")
            return
        stream.is_head = method == b"HEAD"
        if authority is None:
            authority = host or b""
        stream.method = method
        stream.path = path
        stream.authority = authority
        if table is None:
            stream.fail(errors.NO_CONFIG, "no routing table loaded yet")
            return
        qmark = path.find(b"?")
        decision, injection, span = core.route(
            ctx.kind, fields, table, method, path if qmark < 0 else path[:qmark], authority,
            view, ctx.draw, ctx.hooks, ctx.stats, via,
        )
        stream.decision = decision
        stream.span = span
        if view:
            stream.retry_on = view.get(RETRY_ON_HEADER)
        route = stream.route = decision.route
        out = [(b":method", method), (b":scheme", scheme or b"http"),
               (b":authority", authority), (b":path", path)]
        core.forwarded_fields(out, kept if span is None else core.apply_span(kept, span),
                              injection, self.hop, xff, xfp, xfh, authority, via)
        stream.headers = out
        if ctx.stats.taps:  # somebody watches: a tap may capture this request
            stream.capture = open_capture(ctx.stats.taps, decision.key.key, route.service, out)
        if route.destination is None:
            passthrough = self.passthrough
            if passthrough is not None and route is table.no_route:
                # A captured connection: the request goes where the client meant it to go.
                stream.route = passthrough
                assert passthrough.destination is not None
                stream.dispatch(passthrough.destination, None, fresh=False)
                return
            stream.fail(errors.error_for(route.error or "no-route"), route.reason,
                        status=route.status, grpc_status=route.grpc_status)
            return
        if stream.grpc and wants_grpc_replay(route.destination.retry):
            replay = stream.replay = Replay(route.destination.retry.buffer_limit)
            if stream.req_ended:
                replay.finish(None)
        if decision.mirrors:
            shared = self.shared
            stream.mirrors = [H2MirrorCopy(ctx, shared.pools, dest, out, route.service or "")
                              for dest in decision.mirrors]
            if stream.req_ended:
                for mirror in stream.mirrors:
                    mirror.send_end(None)
        self.starting.append(stream)  # dispatched once the whole read is processed

    def _refuse(self, stream: H2Stream, error: ProxyError, message: str) -> None:
        """A request that must not be forwarded: counted as rejected, answered with `error`."""
        self.ctx.stats.rejected[error.label] += 1
        stream.fail(error, message)

    def client_reset(self, stream: H2Stream) -> None:
        """The client reset a stream; many resets of unfinished streams are an attack."""
        stream.client_reset()
        self.premature_resets += 1
        if (
            self.premature_resets >= self.reset_threshold
            and self.premature_resets * 2 >= self.streams_total
        ):
            self.abuse("h2-rapid-reset", ErrorCode.ENHANCE_YOUR_CALM, "too many reset streams")

    def abuse(self, reason: str, error_code: int, detail: str) -> None:
        """The peer floods (control frames, resets, oversized frames or header blocks): count
        it, remember its address for a while, end every stream, GOAWAY and close."""
        ctx = self.ctx
        ctx.stats.rejected[reason] += 1
        self.shared.abuse.strike(self.peer, ctx.clock.now)
        self.abused = True
        self.backlog = b""
        self.starting = []
        for other in tuple(self.streams.values()):
            other.req.discard()
            other.resp.discard()
            other.finish(0, reset=True)
        self.h2.goaway(error_code, self.last_sid, detail.encode("ascii", "replace"))
        self.closing = True
        self.mark()
        self.hub.flush()
        if self.transport is not None:
            self.transport.close()

    def stream_finished(self, stream: H2Stream) -> None:
        if not self.streams:
            self.idle_since = self.ctx.clock.now
            if self.closing and self.transport is not None:
                self.mark()
                self.hub.flush()
                self.transport.close()

    # -- listener housekeeping -----------------------------------------------------------------

    def deadline_expired(self) -> None:
        """Nothing at connection level: streams and idleness are checked in `expire_requests`."""

    def expire_requests(self, now: float) -> None:
        """Called by the listener's sweep: stream deadlines, and idleness of the connection."""
        for stream in tuple(self.streams.values()):
            if stream.deadline and now >= stream.deadline and stream.phase < DONE:
                stream.timed_out()
        if not self.streams and now - self.idle_since >= self.ctx.idle_timeout:
            self.drain()

    def drain(self) -> None:
        """Graceful end: GOAWAY naming the last stream we took; streams in flight finish
        (RFC 9113 §6.8)."""
        if self.goaway_sent or self.transport is None:
            return
        self.goaway_sent = True
        self.closing = True
        self.h2.goaway(ErrorCode.NO_ERROR, self.last_sid)
        self.mark()
        self.hub.flush()
        if not self.streams:
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.hub.flush()
            self.transport.close()
