"""Protocol detection from a connection's first bytes, and the authority of a first request.

Pure functions over bytes: the sniffer feeds what arrived so far and gets a verdict or "need
more". The rules follow Linkerd's and Envoy's detectors: the HTTP/2 connection preface means
h2c; a request line `TOKEN SP TARGET SP HTTP/1.x CRLF` means HTTP/1; anything else (a TLS
ClientHello, PostgreSQL's startup message, RESP, ...) is opaque from the first byte that
cannot belong to those. Detection never needs more than one request line (bounded by the
caller's header limit).

`request_authority` reads the authority of a complete HTTP/1 request head (absolute-form
target, else the single Host field) so the listener can decide whether forklane routes it at
all; the HTTP/1.1 module re-parses the head strictly when it does.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["PREFACE", "Detected", "classify", "head_complete", "request_authority"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TLS_HANDSHAKE = 0x16
_MAX_METHOD = 32


class Detected(Enum):
    HTTP1 = "http1"
    H2C = "h2c"
    TLS = "tls"
    OPAQUE = "opaque"


def classify(data: bytes, limit: int = 8192) -> Detected | None:
    """What the connection speaks, or None while `data` is a prefix of more than one answer.

    `limit` bounds the request line: a line longer than that is not worth waiting for."""
    if not data:
        return None
    if data[0] == _TLS_HANDSHAKE:
        if len(data) < 2:
            return None
        return Detected.TLS if data[1] == 0x03 else Detected.OPAQUE
    if data[:1] == b"P" and PREFACE.startswith(data[: len(PREFACE)]):
        if len(data) < len(PREFACE):
            return None  # "PRI * HTTP/2.0..." so far: wait for the rest of the preface
        return Detected.H2C
    return _http1_line(data, limit)


def _http1_line(data: bytes, limit: int) -> Detected | None:
    # method: 1*tchar, then SP
    i = 0
    n = len(data)
    while i < n and data[i] in _TCHAR:
        i += 1
        if i > _MAX_METHOD:
            return Detected.OPAQUE
    if i == n:
        return None
    if i == 0 or data[i] != 0x20:
        return Detected.OPAQUE
    end = data.find(b"\r\n", i)
    if end < 0:
        if b"\n" in data[i:] or b"\r" in data[i:-1] or n > limit:
            return Detected.OPAQUE
        return None
    line = data[i + 1 : end]
    target, sep, version = line.rpartition(b" ")
    if not sep or not target or b" " in target:
        return Detected.OPAQUE
    return Detected.HTTP1 if version in (b"HTTP/1.1", b"HTTP/1.0") else Detected.OPAQUE


def head_complete(data: bytes) -> int:
    """Length of the request head (through the empty line), or -1 while it is incomplete."""
    end = data.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def request_authority(head: bytes) -> bytes | None:
    """The authority a complete HTTP/1 request head names, lowercased, or None when it names
    none unambiguously (no Host, several Host fields, a malformed line)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return None
    method, target = parts[0], parts[1]
    if method == b"CONNECT":
        return target.lower() or None
    if not target.startswith(b"/") and target != b"*":
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            return None
        authority = rest.split(b"/", 1)[0].split(b"?", 1)[0]
        authority = authority.rpartition(b"@")[2]
        return authority.lower() or None
    host: bytes | None = None
    for line in lines[1:]:
        if not line:
            break
        name, sep, value = line.partition(b":")
        if not sep:
            return None
        if name.lower() == b"host":
            if host is not None:
                return None
            host = value.strip()
    return host.lower() if host else None
