"""Circuit breakers and passive health, configured per destination in the routing snapshot,
against real upstreams through a real proxy process, over HTTP/1.1 and HTTP/2.

- over `max_requests` in flight a request is answered 503 `circuit-open` at once, the
  breaker shows in /metrics and /config, and it closes again when the load goes;
- over `max_connections` (no idle connection to take) the same;
- `max_retries: 0` turns the connect retry on another endpoint off (counted as an overflow);
- `consecutive5xx` ejects an endpoint for `base_ejection_seconds`, and it comes back;
  `max_ejection_percent` keeps the rest in.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.integration.test_http2 import H2Upstream, _UpConn
from tests.support.polling import eventually
from tests.support.processes import Proc
from tests.support.upstream import RecordingUpstream

Upstreams = Callable[[str], Any]
ProxyFactory = Callable[..., Proc]


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def config(*endpoints: str, **extra: Any) -> dict[str, Any]:
    return {"version": "circuit-1",
            "services": [{"name": "svc", "endpoints": list(endpoints), **extra}]}


def client(proxy: Proc, protocol: str) -> httpx.AsyncClient:
    if protocol == "h2":
        return httpx.AsyncClient(base_url=proxy.url(), http1=False, http2=True, timeout=10)
    return httpx.AsyncClient(base_url=proxy.url(), timeout=10)


async def metrics(proxy: Proc) -> str:
    async with httpx.AsyncClient(base_url=proxy.url("admin")) as admin:
        return (await admin.get("/metrics")).text


def sample(text: str, family: str, labels: str) -> float:
    pattern = re.escape(family) + r"\{" + re.escape(labels) + r"\} "
    for line in text.splitlines():
        if re.match(pattern, line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def upstream_report(proxy: Proc) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=proxy.url("admin")) as admin:
        report: dict[str, Any] = (await admin.get("/config")).json()["upstreams"]
    return report


@pytest.fixture
async def held(upstreams: Upstreams) -> AsyncIterator[RecordingUpstream]:
    up = await upstreams("held")
    up.behaviour.hold = asyncio.Event()
    yield up
    up.behaviour.hold.set()


class HeldUpstream:
    """One interface over the HTTP/1.1 and the h2c test upstream: answers wait for `release`."""

    def __init__(self, h1: RecordingUpstream | None, h2: H2Upstream | None) -> None:
        self.h1, self.h2 = h1, h2
        self.release = asyncio.Event()
        if h1 is not None:
            h1.behaviour.hold = self.release
        if h2 is not None:
            h2.behaviour = self._hold

    async def _hold(self, conn: _UpConn, sid: int, headers: dict[str, str]) -> None:
        await self.release.wait()

    @property
    def address(self) -> str:
        up = self.h1 or self.h2
        assert up is not None
        return up.address

    def seen(self) -> int:
        return len(self.h1.requests) if self.h1 is not None else len(self.h2.seen if self.h2
                                                                       else [])


@pytest.fixture(params=["h1", "h2"])
async def held_any(request: pytest.FixtureRequest, upstreams: Upstreams
                   ) -> AsyncIterator[tuple[str, HeldUpstream]]:
    if request.param == "h1":
        up = HeldUpstream(await upstreams("held"), None)
        yield "h1", up
        up.release.set()
        return
    h2 = await H2Upstream("held").start()
    up = HeldUpstream(None, h2)
    yield "h2", up
    up.release.set()
    await h2.aclose()


async def test_max_requests_opens_the_circuit_and_it_closes_again(
    held_any: tuple[str, HeldUpstream], proxy_factory: ProxyFactory
) -> None:
    protocol, held = held_any
    proxy = proxy_factory(config(held.address, circuit_breakers={"max_requests": 2}))
    async with client(proxy, protocol) as c1, client(proxy, protocol) as c2, \
            client(proxy, protocol) as c3:
        first = asyncio.ensure_future(c1.get("/1", headers={"host": "svc"}))
        second = asyncio.ensure_future(c2.get("/2", headers={"host": "svc"}))
        # The h2c upstream counts a request once its stream ended (both are GETs).
        await eventually(lambda: held.seen() == 2, within=5)
        refused = await c3.get("/3", headers={"host": "svc"})
        assert refused.status_code == 503
        assert refused.headers["x-forklane-error"] == "circuit-open"
        assert "max_requests" in refused.text
        assert held.seen() == 2  # the refused one never reached the upstream
        text = await metrics(proxy)
        dest = 'destination="baseline/svc"'
        assert sample(text, "forklane_circuit_open", dest) == 1
        assert sample(text, "forklane_circuit_requests_active", dest) == 2
        assert sample(text, "forklane_circuit_overflows_total",
                      dest + ',limit="max_requests"') == 1
        report = await upstream_report(proxy)
        assert report["circuits"]["baseline/svc"]["open"] is True
        assert report["circuits"]["baseline/svc"]["limits"]["max_requests"] == 2

        held.release.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200
        assert (await c3.get("/4", headers={"host": "svc"})).status_code == 200
    text = await metrics(proxy)
    assert sample(text, "forklane_circuit_open", 'destination="baseline/svc"') == 0
    assert sample(text, "forklane_circuit_requests_active", 'destination="baseline/svc"') == 0


async def test_max_connections_refuses_a_request_that_needs_a_new_connection(
    held: RecordingUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(config(held.address, circuit_breakers={"max_connections": 1}))
    assert held.behaviour.hold is not None
    async with client(proxy, "h1") as c1, client(proxy, "h1") as c2:
        first = asyncio.ensure_future(c1.get("/1", headers={"host": "svc"}))
        await eventually(lambda: len(held.requests) == 1, within=5)
        refused = await c2.get("/2", headers={"host": "svc"})
        assert refused.status_code == 503
        assert refused.headers["x-forklane-error"] == "circuit-open"
        assert held.connections == 1
        held.behaviour.hold.set()
        assert (await first).status_code == 200
        # The one connection is idle in the pool again: the next request takes it.
        assert (await c2.get("/3", headers={"host": "svc"})).status_code == 200
    assert held.connections == 1
    text = await metrics(proxy)
    assert sample(text, "forklane_circuit_overflows_total",
                  'destination="baseline/svc",limit="max_connections"') == 1


@pytest.mark.parametrize("max_retries", [0, 3])
async def test_max_retries_bounds_the_retry_on_another_endpoint(
    upstreams: Upstreams, proxy_factory: ProxyFactory, max_retries: int
) -> None:
    good = await upstreams("good")
    proxy = proxy_factory(config(closed_port(), good.address,
                                 circuit_breakers={"max_retries": max_retries}))
    async with client(proxy, "h1") as c:
        # Round robin starts with the closed endpoint.
        answer = await c.get("/", headers={"host": "svc"})
    if max_retries:
        assert answer.status_code == 200
        assert answer.headers["x-upstream"] == "good"
    else:
        assert answer.status_code == 503
        assert answer.headers["x-forklane-error"] == "upstream-connect-failed"
        text = await metrics(proxy)
        assert sample(text, "forklane_circuit_overflows_total",
                      'destination="baseline/svc",limit="max_retries"') == 1


async def test_consecutive_5xx_eject_an_endpoint_and_it_comes_back(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    protocol = "h1"
    sick, well = await upstreams("sick"), await upstreams("well")
    sick.behaviour.status = 500
    outlier = {"consecutive_5xx": 2, "base_ejection_seconds": 1.0, "max_ejection_percent": 50}
    proxy = proxy_factory(config(sick.address, well.address, outlier_detection=outlier))
    async with client(proxy, protocol) as c:
        seen = [(await c.get(f"/{i}", headers={"host": "svc"})).headers["x-upstream"]
                for i in range(4)]
        assert seen == ["sick", "well", "sick", "well"]  # two 500s in a row from sick
        report = await upstream_report(proxy)
        assert list(report["ejected"]) == [sick.address]
        assert report["ejected"][sick.address]["ejections"] == 1
        text = await metrics(proxy)
        assert sample(text, "forklane_outlier_ejected", f'endpoint="{sick.address}"') == 1
        during = [(await c.get("/", headers={"host": "svc"})).headers["x-upstream"]
                  for _ in range(6)]
        assert during == ["well"] * 6
        sick.behaviour.status = 200

        async def back() -> bool:
            return sick.address not in (await upstream_report(proxy))["ejected"]

        await eventually(back, within=5)

        async def reaches_sick() -> bool:
            answer = await c.get("/", headers={"host": "svc"})
            return answer.headers["x-upstream"] == "sick"

        await eventually(reaches_sick, within=5)


async def test_max_ejection_percent_keeps_the_rest_serving(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    ups = [await upstreams(f"u{i}") for i in range(3)]
    for up in ups:
        up.behaviour.status = 503
    outlier = {"consecutive_5xx": 1, "base_ejection_seconds": 60, "max_ejection_percent": 30}
    proxy = proxy_factory(config(*(u.address for u in ups), outlier_detection=outlier))
    async with client(proxy, "h1") as c:
        for _ in range(6):
            assert (await c.get("/", headers={"host": "svc"})).status_code == 503
    report = await upstream_report(proxy)
    assert len(report["ejected"]) == 1  # 1 of 3 is 33 %, over 30 %: no second one
