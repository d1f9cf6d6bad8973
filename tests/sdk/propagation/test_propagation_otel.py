"""OpenTelemetry baggage helpers: the key goes into OTel baggage and comes back."""

from __future__ import annotations

import pytest
from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator

from forklane.propagation import routing_context
from forklane.propagation.otel import (
    context_from_otel,
    routing_key_baggage,
    routing_key_from_otel,
    set_routing_key_baggage,
)


def test_set_and_read_back_through_the_w3c_propagator() -> None:
    ctx = set_routing_key_baggage("sb-1", baggage.set_baggage("user", "alice"))
    carrier: dict[str, str] = {}
    W3CBaggagePropagator().inject(carrier, context=ctx)
    received = W3CBaggagePropagator().extract(carrier)
    assert routing_key_from_otel(received) == "sb-1"
    assert baggage.get_baggage("user", received) == "alice"
    from_otel = context_from_otel(received)
    assert from_otel is not None and from_otel.key == "sb-1"


def test_invalid_keys_are_neither_written_nor_read() -> None:
    with pytest.raises(ValueError):
        set_routing_key_baggage("a b")
    assert routing_key_from_otel(baggage.set_baggage("forklane-routing-key", "a b")) is None
    assert context_from_otel(baggage.set_baggage("other", "x")) is None


def test_scope_uses_the_forklane_key_and_restores_the_context() -> None:
    assert routing_key_from_otel() is None
    with routing_context("sb-9"), routing_key_baggage() as key:
        assert key == "sb-9"
        assert routing_key_from_otel() == "sb-9"
    assert routing_key_from_otel() is None
    with routing_key_baggage() as key:
        assert key is None
        assert routing_key_from_otel() is None
