"""What a producer puts on a message, and what a consumer restores from it.

A message carries the key in the same carriers as an HTTP request: the raw carrier headers the
service received (so compatibility formats keep flowing), plus `x-forklane-routing-key` and
the W3C `baggage` member `forklane-routing-key` when a key is current. Members of an existing
`baggage` that are not ours are kept, in order. Nothing is added when no key is current.

The consumer side turns message headers back into a `RoutingContext`, so the handler's own
HTTP and gRPC calls carry the key through the propagation middlewares and hooks.

Pure: no broker client is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping

from forklane.propagation import (
    BAGGAGE_MEMBER,
    ROUTING_KEY_HEADER,
    RoutingContext,
    context_from_headers,
    current_context,
)

__all__ = ["HOPS_HEADER", "context_for_message", "producer_headers"]

HOPS_HEADER = "x-forklane-hops"  # how often a message was handed on to its owner


def _with_member(baggage: str | None, key: str) -> str:
    ours = f"{BAGGAGE_MEMBER}={key}"
    if not baggage:
        return ours
    rest = [m for m in baggage.split(",")
            if m.strip(" \t") and m.partition("=")[0].strip(" \t") != BAGGAGE_MEMBER]  # fmt: skip
    return ",".join([ours, *(m.strip(" \t") for m in rest)])


def producer_headers(
    ctx: RoutingContext | None = None, present: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Headers to add to an outgoing message for `ctx` (default: the current context).

    Names in `present` (the message's own headers, any case) are left alone, except `baggage`,
    which gets our member put first, as the sidecars do.
    """
    ctx = current_context() if ctx is None else ctx
    if ctx is None:
        return {}
    have = {name.lower(): value for name, value in (present or {}).items()}
    out = {name: value for name, value in ctx.headers.items() if name not in have}
    if ctx.key is not None:
        if ROUTING_KEY_HEADER not in have:
            out[ROUTING_KEY_HEADER] = ctx.key
        out["baggage"] = _with_member(have.get("baggage", ctx.headers.get("baggage")), ctx.key)
    return out


def context_for_message(headers: Mapping[str, str], key: str | None) -> RoutingContext:
    """The context a handler runs in: the carrier headers to forward, and the key the
    consumer's verdict read (None: the handler's calls carry no key)."""
    captured = context_from_headers(headers)
    raw = dict(captured.headers)
    if key is None:
        raw.pop(ROUTING_KEY_HEADER, None)
        return RoutingContext(None, raw)
    raw[ROUTING_KEY_HEADER] = key
    return RoutingContext(key, raw)
