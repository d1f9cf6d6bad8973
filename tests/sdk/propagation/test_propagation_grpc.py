"""gRPC interceptors, sync and asyncio: the key flows from an incoming call to an outgoing one.

Chain: test client -> middle gRPC server (forklane server interceptor) -> downstream gRPC
server that answers with the metadata it received; the middle calls it through a channel
with the forklane client interceptor. Generic handlers, bytes on the wire, no codegen.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio
import pytest

from forklane.propagation.grpc import (
    AsyncClientInterceptor,
    AsyncServerInterceptor,
    ClientInterceptor,
    ServerInterceptor,
)

KEY_MD = (("x-forklane-routing-key", "sb-1"), ("baggage", "user=alice"))


def _metadata_json(context: Any) -> bytes:
    seen: dict[str, str] = {}
    for k, v in context.invocation_metadata():
        seen[k] = f"{seen[k]},{v}" if k in seen else v  # a duplicate would show as "a,b"
    return json.dumps(seen).encode()


def _echo_handler() -> grpc.GenericRpcHandler:
    def echo(request: bytes, context: Any) -> bytes:
        return _metadata_json(context)

    return grpc.method_handlers_generic_handler(
        "t.Echo", {"Call": grpc.unary_unary_rpc_method_handler(echo)}
    )


# --- sync -----------------------------------------------------------------------------


@pytest.fixture
def sync_chain() -> Iterator[str]:
    """Downstream echo and an intercepted middle, both real servers; yields the middle target."""
    pool = ThreadPoolExecutor(max_workers=8)
    downstream = grpc.server(pool)
    downstream.add_generic_rpc_handlers((_echo_handler(),))
    down_port = downstream.add_insecure_port("127.0.0.1:0")
    downstream.start()
    channel = grpc.intercept_channel(
        grpc.insecure_channel(f"127.0.0.1:{down_port}"), ClientInterceptor()
    )
    call_down = channel.unary_unary("/t.Echo/Call")

    def unary(request: bytes, context: Any) -> bytes:
        return bytes(call_down(b"", timeout=5))

    def streaming(request: bytes, context: Any) -> Iterator[bytes]:
        for _ in range(2):
            yield bytes(call_down(b"", timeout=5))

    middle = grpc.server(pool, interceptors=[ServerInterceptor()])
    middle.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.Mid",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(unary),
                    "Stream": grpc.unary_stream_rpc_method_handler(streaming),
                },
            ),
        )
    )
    mid_port = middle.add_insecure_port("127.0.0.1:0")
    middle.start()
    try:
        yield f"127.0.0.1:{mid_port}"
    finally:
        middle.stop(None).wait()
        downstream.stop(None).wait()
        channel.close()
        pool.shutdown(wait=True)


def test_sync_unary_and_streaming_forward_the_key(sync_chain: str) -> None:
    with grpc.insecure_channel(sync_chain) as ch:
        seen = json.loads(ch.unary_unary("/t.Mid/Unary")(b"", metadata=KEY_MD, timeout=5))
        assert seen["x-forklane-routing-key"] == "sb-1"
        assert seen["baggage"] == "user=alice"
        replies = list(ch.unary_stream("/t.Mid/Stream")(b"", metadata=KEY_MD, timeout=5))
        assert [json.loads(r)["x-forklane-routing-key"] for r in replies] == ["sb-1", "sb-1"]
        # the next call without a key must not inherit the previous one from a worker thread
        seen = json.loads(ch.unary_unary("/t.Mid/Unary")(b"", timeout=5))
        assert "x-forklane-routing-key" not in seen


# --- asyncio --------------------------------------------------------------------------


@pytest.fixture
async def aio_chain() -> AsyncIterator[str]:
    downstream = grpc.aio.server()
    downstream.add_generic_rpc_handlers((_echo_handler(),))
    down_port = downstream.add_insecure_port("127.0.0.1:0")
    await downstream.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{down_port}", interceptors=[AsyncClientInterceptor()]
    )
    call_down = channel.unary_unary("/t.Echo/Call")

    async def unary(request: bytes, context: Any) -> bytes:
        return bytes(await call_down(b"", timeout=5))

    async def streaming(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(2):
            yield bytes(await call_down(b"", timeout=5))

    async def explicit(request: bytes, context: Any) -> bytes:
        md = (("x-forklane-routing-key", "chosen"),)
        return bytes(await call_down(b"", metadata=md, timeout=5))

    middle = grpc.aio.server(interceptors=[AsyncServerInterceptor()])
    middle.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.Mid",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(unary),
                    "Stream": grpc.unary_stream_rpc_method_handler(streaming),
                    "Explicit": grpc.unary_unary_rpc_method_handler(explicit),
                },
            ),
        )
    )
    mid_port = middle.add_insecure_port("127.0.0.1:0")
    await middle.start()
    try:
        yield f"127.0.0.1:{mid_port}"
    finally:
        await middle.stop(None)
        await channel.close()
        await downstream.stop(None)


async def test_aio_unary_and_streaming_forward_the_key(aio_chain: str) -> None:
    async with grpc.aio.insecure_channel(aio_chain) as ch:
        seen = json.loads(await ch.unary_unary("/t.Mid/Unary")(b"", metadata=KEY_MD, timeout=5))
        assert seen["x-forklane-routing-key"] == "sb-1"
        assert seen["baggage"] == "user=alice"
        replies = [
            r async for r in ch.unary_stream("/t.Mid/Stream")(b"", metadata=KEY_MD, timeout=5)
        ]
        assert [json.loads(r)["x-forklane-routing-key"] for r in replies] == ["sb-1", "sb-1"]
        seen = json.loads(await ch.unary_unary("/t.Mid/Unary")(b"", timeout=5))
        assert "x-forklane-routing-key" not in seen


async def test_aio_client_interceptor_keeps_explicit_metadata(aio_chain: str) -> None:
    async with grpc.aio.insecure_channel(aio_chain) as ch:
        reply = await ch.unary_unary("/t.Mid/Explicit")(b"", metadata=KEY_MD, timeout=5)
        seen = json.loads(reply)
        assert seen["x-forklane-routing-key"] == "chosen"
        assert seen["baggage"] == "user=alice"
