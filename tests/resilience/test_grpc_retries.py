"""gRPC calls retried on a gRPC status (`retry_on: [unavailable, ...]`) through a real proxy
process to a real grpcio server: only trailers-only answers (nothing reached the client yet),
only when the whole request fit the replay buffer, within `attempts`; any other status is
passed on as it came. Run in both hot-path modes by the suite (`FORKLANE_HOT_PATH`)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import httpx
import pytest

from tests.support.processes import Proc

ProxyFactory = Callable[..., Proc]
_OPTIONS = [("grpc.max_receive_message_length", 1 << 22),
            ("grpc.max_send_message_length", 1 << 22)]


class Flaky:
    """A grpcio server whose calls fail with `code` (trailers-only: no metadata, no message
    first) until `failures` calls have failed, then echo the request."""

    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
                 ) -> None:
        self.failures = failures
        self.code = code
        self.calls = 0
        self.bodies: list[int] = []  # request sizes seen, per call
        self.lock = threading.Lock()
        self.server: grpc.Server | None = None
        self.port = 0

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.calls += 1
            self.bodies.append(len(request))
            failing = self.calls <= self.failures
        if failing:
            context.abort(self.code, "not now")
        return request

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return self.unary(b"".join(requests), context)

    def start(self) -> Flaky:
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "Collect": grpc.stream_unary_rpc_method_handler(self.client_stream),
        }
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=_OPTIONS)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Flaky", handlers),))
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.server = server
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(None)


@pytest.fixture
def flaky() -> Iterator[Callable[..., Flaky]]:
    started: list[Flaky] = []

    def make(failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> Flaky:
        server = Flaky(failures, code).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def proxy_for(proxy_factory: ProxyFactory, server: Flaky, **policy: Any) -> Proc:
    retry = {"attempts": 3, "retry_on": ["unavailable", "resource-exhausted"], **policy}
    return proxy_factory({"version": "grpc-retry", "services": [
        {"name": "flaky", "endpoints": [f"127.0.0.1:{server.port}"], "retry_policy": retry}]})


def call(proxy: Proc, body: bytes, method: str = "Unary") -> tuple[grpc.StatusCode, bytes]:
    target = f"127.0.0.1:{proxy.ports['outbound']}"
    with grpc.insecure_channel(target, options=[("grpc.default_authority", "flaky"),
                                                *_OPTIONS]) as channel:
        try:
            if method == "Unary":
                reply = channel.unary_unary("/test.Flaky/Unary")(body, timeout=20)
            else:
                pieces = [body[i:i + 4096] for i in range(0, len(body), 4096)]
                reply = channel.stream_unary("/test.Flaky/Collect")(iter(pieces), timeout=20)
        except grpc.RpcError as exc:
            return exc.code(), b""
    return grpc.StatusCode.OK, reply


async def retries_counted(proxy: Proc, label: str) -> float:
    async with httpx.AsyncClient(base_url=proxy.url("admin")) as admin:
        text = (await admin.get("/metrics")).text
    pattern = r'forklane_upstream_retries_total\{status="' + re.escape(label) + r'"\} '
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if re.match(pattern, line))


@pytest.mark.parametrize("method", ["Unary", "Collect"])
async def test_unavailable_is_retried_until_the_call_succeeds(
    proxy_factory: ProxyFactory, flaky: Callable[..., Flaky], method: str
) -> None:
    server = flaky(2)
    proxy = proxy_for(proxy_factory, server)
    body = b"p" * 20_000  # several DATA frames (and, streamed, several messages' worth)
    code, reply = call(proxy, body, method)
    assert (code, reply) == (grpc.StatusCode.OK, body)
    assert server.calls == 3  # two UNAVAILABLE, then the one that answered
    assert server.bodies == [len(body)] * 3  # each retry carried the whole request again
    assert await retries_counted(proxy, "grpc-unavailable") == 2


async def test_attempts_bound_the_retries(
    proxy_factory: ProxyFactory, flaky: Callable[..., Flaky]
) -> None:
    server = flaky(10)
    proxy = proxy_for(proxy_factory, server, attempts=2)
    code, _ = call(proxy, b"x")
    assert code == grpc.StatusCode.UNAVAILABLE  # the last answer, as it came
    assert server.calls == 3


async def test_a_status_not_named_is_passed_through(
    proxy_factory: ProxyFactory, flaky: Callable[..., Flaky]
) -> None:
    server = flaky(1, grpc.StatusCode.INTERNAL)
    proxy = proxy_for(proxy_factory, server)
    code, _ = call(proxy, b"x")
    assert code == grpc.StatusCode.INTERNAL
    assert server.calls == 1


async def test_a_request_larger_than_the_buffer_is_not_retried_nor_failed(
    proxy_factory: ProxyFactory, flaky: Callable[..., Flaky]
) -> None:
    server = flaky(1)
    proxy = proxy_for(proxy_factory, server, per_request_buffer_limit_bytes=16_384)
    code, _ = call(proxy, b"b" * 100_000)
    assert code == grpc.StatusCode.UNAVAILABLE  # the upstream's own answer, not a proxy error
    assert server.calls == 1
    code, reply = call(proxy, b"b" * 100_000)  # the next call simply goes through
    assert (code, len(reply)) == (grpc.StatusCode.OK, 100_000)


async def test_without_grpc_words_a_grpc_status_is_not_retried(
    proxy_factory: ProxyFactory, flaky: Callable[..., Flaky]
) -> None:
    server = flaky(1)
    proxy = proxy_for(proxy_factory, server, retry_on=["5xx"])
    code, _ = call(proxy, b"x")
    assert code == grpc.StatusCode.UNAVAILABLE
    assert server.calls == 1
