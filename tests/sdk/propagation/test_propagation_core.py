"""The routing context core: capture from incoming headers, add to outgoing ones."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forklane.propagation import (
    RoutingContext,
    context_from_headers,
    current_routing_key,
    outgoing_headers,
    routing_context,
)


@pytest.mark.parametrize(
    ("pairs", "key"),
    [
        ([("X-Forklane-Routing-Key", "sb-1")], "sb-1"),
        ([("baggage", "user=alice, forklane-routing-key = sb-1;p")], "sb-1"),
        ([("baggage", "user=alice"), ("baggage", "forklane-routing-key=sb-1")], "sb-1"),
        ([("baggage", "sd-routing-key=sb-1")], "sb-1"),
        ([("uberctx-sd-routing-key", "sb-1")], "sb-1"),
        ([("ot-baggage-sd-routing-key", "sb-1")], "sb-1"),
        ([("x-forklane-routing-key", "sb-1"), ("baggage", "forklane-routing-key=sb-1")], "sb-1"),
        # disagreement: no key, the sidecar sends such requests to the baseline
        ([("x-forklane-routing-key", "sb-1"), ("baggage", "forklane-routing-key=sb-2")], None),
        ([("x-forklane-routing-key", "sb-1"), ("x-forklane-routing-key", "sb-2")], None),
        ([("x-forklane-routing-key", "-not a key")], None),
        ([("x-forklane-routing-key", "sb-1\r\nx: y")], None),  # unsafe value not captured
        ([("other", "sb-1")], None),
        ([], None),
    ],
)
def test_context_from_headers(pairs: list[tuple[str, str]], key: str | None) -> None:
    assert context_from_headers(pairs).key == key


def test_forwards_raw_carriers_and_the_key_header() -> None:
    ctx = context_from_headers(
        [("Baggage", "user=alice"), ("baggage", "forklane-routing-key=sb-1"), ("Host", "x")]
    )
    assert dict(ctx.headers) == {
        "baggage": "user=alice,forklane-routing-key=sb-1",
        "x-forklane-routing-key": "sb-1",
    }


def test_outgoing_headers_never_override_the_app() -> None:
    with routing_context(
        context_from_headers({"x-forklane-routing-key": "sb-1", "baggage": "a=1"})
    ):
        assert outgoing_headers(["Baggage"]) == {"x-forklane-routing-key": "sb-1"}
    assert outgoing_headers() == {}


def test_routing_context_for_a_bare_key_and_nesting() -> None:
    assert current_routing_key() is None
    with routing_context("sb-1"):
        assert outgoing_headers() == {"x-forklane-routing-key": "sb-1"}
        with routing_context(None):
            assert current_routing_key() is None
        assert current_routing_key() == "sb-1"
    assert current_routing_key() is None
    with pytest.raises(ValueError):
        RoutingContext.for_key("not a key")


async def test_context_follows_tasks_and_threads() -> None:
    async def in_task() -> str | None:
        await asyncio.sleep(0)
        return current_routing_key()

    with routing_context("sb-1"):
        task = asyncio.create_task(in_task())
        in_thread = await asyncio.to_thread(current_routing_key)
    assert await task == "sb-1"
    assert in_thread == "sb-1"


names = st.sampled_from(["x-forklane-routing-key", "baggage", "uberctx-sd-routing-key", "Host"])


@given(st.lists(st.tuples(names, st.text(max_size=200)), max_size=6))
def test_capture_never_raises_and_never_forwards_cr_lf_nul(pairs: list[tuple[str, str]]) -> None:
    with routing_context(context_from_headers(pairs)):
        for name, value in outgoing_headers().items():
            assert not any(c in name + value for c in "\r\n\x00")
