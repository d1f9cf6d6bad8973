"""The routing context of the current request, carried by `contextvars`.

A service's server-side helper captures the routing key and the raw carrier headers of the
incoming request into a `RoutingContext` and makes it current for the handler; client-side
helpers read it and add the carrier headers to every outgoing request. `contextvars` follow
asyncio tasks and `asyncio.to_thread`, so the key survives async code.

Invariants:
- only carrier headers are captured (`FORWARDED_HEADERS`), and only values of visible ASCII
  plus space and tab: nothing captured can put CR, LF or NUL into an outgoing request;
- a header the outgoing request already has is never overwritten: the app's choice wins;
- two different valid keys in the carriers make the key `None` (the sidecar routes such a
  request to the baseline); the raw headers are still forwarded unchanged;
- this module imports no HTTP or RPC library (the integrations do), and nothing of the proxy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

__all__ = [
    "BAGGAGE_MEMBER",
    "FORWARDED_HEADERS",
    "ROUTING_KEY_HEADER",
    "RoutingContext",
    "activate",
    "context_from_headers",
    "current_context",
    "current_routing_key",
    "deactivate",
    "is_routing_key",
    "outgoing_headers",
    "routing_context",
]

ROUTING_KEY_HEADER = "x-forklane-routing-key"
BAGGAGE_MEMBER = "forklane-routing-key"
# Carrier headers a service forwards as received; compatibility headers are included so a
# team migrating from another sandbox tool keeps working without touching its code.
FORWARDED_HEADERS: tuple[str, ...] = (
    ROUTING_KEY_HEADER,
    "baggage",
    "uberctx-sd-routing-key",
    "ot-baggage-sd-routing-key",
)
_COMPAT_BAGGAGE_MEMBER = "sd-routing-key"
_FORWARDED = frozenset(FORWARDED_HEADERS)
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")
_SAFE_VALUE = re.compile(r"[\x20-\x7e\t]*")


def is_routing_key(text: str) -> bool:
    """True when `text` is a whole, valid routing key."""
    return _KEY_RE.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """A routing key (or None) and the raw carrier headers to forward, lowercase names."""

    key: str | None
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def for_key(cls, key: str) -> RoutingContext:
        """A context that only carries `key` (for code that starts a request chain)."""
        if not is_routing_key(key):
            raise ValueError(f"invalid routing key {key!r}")
        return cls(key, {ROUTING_KEY_HEADER: key})


_current: ContextVar[RoutingContext | None] = ContextVar("forklane_routing", default=None)


def current_context() -> RoutingContext | None:
    """The routing context of the request being handled, if any."""
    return _current.get()


def current_routing_key() -> str | None:
    """The routing key of the request being handled, if any."""
    ctx = _current.get()
    return None if ctx is None else ctx.key


def activate(ctx: RoutingContext | None) -> Token[RoutingContext | None]:
    """Make `ctx` current; pass the token to `deactivate` in the same context."""
    return _current.set(ctx)


def deactivate(token: Token[RoutingContext | None]) -> None:
    """Restore what was current before the matching `activate`."""
    _current.reset(token)


@contextmanager
def routing_context(ctx: RoutingContext | str | None) -> Iterator[RoutingContext | None]:
    """Make `ctx` (or a context for a bare key) current inside the `with` block."""
    value = RoutingContext.for_key(ctx) if isinstance(ctx, str) else ctx
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)


def _member_values(baggage: str, name: str) -> list[str]:
    """Values of baggage members called `name` that are bare routing keys.

    A small reading of W3C Baggage: routing keys never need percent-encoding, so a value
    that is not a bare key (or a member with a malformed shape) is simply not a key here.
    """
    out: list[str] = []
    for member in baggage.split(","):
        head = member.split(";", 1)[0]
        key, sep, value = head.partition("=")
        if sep and key.strip(" \t") == name:
            value = value.strip(" \t")
            if _KEY_RE.fullmatch(value):
                out.append(value)
    return out


def _header_values(value: str) -> list[str]:
    return [part.strip(" \t") for part in value.split(",") if _KEY_RE.fullmatch(part.strip(" \t"))]


def context_from_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> RoutingContext:
    """Capture the key and the carrier headers of an incoming request.

    Accepts a mapping or `(name, value)` pairs (repeated names, any case, as HTTP and gRPC
    metadata deliver them); repeated fields are combined with `,` in order.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    raw: dict[str, str] = {}
    for name, value in pairs:
        lname = name.lower()
        if lname not in _FORWARDED or not isinstance(value, str):
            continue
        if not _SAFE_VALUE.fullmatch(value):
            continue
        raw[lname] = f"{raw[lname]},{value}" if lname in raw else value
    keys: list[str] = []
    if ROUTING_KEY_HEADER in raw:
        keys += _header_values(raw[ROUTING_KEY_HEADER])
    if "baggage" in raw:
        keys += _member_values(raw["baggage"], BAGGAGE_MEMBER)
        keys += _member_values(raw["baggage"], _COMPAT_BAGGAGE_MEMBER)
    for name in ("uberctx-sd-routing-key", "ot-baggage-sd-routing-key"):
        if name in raw:
            keys += _header_values(raw[name])
    distinct = set(keys)
    key = keys[0] if len(distinct) == 1 else None
    if key is not None:
        raw[ROUTING_KEY_HEADER] = key
    return RoutingContext(key, raw)


def outgoing_headers(present: Iterable[str] = ()) -> dict[str, str]:
    """Carrier headers to add to an outgoing request, skipping names in `present`."""
    ctx = _current.get()
    if ctx is None or not ctx.headers:
        return {}
    have = {name.lower() for name in present}
    return {name: value for name, value in ctx.headers.items() if name not in have}
