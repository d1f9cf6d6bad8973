"""Retries after an answer, per destination (`retry_policy`), through a real proxy process to
real upstreams: idempotent requests without a body only, to another endpoint, within the
circuit's retry slots and the retry budget; `x-forklane-retry-on` only when allowed; a
per-try timeout retries a silent endpoint (HTTP/1.1 and h2c)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.test_http2 import H2Upstream, _UpConn
from tests.support.processes import Proc
from tests.support.upstream import RecordingUpstream

Upstreams = Callable[[str], Any]
ProxyFactory = Callable[..., Proc]


def config(*endpoints: str, **extra: Any) -> dict[str, Any]:
    return {"version": "retry-1",
            "services": [{"name": "svc", "endpoints": list(endpoints), **extra}]}


async def metric(proxy: Proc, family: str, labels: str) -> float:
    async with httpx.AsyncClient(base_url=proxy.url("admin")) as admin:
        text = (await admin.get("/metrics")).text
    for line in text.splitlines():
        if re.match(re.escape(family) + r"\{" + re.escape(labels) + r"\} ", line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def pair(upstreams: Upstreams, status: int) -> tuple[RecordingUpstream, RecordingUpstream]:
    sick, well = await upstreams("sick"), await upstreams("well")
    sick.behaviour.status = status
    return sick, well


async def test_an_idempotent_request_is_retried_on_another_endpoint(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    sick, well = await pair(upstreams, 503)
    proxy = proxy_factory(config(sick.address, well.address, retry_policy={"attempts": 1}))
    async with httpx.AsyncClient(base_url=proxy.url()) as c:
        answer = await c.get("/a", headers={"host": "svc"})
        assert (answer.status_code, answer.headers["x-upstream"]) == (200, "well")
        assert [r.target for r in sick.requests] == ["/a"]
        # A body is never sent twice: the POST gets the 503 as it came.
        posted = await c.post("/b", headers={"host": "svc"}, content=b"x" * 10)
        assert (posted.status_code, posted.headers["x-upstream"]) == (503, "sick")
    assert await metric(proxy, "forklane_upstream_retries_total", 'status="503"') == 1
    assert [r.target for r in well.requests] == ["/a"]


async def test_without_a_policy_an_answer_is_passed_on(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    sick, well = await pair(upstreams, 503)
    proxy = proxy_factory(config(sick.address, well.address))
    async with httpx.AsyncClient(base_url=proxy.url()) as c:
        answer = await c.get("/", headers={"host": "svc"})
    assert (answer.status_code, answer.headers["x-upstream"]) == (503, "sick")
    assert well.requests == []


@pytest.mark.parametrize("overrides", [False, True])
async def test_retry_on_header_counts_only_when_the_policy_allows_it(
    upstreams: Upstreams, proxy_factory: ProxyFactory, overrides: bool
) -> None:
    sick, well = await pair(upstreams, 500)  # not a gateway error: not retried by default
    policy = {"attempts": 1, "header_overrides": overrides}
    proxy = proxy_factory(config(sick.address, well.address, retry_policy=policy))
    async with httpx.AsyncClient(base_url=proxy.url()) as c:
        plain = await c.get("/", headers={"host": "svc"})
        assert plain.headers["x-upstream"] == "sick"  # round robin: next goes to well
        await c.get("/", headers={"host": "svc"})
        asked = await c.get("/", headers={"host": "svc", "x-forklane-retry-on": "5xx"})
    assert plain.status_code == 500
    assert asked.headers["x-upstream"] == ("well" if overrides else "sick")


async def test_the_retry_budget_bounds_retries(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    sick, well = await pair(upstreams, 503)
    policy = {"attempts": 1, "budget_percent": 0, "min_retry_concurrency": 0}
    proxy = proxy_factory(config(sick.address, well.address, retry_policy=policy))
    async with httpx.AsyncClient(base_url=proxy.url()) as c:
        answer = await c.get("/", headers={"host": "svc"})
    assert answer.status_code == 503
    assert await metric(proxy, "forklane_circuit_overflows_total",
                        'destination="baseline/svc",limit="retry_budget"') == 1


async def test_a_per_try_timeout_retries_a_silent_endpoint_over_http1(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    silent, well = await upstreams("silent"), await upstreams("well")
    silent.behaviour.hold = asyncio.Event()
    policy = {"attempts": 1, "per_try_timeout": 0.3}
    proxy = proxy_factory(config(silent.address, well.address, retry_policy=policy))
    try:
        async with httpx.AsyncClient(base_url=proxy.url(), timeout=10) as c:
            answer = await c.get("/", headers={"host": "svc"})
        assert (answer.status_code, answer.headers["x-upstream"]) == (200, "well")
        assert len(silent.requests) == 1
    finally:
        silent.behaviour.hold.set()


async def test_a_per_try_timeout_retries_a_silent_endpoint_over_h2c(
    proxy_factory: ProxyFactory
) -> None:
    silent, well = await H2Upstream("silent").start(), await H2Upstream("well").start()
    release = asyncio.Event()

    async def hold(conn: _UpConn, sid: int, headers: dict[str, str]) -> None:
        await release.wait()

    silent.behaviour = hold
    policy = {"attempts": 1, "per_try_timeout": 0.3}
    proxy = proxy_factory(config(silent.address, well.address, retry_policy=policy))
    try:
        async with httpx.AsyncClient(base_url=proxy.url(), http1=False, http2=True,
                                     timeout=10) as c:
            answer = await c.get("/", headers={"host": "svc"})
        assert (answer.status_code, answer.headers["x-upstream"]) == (200, "well")
        assert len(silent.seen) == 1
        assert await metric(proxy, "forklane_upstream_retries_total", 'status="504"') == 1
    finally:
        release.set()
        await silent.aclose()
        await well.aclose()
