"""HTTP/1.1 listener: one `Downstream` protocol per client connection, one `Exchange` per request.

The request path is callbacks all the way: httptools calls `on_*` as bytes arrive, the
forwarding core (`forward.core`) decides once the headers are complete, and the request body
streams to the upstream connection as it is parsed. No coroutine runs per request unless a new
upstream connection must be opened. This module only turns bytes into heads and back: what a
field means for routing and forwarding, which error to answer, what to do after a failed
attempt and how a request is counted all live in `forward`.

Invariants:
- responses go out in request order (pipelining): only `queue[0]` may write to the client;
- a request that fails validation is answered locally and never forwarded; the connection is
  closed after the answer, so a smuggled second request is never parsed;
- backpressure both ways: a full client write buffer pauses the upstream's reading and a full
  upstream write buffer pauses the client's, so memory per connection stays bounded;
- a request keeps the routing table it started with, whatever swap happens meanwhile;
- an exchange's life is its `phase` (`forward.phases`); it is counted exactly once, on
  entering a final phase, and its endpoint lease is released exactly once;
- an upstream reset after the response head aborts the client connection (never a
  silently truncated body that looks complete).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import httptools

from forklane.proxy import hotpath
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
)
from forklane.proxy.forward.core import (
    F_CONNECTION,
    F_CONTENT_LENGTH,
    F_EXPLAIN,
    F_HOST,
    F_INTERESTING,
    F_MARKER,
    F_TRANSFER_ENCODING,
    F_UPGRADE,
    F_VIA,
    F_XFF,
    F_XFH,
    F_XFP,
    Hop,
    Injection,
    TableFields,
)
from forklane.proxy.forward.errors import ProxyError
from forklane.proxy.forward.phases import (
    ABORTED,
    CONNECTING,
    DONE,
    QUEUED,
    SENT,
    STREAMING,
    TUNNEL,
)
from forklane.proxy.http1.head import ResponseHead, parse_request, write_request_head
from forklane.proxy.http1.messages import (
    FRAMING_FIELDS,
    HOP_BY_HOP,
    PERSISTENCE_TOKENS,
    TRAILER_NEVER,
    LocalReply,
    check_transfer_encoding,
    local_reply,
    reply_for,
    status_line,
    valid_host,
)
from forklane.proxy.http1.mirror import MirrorCopy
from forklane.proxy.http1.upstream import ResponseSink, UpstreamConnection
from forklane.proxy.listener.context import Deadline, ListenerContext
from forklane.proxy.listener.handoff import alpn_is_h2, may_be_h2c, undecided
from forklane.proxy.routing import Decision
from forklane.proxy.sockets import tune_transport
from forklane.proxy.table import (
    RETRY_ON_HEADER,
    ROUTED_MARKER,
    Destination,
    Endpoint,
    Route,
    RoutingTable,
)
from forklane.proxy.tap_capture import open_capture

if TYPE_CHECKING:
    from forklane.proxy.tap_capture import Capture
    from forklane.proxy.tracing import ProxySpan

__all__ = ["Downstream", "Exchange"]

_VIA_HOP = b"1.1 forklane"
FAST_HEADS = hotpath.is_compiled("forklane.proxy.http1.head")
"""Whether plain heads are read whole by `http1.head` (both ways) instead of field by field.

Only where that module is compiled: there it is typed C over the head's bytes. Interpreted,
httptools' per-field callbacks cost less than splitting lines in Python on short heads
(callgrind: +10 % instructions per request with one routing header, -9 % with twelve
browser-like fields), so the interpreted build keeps the full path alone. That also makes the
mode-comparison test a comparison of the two readers on the malformed corpus and the routing
matrix."""
_PENDING_LIMIT = 64 * 1024  # request body buffered while the upstream connection opens
_REPLAYABLE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})
# A request line that starts with an RFC 9110 token and a space: an extension method.
_METHOD_TOKEN = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z\-]{1,64}) ")
_COMMON_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"})
_PROTECTED_ACTIONS = (F_INTERESTING, F_MARKER, F_EXPLAIN)

# Framing of the response towards the client.
_NO_BODY, _LENGTH, _CHUNKED, _UNTIL_CLOSE = 0, 1, 2, 3
_DEADLINE_NONE = Deadline.NONE
_DEADLINE_HEADERS = Deadline.HEADERS
_DEADLINE_IDLE = Deadline.IDLE
_DEADLINE_TUNNEL = Deadline.TUNNEL
_DEADLINE_LINGER = Deadline.LINGER
LINGER_SECONDS = 2.0
"""How long a closing connection keeps reading (and dropping) what the client still sends.

Closing a socket with unread bytes makes the kernel send a reset, and a reset that overtakes
the answer makes the client lose it (a 408 to a trickling client, a 413 to a body too large).
Like nginx's lingering close: shut our side, read until the client's FIN or this deadline."""


class _Reject(Exception):
    def __init__(self, reply: LocalReply) -> None:
        super().__init__(reply.error)
        self.reply = reply


class _Stop(Exception):
    """Raised from a parser callback to stop parsing a connection that is ending."""


def _bad(error: ProxyError, body: str) -> _Reject:
    return _Reject(reply_for(error, body, close=True))


_NO_TABLE = TableFields(None, None)  # for requests refused before they could be parsed
_NO_HOP = Hop(b"", b"http", _VIA_HOP)


def fields_for(ctx: ListenerContext, table: RoutingTable | None) -> TableFields:
    """The listener's field classification and outcome cache for `table` (rebuilt on swaps)."""
    fields: TableFields | None = ctx.fields
    if fields is None or fields.table is not table:
        fields = ctx.fields = TableFields(table, ctx.explain_raw)
    return fields


class Exchange(ResponseSink):
    """One request and its response, from the first request byte to the last response byte."""

    def __cinit__(self) -> None:
        """The fields most exchanges never change from these. The compiled build runs this
        when it allocates an exchange (Cython's allocator hook; every field is a C member
        there); the interpreted build never calls it and has these as class attributes
        instead (`_class_defaults`), because setting fifty instance attributes per request
        costs more there than reading a class attribute."""
        self.phase = QUEUED
        self.method = b""
        self.url = b""
        self.host = b""
        self.host_count = 0
        self.xff: bytes | None = None
        self.xfp = False
        self.xfh = False
        self.via: bytes | None = None
        self.conn_tokens: list[bytes] | None = None
        self.te: bytes | None = None
        self.upgrade: bytes | None = None
        self.header_bytes = 0
        self.header_count = 0
        self.version = "1.1"
        self.keep_alive = True
        self.chunked = False
        self.has_body = False
        self.is_head = False
        self.req_done = False
        self.req_trailers: list[bytes] | None = None
        self.pending_bytes = 0
        self.decision: Decision | None = None
        self.route: Route | None = None
        self.dest: Destination | None = None
        self.endpoint: Endpoint | None = None
        self.track = False  # the destination has several endpoints: report outcomes to the balancer
        self.lease: Lease = NO_LEASE
        self.circuit: Circuit | None = None  # the destination's breaker counts this request holds
        self.retrying = False  # counted in the circuit's retries
        self.answer_retries = 0  # retries after an answer (RetryRules)
        self.body_received = 0  # request body bytes so far (the minimum body rate)
        self.body_checked = 0.0  # when the sweep last looked at the body's rate
        self.body_excused = 0.0  # seconds the proxy itself paused reading it (backpressure)
        self.up: UpstreamConnection | None = None
        self.head = b""
        self.reply: LocalReply | None = None
        self.status = 0
        self.framing = _NO_BODY
        self.close_after = False
        self.deadline = 0.0  # while SENT (checked by the listener's sweep)
        self.attempts = 0
        self.reused = False
        self.fallback_used = False
        self.explain = False
        self.mirrors: list[MirrorCopy] | None = None
        self.span: ProxySpan | None = None
        self.block: bytes | None = None  # the kept field lines, raw, when `parse_request` read the head
        self.capture: Capture | None = None  # a live tap copies this request (`tap_capture`)

    def __init__(self, down: Downstream, fields: TableFields, started: float) -> None:
        self.down = down
        self.fields = fields
        self.table = fields.table
        self.actions = fields.h1
        self.started = started
        self.kept: list[tuple[bytes, bytes]] = []
        self.view: dict[str, str] = {}
        self.pending: list[bytes] | None = []

    # -- request body towards the upstream ----------------------------------------------------

    def send_body(self, data: bytes) -> None:
        capture = self.capture
        if capture is not None:
            capture.request_data(data)
        mirrors = self.mirrors
        if mirrors is not None:
            for mirror in mirrors:
                mirror.send_body(data)
        if self.phase >= DONE:
            return
        up = self.up
        if up is None or self.pending is not None:
            assert self.pending is not None
            self.pending.append(data)
            self.pending_bytes += len(data)
            return
        transport = up.transport
        if transport is None:
            return
        if self.chunked:
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            transport.write(data)

    def send_end(self) -> None:
        mirrors = self.mirrors
        if mirrors is not None:
            for mirror in mirrors:
                mirror.send_end()
        up = self.up
        if up is None or self.pending is not None or not self.chunked:
            return
        transport = up.transport
        if transport is not None:
            trailers = b"".join(self.req_trailers) if self.req_trailers else b""
            transport.write(b"0\r\n" + trailers + b"\r\n")

    def release(self) -> None:
        """Let go of the upstream endpoint (idempotent: the lease releases once)."""
        self.lease.release()
        self.up = None

    # -- ResponseSink: events from the upstream connection ------------------------------------

    def response_interim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        down = self.down
        if self.version != "1.1" or down.transport is None or self.phase >= DONE:
            return
        parts = [status_line(status, reason)]
        for name, value in headers:
            parts.append(name + b": " + value + b"\r\n")
        parts.append(b"\r\n")
        down.write(b"".join(parts))

    def response_head(
        self,
        conn: UpstreamConnection,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        down = self.down
        if self.phase >= DONE or down.transport is None:
            conn.abort()
            return
        ctx = down.ctx
        endpoint = self.endpoint
        if endpoint is not None and self.track:
            if status >= 500:
                ctx.balancer.failed(endpoint, self.dest, status)
            else:
                ctx.balancer.succeeded(endpoint, self.dest)
        dest = self.dest
        if status >= 500 and dest is not None and dest.retry.attempts and self.retry(conn, status):
            return
        self.phase = STREAMING
        self.status = status
        parts = [status_line(status, reason)]
        length: bytes | None = None
        conn_tokens: list[bytes] | None = None
        upgrade_value: bytes | None = None
        via: bytes | None = None
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"content-length":
                    length = value
                elif lname == b"connection":
                    if value != b"keep-alive" and value != b"close":
                        conn_tokens = [t.strip().lower() for t in value.split(b",")]
                elif lname == b"upgrade":
                    upgrade_value = value
                continue
            if lname == b"via":
                via = value if via is None else via + b", " + value
                continue
            parts.append(name + b": " + value + b"\r\n")
        if conn_tokens and not PERSISTENCE_TOKENS.issuperset(conn_tokens):
            named = set(conn_tokens)
            parts = [parts[0]] + [
                p for p in parts[1:] if p.split(b":", 1)[0].lower() not in named
            ]
        # The same as `_response_tail`, inline: a call per response costs the interpreted
        # build about 1 % (callgrind); the mode-comparison test runs the two against each other.
        if status == 101:
            self.framing = _NO_BODY
            parts.append(b"connection: upgrade\r\n")
            if upgrade_value is not None:
                parts.append(b"upgrade: " + upgrade_value + b"\r\n")
        elif self.is_head or status == 204 or status == 304:
            self.framing = _NO_BODY
            if length is not None:
                parts.append(b"content-length: " + length + b"\r\n")
        elif length is not None:
            self.framing = _LENGTH
            parts.append(b"content-length: " + length + b"\r\n")
        elif self.version == "1.1":
            self.framing = _CHUNKED
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            self.framing = _UNTIL_CLOSE
        if status != 101:
            if (
                not self.keep_alive
                or ctx.draining
                or self.framing == _UNTIL_CLOSE
                or down.closing
            ):
                self.close_after = True
                parts.append(b"connection: close\r\n")
            elif self.version == "1.0":
                parts.append(b"connection: keep-alive\r\n")
        parts.append(b"via: " + (via + b", " if via else b"") + _VIA_HOP + b"\r\n")
        if self.explain:
            parts.append(self.explanation())
        parts.append(b"\r\n")
        head = b"".join(parts)
        if self.capture is not None:
            self.capture.response_head = head
        down.write(head)

    def response_head_raw(self, conn: UpstreamConnection, head: ResponseHead) -> None:
        """`response_head` for a head `parse_response` read: its status line and kept field
        lines go out as they came."""
        down = self.down
        if self.phase >= DONE or down.transport is None:
            conn.abort()
            return
        status = head.status
        endpoint = self.endpoint
        dest = self.dest
        if endpoint is not None and self.track:
            if status >= 500:
                down.ctx.balancer.failed(endpoint, dest, status)
            else:
                down.ctx.balancer.succeeded(endpoint, dest)
        if status >= 500 and dest is not None and dest.retry.attempts and self.retry(conn, status):
            return
        self.phase = STREAMING
        self.status = status
        self._response_tail(down, status, [head.line, head.kept], head.length, None, head.via)

    def _response_tail(
        self,
        down: Downstream,
        status: int,
        parts: list[bytes],
        length: bytes | None,
        upgrade_value: bytes | None,
        via: bytes | None,
    ) -> None:
        """The fields the proxy writes itself (framing, persistence, Via, the explanation),
        then the head goes to the client."""
        ctx = down.ctx
        if status == 101:
            self.framing = _NO_BODY
            parts.append(b"connection: upgrade\r\n")
            if upgrade_value is not None:
                parts.append(b"upgrade: " + upgrade_value + b"\r\n")
        elif self.is_head or status == 204 or status == 304:
            self.framing = _NO_BODY
            if length is not None:
                parts.append(b"content-length: " + length + b"\r\n")
        elif length is not None:
            self.framing = _LENGTH
            parts.append(b"content-length: " + length + b"\r\n")
        elif self.version == "1.1":
            self.framing = _CHUNKED
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            self.framing = _UNTIL_CLOSE
        if status != 101:
            if (
                not self.keep_alive
                or ctx.draining
                or self.framing == _UNTIL_CLOSE
                or down.closing
            ):
                self.close_after = True
                parts.append(b"connection: close\r\n")
            elif self.version == "1.0":
                parts.append(b"connection: keep-alive\r\n")
        parts.append(b"via: " + (via + b", " if via else b"") + _VIA_HOP + b"\r\n")
        if self.explain:
            parts.append(self.explanation())
        parts.append(b"\r\n")
        head = b"".join(parts)
        if self.capture is not None:
            self.capture.response_head = head
        down.write(head)

    def response_body(self, data: bytes) -> None:
        down = self.down
        if down.transport is None:
            return
        if self.phase >= DONE:
            if down.tunnel is not None:
                # Upgraded (101): raw tunnel bytes, and traffic keeps the tunnel from idling.
                down.deadline = down.ctx.clock.now + down.ctx.idle_timeout
                down.write(data)
            return
        capture = self.capture
        if capture is not None:
            capture.response_data(data)
        if self.framing == _CHUNKED:
            down.write(b"%x\r\n" % len(data))
            down.write(data)
            down.write(b"\r\n")
        else:
            down.write(data)

    def response_end(self, conn: UpstreamConnection, trailers: list[tuple[bytes, bytes]]) -> None:
        down = self.down
        lease = self.lease
        if lease is not NO_LEASE:
            lease.release()
        self.up = None
        if self.framing == _CHUNKED and down.transport is not None and self.phase < DONE:
            tail = [b"0\r\n"]
            for name, value in trailers:
                tail.append(name + b": " + value + b"\r\n")
            tail.append(b"\r\n")
            down.write(b"".join(tail))
        if conn.keep_alive and self.req_done and not conn.tunnel:
            down.ctx.pools.give_back(conn)
        else:
            conn.close()
        down.finish(self)

    def upstream_pause(self, paused: bool) -> None:
        self.down.set_upstream_blocked(paused)

    def cork(self) -> None:
        self.down.cork()

    def uncork(self) -> None:
        self.down.flush()

    def upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        self.down.start_tunnel(self, conn, rest)

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        down = self.down
        ctx = down.ctx
        self.release()
        if down.tunnel is conn:
            down.close()  # the upstream ended the tunnel: so does the client side
            return
        if self.phase >= DONE:
            return
        if self.phase < STREAMING:
            never_seen = self.reused and not conn.seen_bytes
            replayable = not self.has_body and self.method in _REPLAYABLE
            dest = self.dest
            endpoint = self.endpoint
            route = self.route
            assert dest is not None and endpoint is not None and route is not None
            step = after_failure(
                Failure.NEVER_SEEN if never_seen else Failure.RESET,
                route=route, destination=dest, endpoint=endpoint, attempts=self.attempts,
                fallback_used=self.fallback_used, retries=ctx.retries, replayable=replayable,
                pooled=False,
            )
            if isinstance(step, Retry):
                # A pooled connection the upstream had closed: the request never reached it.
                self.attempts += 1
                self.pending = []
                down.dispatch(self, step.destination, None, fresh=True)
                return
            assert isinstance(step, Fail)  # a request the upstream saw never falls back
            ctx.balancer.failed(endpoint, dest)
            ctx.stats.upstream_errors[step.error.label] += 1
            down.reply(self, reply_for(step.error, step.detail, close=not self.req_done))
            return
        if self.framing == _UNTIL_CLOSE and exc is None:
            down.finish(self)  # a close-delimited body ends with the connection
            return
        # The body was cut: tell the client the only honest way, by closing abruptly.
        ctx.stats.upstream_errors["upstream-reset-during-body"] += 1
        self.status = self.status or 502
        down.abort(self)

    def retry(self, conn: UpstreamConnection, status: int) -> bool:
        """Send the request again instead of passing this answer on, when the destination's
        retry rules, the request and the circuit's retry slots allow it."""
        dest = self.dest
        assert dest is not None
        rules = dest.retry
        if not self.req_done or not retry_answer(
            rules, status, self.method, self.has_body, self.answer_retries,
            self.view.get(RETRY_ON_HEADER),
        ):
            return False
        circuit = self.circuit
        if not self.retrying:
            if circuit is None or not circuit.may_retry(retry_budget(rules, circuit.requests)):
                return False
            self.retrying = True
        self.answer_retries += 1
        self.down.ctx.stats.retries[str(status)] += 1
        self.release()
        conn.abort()  # the rest of this answer is not wanted
        self.pending = []
        exclude = self.endpoint if len(dest.endpoints) > 1 else None
        self.down.dispatch(self, dest, exclude, fresh=False)
        return True

    # -- timeouts -----------------------------------------------------------------------------

    def timed_out(self) -> None:
        if self.phase != SENT:
            return
        up = self.up
        dest = self.dest
        if (
            up is not None and dest is not None and dest.retry.per_try_timeout
            and self.down.ctx.clock.now < self.started + dest.timeouts.request
            and self.retry(up, 504)
        ):
            return  # the attempt's own timeout passed, not the request's: try again
        self.release()
        if up is not None:
            up.abort()
        error = errors.UPSTREAM_TIMEOUT
        self.down.ctx.stats.upstream_errors[error.label] += 1
        self.down.reply(self, reply_for(error, "the upstream did not answer in time", close=True))

    def explanation(self) -> bytes:
        if self.decision is None:
            return b""
        value = core.explanation_value(self.decision, self.dest, self.endpoint,
                                       self.fallback_used)
        return b"x-forklane-route: " + value + b"\r\n"


def _class_defaults(cls: type) -> None:
    """Interpreted build: what `cls.__cinit__` sets becomes class attributes (the compiled
    build has no such method to call: Cython made it the allocator)."""
    init = cls.__dict__.get("__cinit__")
    if init is None:
        return
    fields = SimpleNamespace()
    init(fields)
    for name, value in vars(fields).items():
        setattr(cls, name, value)


_class_defaults(Exchange)


class Downstream:
    """One client connection on a listener (an asyncio protocol).

    Not a subclass of `asyncio.Protocol`: the compiled build makes it an extension type, which
    cannot derive from a Python class; the event loops only call its methods."""

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        # Set by the capture layer (proxy/listener) on a captured connection: where a request
        # whose authority no service has goes instead of a 404 (the client's original
        # destination).
        self.passthrough: Route | None = None
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.parsing: Exchange | None = None
        self.closing = False
        self.read_paused = False
        self.upstream_blocked = False
        self.write_paused = False
        self.peer = b""
        self.hop = _NO_HOP
        self.deadline = 0.0
        self.deadline_kind = _DEADLINE_NONE
        self.tunnel: UpstreamConnection | None = None
        self.out: list[bytes] | None = None  # corked writes (see cork())
        self.first = True  # the first bytes may be an HTTP/2 preface
        self.held = b""  # first bytes too few to tell HTTP/2 from HTTP/1.1
        self.client_eof = False
        self.body_left = 0  # Content-Length body bytes still due to a request `_fast_heads` read

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        ctx = self.ctx
        now = ctx.clock.tick()
        self.peer = tune_transport(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self.hop = Hop(self.peer, b"https" if ssl_object is not None else b"http", _VIA_HOP)
        ctx.add(self)
        self.deadline = now + ctx.header_timeout
        self.deadline_kind = _DEADLINE_HEADERS
        if alpn_is_h2(ssl_object):
            self._to_http2(b"")

    def _to_http2(self, data: bytes) -> None:
        """Hand this connection to the HTTP/2 module (h2c preface seen, or ALPN h2)."""
        transport = self.transport
        assert transport is not None
        ctx = self.ctx
        ctx.remove(self)
        ctx.stats.connections_total -= 1  # the HTTP/2 connection counts it
        self.transport = None
        self.parser = None
        assert ctx.open_h2 is not None, "the process wiring sets the HTTP/2 hand-off"
        ctx.open_h2(transport, data, self.passthrough)

    def data_received(self, data: bytes) -> None:
        ctx = self.ctx
        clock = ctx.clock
        clock.now = clock.time()  # the one clock read of this read event (Clock.tick inlined)
        if self.first:
            if self.held:
                data = self.held + data
                self.held = b""
            if undecided(data):
                self.held = data  # `P` or `PR`: HTTP/2's preface or an HTTP/1.1 method
                return
            self.first = False
            if may_be_h2c(data):
                self._to_http2(data)  # h2c with prior knowledge; h2 checks the whole preface
                return
        tunnel = self.tunnel
        if tunnel is not None:
            self.deadline = ctx.clock.now + ctx.idle_timeout
            if tunnel.transport is not None:
                tunnel.transport.write(data)
            return
        parser = self.parser
        if parser is None:
            # After an upgrade request: bytes for the tunnel, held until the 101 arrives.
            if self.queue and self.queue[-1].pending is not None:
                self.queue[-1].pending.append(data)
            return
        if self.closing:
            return
        if self.body_left:
            data = self._fast_body(data)
            if not data or self.closing or self.parser is None:
                return
        if FAST_HEADS and self.parsing is None:
            data = self._fast_heads(data)
            if not data:
                return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.parser = None
            ex = self.queue[-1] if self.queue else None
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            if ex is not None and ex.upgrade is not None and ex.pending is not None:
                if offset < len(data):
                    ex.pending.append(data[offset:])
            elif ex is not None and ex.upgrade is None:
                self.closing = True  # CONNECT or an upgrade we refused: nothing more to parse
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self.protocol_error(cause.reply)
            elif isinstance(cause, _Stop):
                self.closing = True
            else:
                raise
        except httptools.HttpParserInvalidMethodError as exc:
            # llhttp knows a fixed list of methods (RFC 9110's, WebDAV's, PURGE, QUERY …) and
            # cannot parse another token there; RFC 9110 §9.1 answers an unrecognised method
            # with 501. A request line that does not start with a token stays a 400.
            first = _METHOD_TOKEN.match(data)
            if first is None and not self.queue:
                self.protocol_error(
                    reply_for(errors.MALFORMED_REQUEST, f"malformed request: {exc}", close=True)
                )
                return
            # A pipelined request's method is not at the start of this read: left unnamed.
            name = first.group(1).decode("ascii") if first is not None else ""
            name = "" if name in _COMMON_METHODS else f"{name} "
            self.protocol_error(reply_for(
                errors.UNKNOWN_METHOD, f"method {name}is not supported over HTTP/1.1 by this "
                "proxy (its parser knows a fixed list of methods); HTTP/2 takes any", close=True,
            ))
        except httptools.HttpParserError as exc:
            if self.closing:
                # Bytes after a request that ended the connection (HTTP/1.0, `close`), read
                # in the same turn it was answered: never a request, and the answer is out.
                return
            if str(exc) == "Invalid HTTP version":  # HTTP/1.2, HTTP/3.0: well-formed, unknown
                self.protocol_error(reply_for(errors.UNSUPPORTED_VERSION, str(exc), close=True))
                return
            self.protocol_error(
                reply_for(errors.MALFORMED_REQUEST, f"malformed request: {exc}", close=True)
            )

    def eof_received(self) -> bool | None:
        self.client_eof = True
        if self.tunnel is not None or not self.queue:
            return None  # close
        self.closing = True
        return True  # half-closed client: finish the requests we have, then close

    def connection_lost(self, exc: Exception | None) -> None:
        ctx = self.ctx
        ctx.clock.tick()
        self.transport = None
        self.closing = True
        ctx.remove(self)
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.abort()
        for ex in self.queue:
            up = ex.up
            ex.release()
            if up is not None:
                up.abort()
            if ex.phase < DONE and ex.decision is not None:
                ctx.stats.destroyed_with_active_request += 1
                ex.phase = ABORTED
                self._count(ex, 0)
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        target = self.tunnel or (self.queue[0].up if self.queue else None)
        if target is not None and target.transport is not None:
            target.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        target = self.tunnel or (self.queue[0].up if self.queue else None)
        if target is not None and target.transport is not None:
            target.transport.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.closing or (self.queue and not self.queue[-1].keep_alive):
            # The connection ends after an earlier request (local error, `Connection: close`,
            # HTTP/1.0): bytes pipelined behind it in the same read are never a request.
            raise _Stop
        ctx = self.ctx
        now = ctx.clock.now
        table = ctx.holder.table
        fields = ctx.fields
        if fields is None or fields.table is not table:
            fields = fields_for(ctx, table)
        self.parsing = Exchange(self, fields, now)
        self.deadline = now + ctx.header_timeout
        self.deadline_kind = _DEADLINE_HEADERS

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.url += url
        ex.header_bytes += len(url)
        if ex.header_bytes > self.ctx.max_header_bytes:
            raise _bad(errors.HEADERS_TOO_LARGE, "request line and headers too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        if ex.decision is not None or ex.reply is not None:
            # A trailer field of a chunked request body: forwarded with the last chunk,
            # unless it is a field that frames, routes or belongs to this hop.
            if name.lower() in TRAILER_NEVER:
                return
            if ex.req_trailers is None:
                ex.req_trailers = []
            ex.req_trailers.append(name + b": " + value + b"\r\n")
            return
        ctx = self.ctx
        ex.header_count += 1
        ex.header_bytes += len(name) + len(value) + 4
        if ex.header_count > ctx.max_header_count or ex.header_bytes > ctx.max_header_bytes:
            raise _bad(errors.HEADERS_TOO_LARGE, "too many or too large request headers")
        lname = name.lower()
        action = ex.actions.get(lname)
        if action is not None:
            if action == F_INTERESTING:
                core.join_view(ex.view, lname.decode("latin-1"), value.decode("latin-1"))
            elif action == F_EXPLAIN:
                ex.explain = True
            elif action == F_HOST:
                ex.host_count += 1
                ex.host = value
            elif action == F_CONNECTION:
                tokens = [t.strip().lower() for t in value.split(b",")]
                if ex.conn_tokens is None:
                    ex.conn_tokens = tokens
                else:
                    ex.conn_tokens.extend(tokens)
                return
            elif action == F_TRANSFER_ENCODING:
                # Several lines form one list (RFC 9110 §5.3): `gzip` then `chunked` is 501.
                ex.te = value if ex.te is None else ex.te + b", " + value
                return
            elif action == F_CONTENT_LENGTH:
                ex.has_body = value.strip() != b"0"
            elif action == F_XFF:
                ex.xff = value if ex.xff is None else ex.xff + b", " + value
                return
            elif action == F_XFP:
                ex.xfp = True
            elif action == F_XFH:
                ex.xfh = True
            elif action == F_VIA:
                ex.via = value if ex.via is None else ex.via + b", " + value
                return
            elif action == F_UPGRADE:
                ex.upgrade = value
                return
            elif action == F_MARKER:
                ex.view[ROUTED_MARKER] = "1"
                return
            else:  # other hop-by-hop fields
                return
        elif lname.find(b"_") >= 0 and core.lookalike(lname, ex.fields.interesting_raw):
            # (`find`, not `in`: bytes' `in` first tries the needle as an integer and formats
            # the TypeError it then swallows, about 2,000 instructions per field.)
            # A look-alike of a routing header must never take part in routing, nor reach
            # the next hop to do so there.
            ctx.stats.underscore_headers_dropped += 1
            return
        ex.kept.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        parser = self.parser
        assert parser is not None
        ctx = self.ctx
        ex.version = parser.get_http_version()
        ex.method = parser.get_method()
        ex.is_head = ex.method == b"HEAD"
        ex.keep_alive = parser.should_keep_alive()
        if ex.version not in ("1.1", "1.0"):
            raise _bad(errors.UNSUPPORTED_VERSION, f"HTTP/{ex.version} is not supported here")
        if ex.host_count > 1:
            raise _bad(errors.DUPLICATE_HOST, "more than one Host header")
        if ex.host_count == 0 and ex.version == "1.1":
            raise _bad(errors.MISSING_HOST, "HTTP/1.1 requests need a Host header")
        host = ex.host
        if host and host != ctx.host_ok:
            if not valid_host(host):
                raise _bad(errors.BAD_HOST, "the Host header is not a valid authority")
            ctx.host_ok = host
        if ex.te is not None:
            if ex.version == "1.0":
                # RFC 9112 §6.1: HTTP/1.0 has no chunked framing, so the framing is faulty.
                raise _bad(errors.BAD_TRANSFER_ENCODING,
                           "Transfer-Encoding is not valid in HTTP/1.0")
            problem = check_transfer_encoding(ex.te)
            if problem is not None:
                raise _Reject(problem)
            ex.chunked = True
            ex.has_body = True
        if ex.method == b"CONNECT":
            raise _bad(errors.CONNECT_UNSUPPORTED, "CONNECT tunnelling is not supported")
        url = ex.url
        authority = host
        target = url
        if not url.startswith(b"/") and url != b"*":
            # absolute-form (the app uses us as HTTP_PROXY): the authority comes from the URL
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _bad(errors.BAD_TARGET, "the request target is not a valid URL") from None
            if parsed.host is None:
                raise _bad(errors.BAD_TARGET, "the request target has no host")
            authority = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
            target = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
            # RFC 9112 §3.2.2: the target's authority replaces any Host the client sent, so
            # the next hop never sees a Host that disagrees with where we routed.
            ex.kept = [item for item in ex.kept if item[0].lower() != b"host"]
            ex.kept.append((b"host", authority))
            ex.host = authority
        if ex.upgrade is not None and not (ex.conn_tokens and b"upgrade" in ex.conn_tokens):
            ex.upgrade = None  # Upgrade without Connection: upgrade is not an upgrade request
        if ex.conn_tokens:
            self._drop_connection_named(ex)  # raises for a nomination of a protected field
        # What `_head_done` does for heads the one-call reader read, inline here: a call
        # per request costs the interpreted build about 1 % (callgrind). The
        # mode-comparison test runs the two against each other.
        table = ex.table
        if table is None:
            ex.reply = reply_for(errors.NO_CONFIG, "no routing table loaded yet", close=False)
        else:
            qmark = target.find(b"?")
            path = target if qmark < 0 else target[:qmark]
            decision, injection, span = core.route(
                ctx.kind, ex.fields, table, ex.method, path, authority, ex.view, ctx.draw,
                ctx.hooks, ctx.stats, ex.via,
            )
            ex.decision = decision
            ex.route = decision.route
            ex.span = span
            ex.head = self._request_head(ex, decision, injection, target)
            if ctx.stats.taps:  # somebody watches: a tap may capture this request
                ex.capture = open_capture(ctx.stats.taps, decision.key.key,
                                          decision.route.service, ex.head)
            if decision.mirrors and ex.upgrade is None:
                ex.mirrors = [
                    MirrorCopy(ctx, dest, ex.head, ex.chunked, ex.is_head,
                               decision.route.service or "")
                    for dest in decision.mirrors
                ]
                for mirror in ex.mirrors:
                    mirror.start()
        self.queue.append(ex)
        if len(self.queue) == 1:
            self.deadline_kind = _DEADLINE_NONE
            self.start(ex)
        self._update_reading()

    def _head_done(self, ex: Exchange, target: bytes, authority: bytes) -> None:
        """A valid request head from the one-call reader: route it, write the forwarded head,
        queue the exchange and start it if it is first in line (as `on_headers_complete`)."""
        ctx = self.ctx
        table = ex.table
        if table is None:
            ex.reply = reply_for(errors.NO_CONFIG, "no routing table loaded yet", close=False)
        else:
            qmark = target.find(b"?")
            path = target if qmark < 0 else target[:qmark]
            decision, injection, span = core.route(
                ctx.kind, ex.fields, table, ex.method, path, authority, ex.view, ctx.draw,
                ctx.hooks, ctx.stats, ex.via,
            )
            ex.decision = decision
            ex.route = decision.route
            ex.span = span
            ex.head = self._request_head(ex, decision, injection, target)
            if ctx.stats.taps:  # somebody watches: a tap may capture this request
                ex.capture = open_capture(ctx.stats.taps, decision.key.key,
                                          decision.route.service, ex.head)
            if decision.mirrors and ex.upgrade is None:
                ex.mirrors = [
                    MirrorCopy(ctx, dest, ex.head, ex.chunked, ex.is_head,
                               decision.route.service or "")
                    for dest in decision.mirrors
                ]
                for mirror in ex.mirrors:
                    mirror.start()
        self.queue.append(ex)
        if len(self.queue) == 1:
            self.deadline_kind = _DEADLINE_NONE
            self.start(ex)
        self._update_reading()

    # -- whole heads in one call (head.parse_request), the full parser for the rest -----------

    def _fast_heads(self, data: bytes) -> bytes:
        """Take the requests at the start of `data` that `parse_request` reads whole (with
        their Content-Length bodies); return the bytes the full parser must see. Called only
        between requests, where the full parser holds nothing."""
        ctx = self.ctx
        pos = 0
        size = len(data)
        while pos < size:
            if self.closing or (self.queue and not self.queue[-1].keep_alive):
                self.closing = True  # as on_message_begin: nothing after such a request
                return b""
            table = ctx.holder.table
            fields = ctx.fields
            if fields is None or fields.table is not table:
                fields = fields_for(ctx, table)
            head = parse_request(data, pos, fields.h1, fields.names, ctx.max_header_bytes,
                                 ctx.max_header_count)
            if head is None:
                break
            host = head.host
            if host != ctx.host_ok:
                if not valid_host(host):
                    break  # the full path answers it
                ctx.host_ok = host
            now = ctx.clock.now
            ex = Exchange(self, fields, now)
            self.parsing = ex
            self.deadline = now + ctx.header_timeout
            self.deadline_kind = _DEADLINE_HEADERS
            method = head.method
            ex.method = method
            ex.is_head = method == b"HEAD"
            ex.url = target = head.target
            ex.host = host
            ex.host_count = 1
            ex.header_bytes = head.header_bytes
            ex.keep_alive = head.keep_alive
            ex.view = head.view
            ex.block = head.kept
            if head.xff is not None:
                ex.xff = head.xff
            if head.via is not None:
                ex.via = head.via
            if head.xfp:
                ex.xfp = True
            if head.xfh:
                ex.xfh = True
            if head.explain:
                ex.explain = True
            length = head.content_length
            if length > 0:
                ex.has_body = True
            self._head_done(ex, target, host)
            pos = head.end
            if length > 0:
                rest = size - pos
                if rest < length:
                    if rest:
                        self.on_body(data[pos:])
                    self.body_left = length - rest
                    return b""
                self.on_body(data[pos : pos + length])
                pos += length
            self.on_message_complete()
            if self.parser is None:
                return b""
        return data[pos:] if pos else data

    def _fast_body(self, data: bytes) -> bytes:
        """The rest of a Content-Length body of a request read by `_fast_heads`; returns the
        bytes after it."""
        left = self.body_left
        if len(data) < left:
            self.body_left = left - len(data)
            self.on_body(data)
            return b""
        self.body_left = 0
        self.on_body(data if len(data) == left else data[:left])
        self.on_message_complete()
        return data[left:]

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None:
            return
        ex.body_received += len(body)
        ex.send_body(body)
        if ex.pending is not None and ex.pending_bytes > _PENDING_LIMIT:
            self._update_reading()

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        if ex is None:
            return
        ex.req_done = True
        if ex.phase < DONE:
            ex.send_end()
        elif not self.queue and self.transport is not None:
            # Answered before its headers were even done being parsed (a local reply): the
            # connection is idle now.
            self.deadline = self.ctx.clock.now + self.ctx.idle_timeout
            self.deadline_kind = _DEADLINE_IDLE
        if ex.upgrade is None and len(self.queue) > self.ctx.max_pipelined:
            self._update_reading()

    # -- building the forwarded request --------------------------------------------------------

    def _drop_connection_named(self, ex: Exchange) -> None:
        """Fields named in Connection are hop-by-hop (RFC 9110 §7.6.1): gone before routing.

        A client must not use Connection to remove what frames or routes the request
        (Content-Length, Transfer-Encoding, Host, the carriers and headers the routing table
        reads, the routed mark, traceparent): honouring it would forward a body whose framing
        was removed (request smuggling) or route on different fields than the next hop sees.
        Such a request is answered 400 `bad-connection-header` and the connection closed."""
        assert ex.conn_tokens is not None
        named = {t for t in ex.conn_tokens if t not in PERSISTENCE_TOKENS}
        if not named:
            return
        actions = ex.actions
        protected = sorted(
            t for t in named
            if t in FRAMING_FIELDS or t == b"traceparent"
            or actions.get(t) in _PROTECTED_ACTIONS
        )
        if protected:
            names = ", ".join(t.decode("latin-1") for t in protected)
            raise _bad(errors.BAD_CONNECTION_HEADER,
                       f"Connection must not name fields that frame or route the request: {names}")
        ex.kept = [item for item in ex.kept if item[0].lower() not in named]
        # The client's own forwarding fields were nominated for this hop only.
        if b"x-forwarded-for" in named:
            ex.xff = None
        if b"x-forwarded-proto" in named:
            ex.xfp = False
        if b"x-forwarded-host" in named:
            ex.xfh = False
        if b"via" in named:
            ex.via = None

    def _request_head(
        self, ex: Exchange, decision: Decision, injection: Injection, target: bytes
    ) -> bytes:
        span = ex.span
        block = ex.block
        if block is not None:
            return write_request_head(ex.method, target, block, injection, self.hop, ex.xff,
                                      ex.xfp, ex.xfh, ex.host, ex.via, span)
        kept = ex.kept if span is None else core.apply_span(ex.kept, span)
        out: list[tuple[bytes, bytes]] = []
        core.forwarded_fields(out, kept, injection, self.hop, ex.xff, ex.xfp, ex.xfh, ex.host,
                              ex.via)
        if ex.chunked:
            out.append((b"transfer-encoding", b"chunked"))
        if ex.upgrade is not None:
            out.append((b"connection", b"upgrade"))
            out.append((b"upgrade", ex.upgrade))
        parts = [ex.method + b" " + target + b" HTTP/1.1\r\n"]
        for name, value in out:
            parts.append(name + b": " + value + b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    # -- running an exchange -----------------------------------------------------------------

    def start(self, ex: Exchange) -> None:
        """`ex` reached the head of the queue: answer it locally or send it upstream."""
        if ex.reply is not None:
            self.reply(ex, ex.reply)
            return
        route = ex.route
        assert route is not None
        if route.destination is None:
            passthrough = self.passthrough
            if passthrough is not None and ex.table is not None and route is ex.table.no_route:
                ex.route = passthrough
                assert passthrough.destination is not None
                self.dispatch(ex, passthrough.destination, None, fresh=False)
                return
            error = errors.error_for(route.error or "no-route")
            self.reply(ex, LocalReply(route.status or error.status, error.reason, route.reason,
                                      close=not ex.req_done and ex.has_body))
            return
        if route.delay:  # an injected fault: hold the request, then forward it
            self.ctx.spawn(self._dispatch_later(ex, route.destination, route.delay))
            return
        self.dispatch(ex, route.destination, None, fresh=False)

    async def _dispatch_later(self, ex: Exchange, dest: Destination, delay: float) -> None:
        await asyncio.sleep(delay)  # the fault's delay, not synchronisation
        self.ctx.clock.tick()
        if ex.phase < DONE and self.transport is not None:
            self.dispatch(ex, dest, None, fresh=False)

    def dispatch(
        self, ex: Exchange, dest: Destination, exclude: Endpoint | None, fresh: bool
    ) -> None:
        ctx = self.ctx
        circuit = ex.circuit
        if circuit is None or circuit.name != dest.name:
            # First attempt, or a fallback to another destination: its breakers decide.
            held = circuit
            circuit = ctx.balancer.circuit(dest)
            if held is not None:
                held.leave(ex.retrying)
                ex.retrying = False
                ex.circuit = None
            if ctx.overload.over_memory and held is None:
                self.overloaded(ex)
                return
            if not circuit.enter():
                self.circuit_open(ex, dest, "max_requests")
                return
            ex.circuit = circuit
        endpoint = ctx.balancer.pick(dest, exclude)
        ex.phase = CONNECTING
        ex.dest = dest
        ex.endpoint = endpoint
        ex.track = len(dest.endpoints) > 1
        conn = None if fresh else ctx.pools.take(endpoint.address)
        if conn is not None:
            ex.reused = True
            self.bind(ex, conn)
        else:
            ex.reused = False
            if not circuit.may_connect(ctx.pools.connections(dest.endpoints)):
                self.circuit_open(ex, dest, "max_connections or max_pending_requests")
                return
            circuit.pending += 1
            ctx.spawn(self._open(ex, dest, endpoint, circuit))

    def overloaded(self, ex: Exchange) -> None:
        error = errors.OVERLOADED
        self.ctx.stats.rejected[error.label] += 1
        self.reply(ex, reply_for(error, "the proxy is short of memory: try again shortly",
                                 close=True))

    def circuit_open(self, ex: Exchange, dest: Destination, limit: str) -> None:
        error = errors.CIRCUIT_OPEN
        self.ctx.stats.upstream_errors[error.label] += 1
        self.reply(ex, reply_for(error, f"{dest.name}: {limit} reached",
                                 close=not ex.req_done))

    async def _open(
        self, ex: Exchange, dest: Destination, endpoint: Endpoint, circuit: Circuit
    ) -> None:
        ctx = self.ctx
        try:
            conn = await ctx.pools.open(endpoint, dest.timeouts.connect)
        except (OSError, TimeoutError) as exc:
            circuit.pending -= 1
            ctx.clock.tick()
            failure = (Failure.CONNECT_TIMEOUT if isinstance(exc, TimeoutError)
                       else Failure.CONNECT_FAILED)
            self.connect_failed(ex, dest, endpoint, failure)
            return
        except BaseException:
            circuit.pending -= 1
            raise
        circuit.pending -= 1
        ctx.clock.tick()
        if ex.phase >= DONE or self.transport is None:
            ctx.pools.give_back(conn)
            return
        self.bind(ex, conn)

    def connect_failed(
        self, ex: Exchange, dest: Destination, endpoint: Endpoint, failure: Failure
    ) -> None:
        if ex.phase >= DONE:
            return
        ctx = self.ctx
        ctx.balancer.failed(endpoint, dest)
        ctx.stats.upstream_errors[failure.label] += 1
        route = ex.route
        assert route is not None
        step = after_failure(failure, route=route, destination=dest, endpoint=endpoint,
                             attempts=ex.attempts, fallback_used=ex.fallback_used,
                             retries=ctx.retries)
        if isinstance(step, Retry) and not ex.retrying:
            circuit = ex.circuit
            if circuit is not None and not circuit.may_retry():
                step = after_failure(failure, route=route, destination=dest, endpoint=endpoint,
                                     attempts=ex.attempts, fallback_used=ex.fallback_used,
                                     retries=0)
            else:
                ex.retrying = True
        if isinstance(step, Fail):
            self.reply(ex, reply_for(step.error, step.detail, close=not ex.req_done))
        elif isinstance(step, Fallback):
            ex.fallback_used = True
            ctx.stats.fork_fallbacks += 1
            self.dispatch(ex, step.destination, None, fresh=False)
        else:
            ex.attempts += 1
            self.dispatch(ex, step.destination, step.exclude, fresh=step.fresh)

    def bind(self, ex: Exchange, conn: UpstreamConnection) -> None:
        transport = conn.transport
        if transport is None:
            assert ex.dest is not None
            self.dispatch(ex, ex.dest, None, fresh=True)
            return
        ctx = self.ctx
        dest = ex.dest
        assert dest is not None and ex.endpoint is not None
        ex.up = conn
        if ex.track:  # one endpoint: nothing to choose between, no count to keep
            ex.lease = ctx.balancer.lease(dest, ex.endpoint)
        ex.phase = SENT
        conn.attach(ex, ex.is_head)
        pending = ex.pending
        ex.pending = None
        if ex.upgrade is not None:
            transport.write(ex.head)
            ex.pending = pending  # raw tunnel bytes wait for the 101
        elif pending:
            if ex.chunked:
                out = [ex.head]
                for chunk in pending:
                    out.append(b"%x\r\n" % len(chunk))
                    out.append(chunk)
                    out.append(b"\r\n")
                transport.writelines(out)
            else:
                transport.writelines([ex.head, *pending])
            if ex.pending_bytes > _PENDING_LIMIT:
                ex.pending_bytes = 0
                self._update_reading()
        else:
            transport.write(ex.head)
        if ex.req_done:
            ex.send_end()
        deadline = ex.started + dest.timeouts.request
        per_try = dest.retry.per_try_timeout
        if per_try and ctx.clock.now + per_try < deadline:
            deadline = ctx.clock.now + per_try
        ex.deadline = deadline
        if self.write_paused:
            transport.pause_reading()

    def reply(self, ex: Exchange, reply: LocalReply) -> None:
        """Answer `ex` locally (now if it is at the head of the queue, else when it gets there)."""
        if not self.queue or self.queue[0] is not ex:
            ex.reply = reply
            return
        transport = self.transport
        ex.status = reply.status
        close = reply.close or not ex.keep_alive or self.closing or self.ctx.draining
        if not ex.req_done and ex.has_body:
            close = True
        ex.close_after = close
        if transport is not None:
            extra = ex.explanation() if ex.explain else b""
            if close and not reply.close:
                reply = LocalReply(reply.status, reply.error, reply.body, close=True)
            self.write(local_reply(reply, extra, head_only=ex.is_head))
        self.finish(ex)

    def protocol_error(self, reply: LocalReply) -> None:
        """A request that must not be forwarded: answer in order, then close."""
        ctx = self.ctx
        ctx.stats.rejected[reply.error] += 1
        self.closing = True
        ex = self.parsing
        self.parsing = None
        if ex is not None and ex in self.queue:
            # The body of a request already under way is malformed (e.g. a bad chunk size).
            ex.keep_alive = False
            if ex is not self.queue[0]:
                ex.reply = reply
                return
            if ex.phase >= STREAMING:
                self.abort(ex)
                return
            up = ex.up
            ex.release()
            if up is not None:
                up.abort()
            self.reply(ex, reply)
            return
        ex = Exchange(self, _NO_TABLE, ctx.clock.now)
        ex.reply = reply
        ex.keep_alive = False
        self.queue.append(ex)
        if len(self.queue) == 1:
            self.reply(ex, reply)

    def finish(self, ex: Exchange) -> None:
        """The response of `ex` is complete: count it, then move on to the next request."""
        if ex.phase >= DONE:
            return
        ex.phase = DONE
        ctx = self.ctx
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        self._count(ex, ex.status)
        transport = self.transport
        if transport is None:
            return
        if (
            ex.close_after
            or not ex.keep_alive
            or (not ex.req_done and ex.has_body and self.parsing is ex)
            or self.parser is None  # after a refused upgrade there is nothing left to parse
            or (self.closing and not self.queue)
        ):
            self.closing = True
            self.queue.clear()
            self.flush()
            self._linger(transport)
            return
        if self.queue:
            nxt = self.queue[0]
            self.start(nxt)
        elif self.parsing is None:
            self.deadline = ctx.clock.now + ctx.idle_timeout
            self.deadline_kind = _DEADLINE_IDLE
        self._update_reading()

    def abort(self, ex: Exchange) -> None:
        ex.phase = ABORTED
        self._count(ex, 0)
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _count(self, ex: Exchange, status: int) -> None:
        ctx = self.ctx
        circuit = ex.circuit
        if circuit is not None:
            ex.circuit = None
            circuit.leave(ex.retrying)
        now = ctx.clock.now
        count_request(ctx, ex.route, status, now - ex.started)
        span = ex.span
        if span is not None:
            ex.span = None
            span.finish(status, ex.dest, ex.endpoint)
        if ctx.access_log or ctx.stats.taps:
            log_request(
                ctx, protocol="http/1.1", method=ex.method, target=ex.url, host=ex.host,
                status=status, elapsed=now - ex.started, route=ex.route, decision=ex.decision,
                dest=ex.dest, endpoint=ex.endpoint, fallback=ex.fallback_used,
                error=ex.reply.error if ex.reply else None, peer=self.peer,
                capture=ex.capture,
            )

    # -- writing: coalesced per upstream read ------------------------------------------------

    def cork(self) -> None:
        """Collect writes until `flush()`: the response head and the body that arrived in the
        same upstream read leave in one syscall instead of two or three."""
        if self.out is None:
            self.out = []

    def write(self, data: bytes) -> None:
        out = self.out
        if out is not None:
            out.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def flush(self) -> None:
        out = self.out
        if out is None:
            return
        self.out = None
        transport = self.transport
        if out and transport is not None:
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    # -- flow control, tunnels, deadlines ---------------------------------------------------

    def set_upstream_blocked(self, blocked: bool) -> None:
        self.upstream_blocked = blocked
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        parsing = self.parsing
        pause = (
            self.upstream_blocked
            or len(self.queue) > self.ctx.max_pipelined
            or (parsing is not None and parsing.pending is not None
                and parsing.pending_bytes > _PENDING_LIMIT)
        )
        if pause and not self.read_paused:
            self.read_paused = True
            transport.pause_reading()
        elif not pause and self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    def start_tunnel(self, ex: Exchange, conn: UpstreamConnection, rest: bytes) -> None:
        """The upstream answered 101: from now on bytes flow unparsed both ways."""
        transport = self.transport
        if transport is None or conn.transport is None:
            conn.abort()
            return
        self.tunnel = conn
        if rest:
            self.write(rest)  # after the corked 101 head
        pending, ex.pending = ex.pending, None
        if pending:
            conn.transport.writelines(pending)
        ex.phase = TUNNEL
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        self._count(ex, 101)
        self.deadline = self.ctx.clock.now + self.ctx.idle_timeout
        self.deadline_kind = _DEADLINE_TUNNEL
        self.upstream_blocked = False
        self._update_reading()

    def expire_requests(self, now: float) -> None:
        """Called by the sweep: the request at the head of the queue may have timed out, and
        the body being received may be too slow (`body_timeout` plus a second per
        `min_body_rate` bytes: Apache's mod_reqtimeout rule against slowloris on bodies)."""
        parsing = self.parsing
        if parsing is not None and parsing.has_body and not parsing.req_done:
            ctx = self.ctx
            rate = ctx.min_body_rate
            if self.read_paused and parsing.body_checked:
                parsing.body_excused += now - parsing.body_checked  # our pause, not theirs
            parsing.body_checked = now
            allowed = ctx.body_timeout + parsing.body_excused + parsing.body_received / rate \
                if rate else 0.0
            if rate and now - parsing.started > allowed:
                error = errors.BODY_TIMEOUT
                self.protocol_error(reply_for(
                    error, f"the request body arrived slower than {rate} bytes/s", close=True))
                return
        queue = self.queue
        if queue:
            ex = queue[0]
            if ex.phase == SENT and now >= ex.deadline:
                ex.timed_out()

    def deadline_expired(self) -> None:
        kind = self.deadline_kind
        self.deadline_kind = _DEADLINE_NONE
        if kind == _DEADLINE_HEADERS:
            if self.queue:
                return  # a request is in flight; upstream timeouts govern it
            ex = self.parsing
            self.parsing = None
            self.closing = True
            if ex is None:
                self._close_quietly()  # nothing was sent: no one to answer
                return
            error = errors.HEADER_TIMEOUT
            self.ctx.stats.rejected[error.label] += 1
            ex.keep_alive = False
            self.queue.append(ex)
            self.reply(ex, reply_for(error, "request headers did not arrive in time", close=True))
        elif kind in (_DEADLINE_IDLE, _DEADLINE_TUNNEL, _DEADLINE_LINGER):
            self._close_quietly()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close after an answer without letting a reset overtake it (see LINGER_SECONDS)."""
        if self.client_eof or not transport.can_write_eof() or transport.is_closing():
            transport.close()
            return
        transport.write_eof()
        self.parser = None
        self.deadline = self.ctx.clock.now + LINGER_SECONDS
        self.deadline_kind = _DEADLINE_LINGER
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    def _close_quietly(self) -> None:
        self.closing = True
        self.flush()
        if self.tunnel is not None:
            self.tunnel.close()
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self._close_quietly()

    def drain(self) -> None:
        """Shutdown: idle connections close now; busy ones answer with Connection: close."""
        if not self.queue and self.parsing is None and self.tunnel is None:
            self._close_quietly()
