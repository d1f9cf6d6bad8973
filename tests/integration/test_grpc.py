"""gRPC through a real proxy process: grpcio servers as baseline and fork, grpcio clients.

The servers use generic handlers over raw bytes (no generated code), run in their own threads
so both the synchronous and the asyncio client can call them from the test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest

KEY = "alice-7f3a"
OTHER_KEY = "bob-91c2"
_BIG = 16 * 1024 * 1024
_OPTIONS = [("grpc.max_receive_message_length", _BIG), ("grpc.max_send_message_length", _BIG)]


@dataclass
class Upstream:
    """A grpcio server that names itself in initial metadata and records what it saw."""

    name: str
    server: grpc.Server | None = None
    port: int = 0
    keys: list[str | None] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    streaming: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _hello(self, context: grpc.ServicerContext) -> None:
        meta = dict(context.invocation_metadata())
        self.keys.append(meta.get("x-forklane-routing-key"))  # type: ignore[arg-type]
        context.send_initial_metadata((("x-upstream", self.name),))

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._hello(context)
        return request

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._hello(context)
        count, _, size = request.decode().partition(":")
        payload = b"x" * int(size or 8)
        for i in range(int(count)):
            yield b"%d:" % i + payload

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._hello(context)
        n = total = 0
        for msg in requests:
            n += 1
            total += len(msg)
        return b"%d/%d" % (n, total)

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._hello(context)
        for msg in requests:
            yield msg[::-1]

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._hello(context)
        context.set_trailing_metadata((("x-why", "because"),))
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())

    def endless(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Streams until the call ends; records a cancellation seen from this side."""
        self._hello(context)
        context.add_callback(self.cancelled.set)
        i = 0
        while context.is_active():
            yield b"%d" % i
            i += 1
            if i == 5:
                self.streaming.set()
            if i > 5 and request == b"slow":
                self.cancelled.wait(0.01)  # pace the stream (waits on the cancellation)

    def hang(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Never answers on its own: only the call's end releases it."""
        self._hello(context)
        context.add_callback(self.cancelled.set)
        self.streaming.set()
        self.cancelled.wait(20)
        return b""

    def wait(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Answers once the test sets `release`."""
        self._hello(context)
        self.streaming.set()
        self.release.wait(20)
        return b"done"

    def start(self) -> Upstream:
        unary = grpc.unary_unary_rpc_method_handler
        handlers = {
            "Unary": unary(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Fail": unary(self.fail),
            "Endless": grpc.unary_stream_rpc_method_handler(self.endless),
            "Hang": unary(self.hang),
            "Wait": unary(self.wait),
        }
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=_OPTIONS)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", handlers),)
        )
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.server = server
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(None)
            self.server = None


@pytest.fixture
def grpc_mesh(proxy_factory: Callable[..., Any]) -> Iterator[dict[str, Any]]:
    base, fork = Upstream("greeter").start(), Upstream("greeter-fork").start()
    doc = {
        "version": "g1",
        "services": [
            {"name": "greeter", "endpoints": [base.address]},
            {"name": "ghost", "endpoints": ["127.0.0.1:1"]},
        ],
        "forks": [
            {"routing_key": KEY, "service": "greeter", "endpoints": [fork.address]},
            {"routing_key": OTHER_KEY, "service": "ghost", "endpoints": ["127.0.0.1:1"]},
        ],
    }
    proc = proxy_factory(doc)
    try:
        yield {"base": base, "fork": fork, "proc": proc,
               "target": f"127.0.0.1:{proc.ports['outbound']}"}
    finally:
        base.stop()
        fork.stop()


def _channel(target: str, authority: str = "greeter") -> grpc.Channel:
    return grpc.insecure_channel(
        target, options=[("grpc.default_authority", authority), *_OPTIONS])


def _aio_channel(target: str, authority: str = "greeter") -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target, options=[("grpc.default_authority", authority), *_OPTIONS])


def _upstream_of(call: Any) -> str:
    return dict(call.initial_metadata())["x-upstream"]  # type: ignore[no-any-return]


ROUTING_CASES = [
    ("no key", (), "greeter"),
    ("header key", (("x-forklane-routing-key", KEY),), "greeter-fork"),
    ("baggage key", (("baggage", f"user=1,forklane-routing-key={KEY}"),), "greeter-fork"),
    ("other service's key", (("x-forklane-routing-key", OTHER_KEY),), "greeter"),
    ("unknown key", (("x-forklane-routing-key", "nobody-000"),), "greeter"),
]


def test_unary_is_routed_by_the_key_in_metadata(grpc_mesh: dict[str, Any]) -> None:
    with _channel(grpc_mesh["target"]) as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        for case, metadata, expected in ROUTING_CASES:
            reply, call = unary.with_call(b"ping", metadata=metadata, timeout=10)
            assert reply == b"ping", case
            assert _upstream_of(call) == expected, case
            assert call.code() == grpc.StatusCode.OK, case
    # the fork saw the key in the header carrier even when it came in baggage
    assert grpc_mesh["fork"].keys == [KEY, KEY]
    assert grpc_mesh["base"].keys == [None, OTHER_KEY, "nobody-000"]


async def test_all_four_call_types_with_the_asyncio_client(grpc_mesh: dict[str, Any]) -> None:
    meta = (("x-forklane-routing-key", KEY),)
    async with _aio_channel(grpc_mesh["target"]) as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        assert await unary(b"hello", metadata=meta, timeout=10) == b"hello"

        server_stream = channel.unary_stream("/test.Echo/ServerStream")
        call = server_stream(b"2000:100", metadata=meta, timeout=20)
        got = [msg async for msg in call]
        assert len(got) == 2000 and got[-1].startswith(b"1999:")
        assert dict(await call.initial_metadata())["x-upstream"] == "greeter-fork"

        client_stream = channel.stream_unary("/test.Echo/ClientStream")
        reply = await client_stream((b"y" * 1000 for _ in range(2000)), metadata=meta,
                                    timeout=20)
        assert reply == b"2000/2000000"

        bidi = channel.stream_stream("/test.Echo/Bidi")
        stream = bidi(metadata=meta, timeout=20)
        for i in range(200):
            await stream.write(b"msg-%d" % i)
            assert await stream.read() == (b"msg-%d" % i)[::-1]
        await stream.done_writing()
        assert await stream.code() == grpc.StatusCode.OK
    assert grpc_mesh["base"].keys == []


def test_large_messages_cross_both_windows(grpc_mesh: dict[str, Any]) -> None:
    big = bytes(range(256)) * (4 * 4096)  # 4 MiB, far above every flow-control window
    with _channel(grpc_mesh["target"]) as channel:
        assert channel.unary_unary("/test.Echo/Unary")(big, timeout=20) == big
        chunks = list(channel.unary_stream("/test.Echo/ServerStream")(
            b"4:%d" % (2 * 1024 * 1024), timeout=20))
        assert [len(c) for c in chunks] == [2 * 1024 * 1024 + 2] * 4
        reply = channel.stream_unary("/test.Echo/ClientStream")(
            (big for _ in range(3)), timeout=20)
        assert reply == b"3/%d" % (3 * len(big))


def test_status_message_and_trailers_pass_through(grpc_mesh: dict[str, Any]) -> None:
    with _channel(grpc_mesh["target"]) as channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/test.Echo/Fail")(b"widget", timeout=10)
    call: Any = err.value
    assert call.code() == grpc.StatusCode.NOT_FOUND
    assert call.details() == "no such thing: widget"
    assert ("x-why", "because") in tuple(call.trailing_metadata())


def test_proxy_errors_are_grpc_statuses(grpc_mesh: dict[str, Any]) -> None:
    target = grpc_mesh["target"]
    with _channel(target, authority="nowhere.example") as channel, \
            pytest.raises(grpc.RpcError) as no_route:
        channel.unary_unary("/test.Echo/Unary")(b"x", timeout=10)
    assert no_route.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "no service" in no_route.value.details()  # type: ignore[attr-defined]
    with _channel(target, authority="ghost") as channel, pytest.raises(grpc.RpcError) as dead:
        channel.unary_unary("/test.Echo/Unary")(
            b"x", metadata=(("x-forklane-routing-key", OTHER_KEY),), timeout=10)
    assert dead.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "not reachable" in dead.value.details()  # type: ignore[attr-defined]


def test_deadline_ends_the_call_and_reaches_the_upstream(grpc_mesh: dict[str, Any]) -> None:
    base = grpc_mesh["base"]
    with _channel(grpc_mesh["target"]) as channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/test.Echo/Hang")(b"", timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert base.cancelled.wait(5), "the upstream call was never cancelled"


def test_client_cancellation_reaches_the_upstream(grpc_mesh: dict[str, Any]) -> None:
    base = grpc_mesh["base"]
    with _channel(grpc_mesh["target"]) as channel:
        call: Any = channel.unary_stream("/test.Echo/Endless")(b"slow", timeout=20)
        for _ in range(5):
            next(call)
        call.cancel()
        assert call.code() == grpc.StatusCode.CANCELLED
    assert base.cancelled.wait(5), "the upstream stream was never cancelled"


async def test_upstream_cancelling_mid_stream_reaches_the_client(
    grpc_mesh: dict[str, Any],
) -> None:
    """The other direction: the server ends a stream with CANCELLED half-way."""
    fork = grpc_mesh["fork"]
    async with _aio_channel(grpc_mesh["target"]) as channel:
        call = channel.unary_stream("/test.Echo/Endless")(
            b"slow", metadata=(("x-forklane-routing-key", KEY),), timeout=20)
        seen = 0
        stopper = threading.Thread(target=fork.stop)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                seen += 1
                if seen == 10:
                    # stop the server with no grace: every in-flight call is cancelled
                    stopper.start()
    stopper.join()
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def test_upstream_dying_mid_stream_is_unavailable_not_a_hang(
    grpc_mesh: dict[str, Any],
) -> None:
    base = grpc_mesh["base"]
    with _channel(grpc_mesh["target"]) as channel:
        call: Any = channel.unary_stream("/test.Echo/Endless")(b"slow", timeout=20)
        for _ in range(5):
            next(call)
        base.server.stop(0)  # hard stop: connection torn down under the stream
        with pytest.raises(grpc.RpcError) as err:
            for _ in call:
                pass
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_upstream_goaway_lets_calls_in_flight_finish(grpc_mesh: dict[str, Any]) -> None:
    """A graceful upstream shutdown (GOAWAY) does not cut the calls it already took."""
    base = grpc_mesh["base"]
    with _channel(grpc_mesh["target"]) as channel:
        future: Any = channel.unary_unary("/test.Echo/Wait").future(b"", timeout=20)
        assert base.streaming.wait(10)
        assert base.server is not None
        stopped = base.server.stop(grace=15)  # GOAWAY now, in-flight calls may finish
        base.release.set()
        assert future.result() == b"done"
        assert stopped.wait(10)
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/test.Echo/Unary")(b"x", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
