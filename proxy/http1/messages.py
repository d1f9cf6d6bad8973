"""HTTP/1.1 message facts and pure helpers: hop-by-hop fields, local replies, framing checks.

No I/O here. Everything the request path needs is a constant built at import time.
"""

from __future__ import annotations

from http import HTTPStatus

from forklane.proxy.forward import errors
from forklane.proxy.forward.errors import ProxyError

__all__ = [
    "FRAMING_FIELDS",
    "HOP_BY_HOP",
    "PERSISTENCE_TOKENS",
    "TRAILER_NEVER",
    "LocalReply",
    "check_transfer_encoding",
    "local_reply",
    "reply_for",
    "status_line",
    "valid_host",
]

# RFC 9110 §7.6.1 plus the legacy Proxy-* and Keep-Alive fields. Content-Length and
# Transfer-Encoding are recomputed by the proxy, so they are never copied either.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)

# Fields that frame or route a message (RFC 9110 §7.6.1): a sender must not nominate them in
# `Connection`, and a proxy must not let such a nomination strip them. Requests that try are
# rejected (400 `bad-connection-header`); responses keep their framing, which the proxy
# recomputes itself.
FRAMING_FIELDS: frozenset[bytes] = frozenset({b"content-length", b"transfer-encoding", b"host"})
# Connection tokens that are options of the connection itself, not names of fields.
PERSISTENCE_TOKENS: frozenset[bytes] = frozenset({b"close", b"keep-alive", b"upgrade", b""})
# Fields never forwarded in a request's trailer section: framing, routing and hop-by-hop
# fields have no meaning there (RFC 9110 §6.5.1) and a next hop must not act on them.
TRAILER_NEVER: frozenset[bytes] = HOP_BY_HOP | FRAMING_FIELDS | frozenset(
    {b"x-forklane-routed", b"x-forklane-routing-key", b"baggage", b"tracestate", b"traceparent"}
)

# RFC 3986 reg-name (unreserved, sub-delims, '%' of pct-encoded); an IP-literal is taken to
# be IPv6 only (hex digits, ':' and '.'); IPvFuture never names a service.
_REG_NAME = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%"
_IP_LITERAL = b"0123456789abcdefABCDEF:."

_STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus
}


_SEEN_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes | None = None) -> bytes:
    if reason:
        # Upstreams repeat the same few status lines: build each once.
        line = _SEEN_LINES.get((status, reason))
        if line is None:
            if len(_SEEN_LINES) > 512:
                _SEEN_LINES.clear()
            line = _SEEN_LINES[(status, reason)] = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        return line
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


class LocalReply:
    """A response the proxy answers itself. `error` goes into `x-forklane-error`."""

    __slots__ = ("body", "close", "error", "status")

    def __init__(self, status: int, error: str, body: str, close: bool) -> None:
        self.status = status
        self.error = error
        self.body = body
        self.close = close


def reply_for(error: ProxyError, body: str, close: bool) -> LocalReply:
    """The local answer for an entry of the error table."""
    return LocalReply(error.status, error.reason, body, close)


def local_reply(reply: LocalReply, extra: bytes = b"", head_only: bool = False) -> bytes:
    body = (reply.body + "\n").encode("utf-8", "replace")
    parts = [
        status_line(reply.status),
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(body),
        b"x-forklane-error: %s\r\n" % reply.error.encode("ascii", "replace"),
        b"cache-control: no-store\r\n",
    ]
    if reply.close:
        parts.append(b"connection: close\r\n")
    parts.append(extra)
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def check_transfer_encoding(value: bytes) -> LocalReply | None:
    """The parser already refuses codings after `chunked`; we refuse codings we cannot
    forward (RFC 9112 §6.1: unknown coding → 501). Only a lone `chunked` passes."""
    codings = [c.strip().lower() for c in value.split(b",")]
    if codings == [b"chunked"]:
        return None
    if codings and codings[-1] == b"chunked":
        return reply_for(errors.UNSUPPORTED_TRANSFER_CODING,
                         "only the chunked transfer coding is supported", close=True)
    return reply_for(errors.BAD_TRANSFER_ENCODING, "Transfer-Encoding must end with chunked",
                     close=True)


def valid_host(value: bytes) -> bool:
    """`uri-host [":" port]` (RFC 9112 §3.2): anything else in Host is answered with 400, so a
    next hop never has to guess what a malformed authority meant."""
    if value[:1] == b"[":
        end = value.find(b"]")
        if end < 2 or value[1:end].translate(None, _IP_LITERAL):
            return False
        port = value[end + 1 :]
    else:
        colon = value.find(b":")
        name, port = (value, b"") if colon < 0 else (value[:colon], value[colon:])
        if name.translate(None, _REG_NAME):
            return False
    if not port:
        return True
    digits = port[1:]
    return port[:1] == b":" and len(digits) <= 5 and (not digits or digits.isdigit())
