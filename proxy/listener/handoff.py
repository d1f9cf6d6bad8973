"""Which protocol module takes a connection: pure checks on what TLS negotiated and on the
first bytes a client sent.

A connection starts on the HTTP/1.1 module; it moves to HTTP/2 when TLS negotiated ALPN `h2`
or when its first bytes are the HTTP/2 connection preface (h2c with prior knowledge,
RFC 9113 §3.4). The HTTP/2 module checks the whole preface itself.
"""

from __future__ import annotations

from forklane.proxy.listener.detect import PREFACE

__all__ = ["PREFACE", "alpn_is_h2", "may_be_h2c", "undecided"]


def may_be_h2c(first: bytes) -> bool:
    """True when a connection's first bytes start the HTTP/2 preface. Three bytes decide: no
    HTTP/1.1 method is `PRI` (see `undecided` for fewer)."""
    return first[:3] == b"PRI"


def undecided(first: bytes) -> bool:
    """True for first bytes too short to tell: `P` and `PR` begin `PRI` and also `POST`,
    `PUT`, `PATCH`, `PROPFIND`, so the listener waits for the third byte."""
    return len(first) < 3 and PREFACE.startswith(first)


def alpn_is_h2(ssl_object: object | None) -> bool:
    """True when TLS negotiated HTTP/2."""
    if ssl_object is None:
        return False
    selected = getattr(ssl_object, "selected_alpn_protocol", None)
    return selected is not None and selected() == "h2"
