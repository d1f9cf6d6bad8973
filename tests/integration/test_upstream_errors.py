"""Upstream failures become honest answers: 502/503/504 with a reason, or a cut connection.

- refused → 503 `upstream-connect-failed`; no answer in time → 504 `upstream-timeout`;
- reset (or garbage) before the response head → 502 `upstream-reset`; a non-idempotent
  request is never replayed on another connection;
- reset after the response head → the client connection is closed abruptly: the client can
  tell the body is incomplete, never a clean short body;
- a dead fork falls back to baseline when the fork asks for it, or answers 503
  `fork-unavailable`;
- endpoints are balanced round robin or least-request.

Every test starts its own proxy (real process) in front of recording upstreams.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.support.processes import Proc
from tests.support.rawhttp import parse_responses, read_head, read_until_closed, send_raw
from tests.support.upstream import RecordingUpstream

KEY = "carol-7"

Upstreams = Callable[[str], Any]
ProxyFactory = Callable[..., Proc]


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition with a deadline (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def closed_port() -> str:
    """An address nothing listens on (the port was just free), for connection refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def service(name: str, *endpoints: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "endpoints": list(endpoints), **extra}


def config(*services: dict[str, Any], forks: list[dict[str, Any]] | None = None
           ) -> dict[str, Any]:
    return {"version": "errors-1", "services": list(services), "forks": forks or []}


async def get(proxy: Proc, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=proxy.url()) as client:
        return await client.get(path, headers={"host": "svc", **headers})


async def metric(proxy: Proc, family: str, labels: str = "") -> float:
    async with httpx.AsyncClient(base_url=proxy.url("admin")) as admin:
        text = (await admin.get("/metrics")).text
    pattern = re.escape(family) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + " "
    for line in text.splitlines():
        if re.match(pattern, line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- refused, timeout, reset --------------------------------------------------------------------


async def test_refused_upstream_is_503_with_a_reason(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(config(service("svc", closed_port())))
    resp = await get(proxy, "/refused")
    assert resp.status_code == 503
    assert resp.headers["x-forklane-error"] == "upstream-connect-failed"
    assert "svc" in resp.text and len(resp.content) < 512
    assert await metric(proxy, "forklane_upstream_errors_total",
                        'reason="connect-failed"') >= 1


@pytest.fixture
async def held(upstreams: Upstreams) -> AsyncIterator[RecordingUpstream]:
    """An upstream that receives requests but answers only when the test ends."""
    up = await upstreams("held")
    up.behaviour.hold = asyncio.Event()
    yield up
    up.behaviour.hold.set()  # its late answers find the connections closed


async def test_upstream_timeout_is_504(held: RecordingUpstream,
                                       proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(config(service("svc", held.address, timeouts={"request": 0.3})))
    started = time.monotonic()
    resp = await get(proxy, "/slow")
    elapsed = time.monotonic() - started
    assert resp.status_code == 504
    assert resp.headers["x-forklane-error"] == "upstream-timeout"
    assert 0.25 <= elapsed < 3
    assert [r.target for r in held.requests] == ["/slow"]


async def test_reset_before_the_head_is_502(upstreams: Upstreams,
                                            proxy_factory: ProxyFactory) -> None:
    up = await upstreams("resetting")
    up.behaviour.reset_before_head = True
    proxy = proxy_factory(config(service("svc", up.address)))
    resp = await get(proxy, "/reset")
    assert resp.status_code == 502
    assert resp.headers["x-forklane-error"] == "upstream-reset"


async def test_non_idempotent_request_is_not_replayed_after_a_reset(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    up = await upstreams("resetting")
    proxy = proxy_factory(config(service("svc", up.address)))
    async with httpx.AsyncClient(base_url=proxy.url()) as client:
        warm = await client.get("/warm", headers={"host": "svc"})  # leaves a pooled connection
        assert warm.status_code == 200
        up.behaviour.reset_before_head = True
        resp = await client.post("/pay", headers={"host": "svc"}, content=b"once")
    assert resp.status_code == 502
    assert resp.headers["x-forklane-error"] == "upstream-reset"
    assert [r.target for r in up.requests].count("/pay") == 1


async def test_garbage_instead_of_a_response_is_502(proxy_factory: ProxyFactory) -> None:
    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"THIS IS NOT HTTP\r\n\r\n")
            await reader.read()  # until the proxy gives up on us
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        proxy = proxy_factory(config(service("svc", f"127.0.0.1:{port}")))
        resp = await get(proxy, "/garbage")
    finally:
        server.close()
        await server.wait_closed()
    assert resp.status_code == 502
    assert resp.headers["x-forklane-error"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_reset_after_the_head_cuts_the_client_connection(
    upstreams: Upstreams, proxy_factory: ProxyFactory, chunked: bool
) -> None:
    up = await upstreams("cut")
    up.behaviour.close_after_headers = True
    up.behaviour.chunked = chunked
    up.behaviour.body = b"x" * 10_000
    proxy = proxy_factory(config(service("svc", up.address)))

    with pytest.raises(httpx.RemoteProtocolError):
        await get(proxy, "/cut")

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports["outbound"])
    try:
        writer.write(b"GET /cut HTTP/1.1\r\nHost: svc\r\n\r\n")
        head = await read_head(reader)
        try:
            rest = await read_until_closed(reader)
        except ConnectionResetError:
            rest = b""  # an abort may arrive as a reset: just as honest
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
    assert head.startswith(b"HTTP/1.1 200 ")
    if chunked:
        assert not rest.endswith(b"0\r\n\r\n"), "the cut body was ended as if complete"
    else:
        assert len(rest) < 10_000
    # The proxy is fine afterwards and says what happened.
    assert await metric(proxy, "forklane_upstream_errors_total",
                        'reason="upstream-reset-during-body"') >= 1


# -- forks that are down ------------------------------------------------------------------------


async def test_dead_fork_with_fallback_baseline_is_answered_by_baseline(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    base = await upstreams("baseline")
    proxy = proxy_factory(config(
        service("svc", base.address),
        forks=[{"routing_key": KEY, "service": "svc", "endpoints": [closed_port()],
                "fallback": "baseline"}],
    ), "--explain-header", "x-explain")
    resp = await get(proxy, "/fallback", **{"x-forklane-routing-key": KEY, "x-explain": "1"})
    assert resp.status_code == 200
    assert resp.headers["x-upstream"] == "baseline"
    assert "fallback=baseline" in resp.headers["x-forklane-route"]
    assert [r.target for r in base.requests] == ["/fallback"]
    assert await metric(proxy, "forklane_fork_fallbacks_total") == 1


async def test_dead_fork_with_fallback_fail_is_503_fork_unavailable(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    base = await upstreams("baseline")
    proxy = proxy_factory(config(
        service("svc", base.address),
        forks=[{"routing_key": KEY, "service": "svc", "endpoints": [closed_port()],
                "fallback": "fail"}],
    ))
    resp = await get(proxy, "/no-fallback", **{"x-forklane-routing-key": KEY})
    assert resp.status_code == 503
    assert resp.headers["x-forklane-error"] == "fork-unavailable"
    assert base.requests == []
    # Without the key the baseline still answers.
    assert (await get(proxy, "/plain")).headers["x-upstream"] == "baseline"


# -- load balancing -----------------------------------------------------------------------------


async def test_round_robin_alternates_between_endpoints(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    proxy = proxy_factory(config(service("svc", a.address, b.address, lb="round_robin")))
    async with httpx.AsyncClient(base_url=proxy.url()) as client:
        order = [(await client.get(f"/rr/{i}", headers={"host": "svc"})).headers["x-upstream"]
                 for i in range(10)]
    assert order in (["a", "b"] * 5, ["b", "a"] * 5)
    assert len(a.requests) == len(b.requests) == 5


async def test_round_robin_skips_a_refused_endpoint(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    """A refused connect is retried on the other endpoint: the client never sees it."""
    a = await upstreams("a")
    proxy = proxy_factory(config(service("svc", a.address, closed_port())))
    async with httpx.AsyncClient(base_url=proxy.url()) as client:
        statuses = [(await client.get(f"/skip/{i}", headers={"host": "svc"})).status_code
                    for i in range(6)]
    assert statuses == [200] * 6
    assert len(a.requests) == 6


async def test_least_request_steers_away_from_the_busy_endpoint(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    """While one endpoint holds its requests, new ones mostly go to the idle one.

    Two random choices (with replacement, as the balancer documents) land both on the busy
    endpoint a quarter of the time; round robin would send it every second request. The seed
    makes the draws, and so this count, reproducible."""
    busy, idle = await upstreams("busy"), await upstreams("idle")
    gate = asyncio.Event()
    busy.behaviour.hold = gate
    proxy = proxy_factory(config(service("svc", busy.address, idle.address,
                                         lb="least_request")), "--seed", "7")
    port = proxy.ports["outbound"]
    total = 40
    pending: list[asyncio.Task[bytes]] = []
    try:
        for i in range(total):
            raw = b"GET /lr/%d HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n" % i
            task = asyncio.ensure_future(send_raw(port, raw))
            # Wait until this request is either answered (by idle) or held (by busy).
            def settled(task: asyncio.Task[bytes] = task, seen: int = i) -> bool:
                return task.done() or len(busy.requests) + len(idle.requests) > seen

            await wait_until(settled)
            if busy.requests and busy.requests[-1].target == f"/lr/{i}":
                pending.append(task)
            else:
                data = await task
                assert json.loads(parse_responses(data)[0].body)["upstream"] == "idle"
        assert len(busy.requests) + len(idle.requests) == total
        assert 1 <= len(busy.requests) <= total * 0.35, [r.target for r in busy.requests]
    finally:
        gate.set()
        for task in pending:
            data = await task
            assert parse_responses(data)[0].status == 200
