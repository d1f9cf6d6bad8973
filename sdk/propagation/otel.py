"""OpenTelemetry baggage helpers: put the routing key where instrumented apps carry it.

An app instrumented with OpenTelemetry propagates baggage on every outgoing call through
its configured propagators, with no forklane code at the call sites. These helpers put the
routing key into OpenTelemetry baggage (member `forklane-routing-key`) and read it back.

Invariants: only valid routing keys are written (they need no percent-encoding, so
OpenTelemetry's `+`-as-space decoding cannot alter them); nothing here touches the global
propagator configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import baggage, context

from forklane.propagation._context import (
    BAGGAGE_MEMBER,
    RoutingContext,
    current_routing_key,
    is_routing_key,
)

__all__ = [
    "context_from_otel",
    "routing_key_baggage",
    "routing_key_from_otel",
    "set_routing_key_baggage",
]


def set_routing_key_baggage(key: str, ctx: context.Context | None = None) -> context.Context:
    """A new OpenTelemetry context whose baggage carries `key`; ValueError for a bad key."""
    if not is_routing_key(key):
        raise ValueError(f"invalid routing key {key!r}")
    return baggage.set_baggage(BAGGAGE_MEMBER, key, ctx)


def routing_key_from_otel(ctx: context.Context | None = None) -> str | None:
    """The routing key in OpenTelemetry baggage, if it is a valid one."""
    value = baggage.get_baggage(BAGGAGE_MEMBER, ctx)
    return value if isinstance(value, str) and is_routing_key(value) else None


def context_from_otel(ctx: context.Context | None = None) -> RoutingContext | None:
    """A forklane routing context from OpenTelemetry baggage (for the forklane clients)."""
    key = routing_key_from_otel(ctx)
    return None if key is None else RoutingContext.for_key(key)


@contextmanager
def routing_key_baggage(key: str | None = None) -> Iterator[str | None]:
    """Attach baggage with `key` (default: the current forklane key) inside the block.

    With no key anywhere, the OpenTelemetry context is left as it is.
    """
    key = current_routing_key() if key is None else key
    if key is None:
        yield None
        return
    token = context.attach(set_routing_key_baggage(key))
    try:
        yield key
    finally:
        context.detach(token)
