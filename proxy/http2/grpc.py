"""gRPC facts the proxy needs: deadline parsing and the replies it generates itself.

Pure functions over bytes: no sockets, no `h2`. A proxy-generated gRPC error is a
trailers-only response (one HEADERS frame with END_STREAM), which every gRPC client reads as a
status: an HTTP error page would surface as an opaque INTERNAL/UNKNOWN error instead.
"""

from __future__ import annotations

from urllib.parse import quote

__all__ = [
    "DEADLINE_EXCEEDED",
    "INTERNAL",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "is_grpc",
    "parse_grpc_timeout",
    "status_of",
    "trailers",
    "trailers_only",
]

CANCELLED = 1
DEADLINE_EXCEEDED = 4
RESOURCE_EXHAUSTED = 8
INTERNAL = 13
UNAVAILABLE = 14

# grpc-timeout units (PROTOCOL-HTTP2.md): hours, minutes, seconds, milli, micro, nano.
_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def is_grpc(content_type: bytes | None) -> bool:
    """`application/grpc`, `application/grpc+proto`, `application/grpc-web…` are all gRPC."""
    return content_type is not None and content_type[:16].lower() == b"application/grpc"


def parse_grpc_timeout(value: bytes | None) -> float | None:
    """Seconds from a `grpc-timeout` value (`1S`, `250m`, at most 8 digits), else None.

    An invalid value is ignored rather than failing the call: the upstream applies the same
    rule, and a proxy must not be stricter than the server it fronts."""
    if not value or len(value) > 9:
        return None
    unit = _UNITS.get(value[-1])
    digits = value[:-1]
    if unit is None or not digits.isdigit():
        return None
    return int(digits) * unit


def status_of(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The `grpc-status` of a trailers-only answer's fields; None when absent or not a number."""
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() and len(value) <= 2 else None
    return None


def _message(text: str) -> bytes:
    # grpc-message is percent-encoded UTF-8 (only printable ASCII but '%' kept as is).
    return quote(text, safe=" !\"#$&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                             "[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~").encode("ascii")


def trailers(status: int, message: str) -> list[tuple[bytes, bytes]]:
    """Trailers that end a call whose response headers were already sent."""
    return [(b"grpc-status", b"%d" % status), (b"grpc-message", _message(message))]


def trailers_only(
    status: int, message: str, error: str, extra: list[tuple[bytes, bytes]] | None = None
) -> list[tuple[bytes, bytes]]:
    """A whole gRPC response in one HEADERS frame; `error` names the proxy's reason."""
    out = [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % status),
        (b"grpc-message", _message(message)),
        (b"x-forklane-error", error.encode("ascii", "replace")),
    ]
    if extra:
        out += extra
    return out
