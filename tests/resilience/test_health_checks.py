"""Active health checks (`health_check`) through a real proxy process against real upstreams
on loopback whose health endpoint the test flips: traffic leaves a sick endpoint within
interval x unhealthy_threshold (plus the machine's slack) and comes back after
healthy_threshold passes; every endpoint unhealthy means panic (all are used); a table swap
keeps what the probes learnt, removing an endpoint stops its probes, and nothing is probed
where nothing configures a check. /config and /metrics show each endpoint's state."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.resilience.test_suite import report
from tests.support.polling import eventually
from tests.support.processes import Proc, write_config

ProxyFactory = Callable[..., Proc]
INTERVAL, UNHEALTHY, HEALTHY = 0.2, 2, 2
CHECK = {"path": "/healthz", "interval_seconds": INTERVAL, "timeout_seconds": 1.0,
         "unhealthy_threshold": UNHEALTHY, "healthy_threshold": HEALTHY}
SLACK = 3.0  # a busy shared machine delays probes and the proxy's loop


class Upstream:
    """Answers `/healthz` with `health`, everything else 200 naming itself; counts probes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = 200
        self.probes = 0
        self.requests = 0
        self.runner: web.AppRunner | None = None
        self.address = ""

    async def _healthz(self, request: web.Request) -> web.Response:
        self.probes += 1
        return web.Response(status=self.health, text="health\n")

    async def _any(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(text=self.name, headers={"x-upstream": self.name})

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_route("*", "/{tail:.*}", self._any)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.address = f"{host}:{port}"
        return self

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[str], Any]]:
    started: list[Upstream] = []

    async def make(name: str) -> Upstream:
        up = await Upstream(name).start()
        started.append(up)
        return up

    yield make
    for up in started:
        await up.aclose()


def config(version: str, *endpoints: Upstream, check: bool = True,
           others: tuple[Upstream, ...] = ()) -> dict[str, Any]:
    svc: dict[str, Any] = {"name": "svc", "endpoints": [u.address for u in endpoints]}
    if check:
        svc["health_check"] = CHECK
    services = [svc] + [{"name": f"plain-{u.name}", "endpoints": [u.address]} for u in others]
    return {"version": version, "services": services}


async def health_rows(proxy: Proc) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=proxy.url("admin")) as admin:
        doc = (await admin.get("/config")).json()
    return {row["endpoint"]: row for row in doc["upstreams"]["health"]}


async def healthy(proxy: Proc, up: Upstream) -> bool | None:
    row = (await health_rows(proxy)).get(up.address)
    return None if row is None else bool(row["healthy"])


async def served_by(proxy: Proc, n: int) -> set[str]:
    async with httpx.AsyncClient(base_url=proxy.url(), timeout=10) as c:
        answers = [await c.get("/work", headers={"host": "svc"}) for _ in range(n)]
    assert all(a.status_code == 200 for a in answers), [a.status_code for a in answers]
    return {a.headers["x-upstream"] for a in answers}


async def metrics(proxy: Proc) -> str:
    async with httpx.AsyncClient(base_url=proxy.url("admin")) as admin:
        return (await admin.get("/metrics")).text


async def test_traffic_leaves_a_sick_endpoint_and_comes_back(
    servers: Callable[[str], Any], proxy_factory: ProxyFactory
) -> None:
    a, b = await servers("a"), await servers("b")
    proxy = proxy_factory(config("h-1", a, b))
    await eventually(lambda: a.probes >= 1 and b.probes >= 1, what="the first probes")
    assert await served_by(proxy, 8) == {"a", "b"}
    b.health = 503
    flipped = time.monotonic()
    await eventually(lambda: _is(healthy(proxy, b), False), within=UNHEALTHY * INTERVAL + SLACK,
                     what="b found unhealthy")
    left = time.monotonic() - flipped
    assert await served_by(proxy, 10) == {"a"}  # round robin would give b half of them
    text = await metrics(proxy)
    row = r'\{check="GET /healthz",endpoint="' + re.escape(b.address) + '"'
    assert re.search(r"forklane_upstream_health_healthy" + row + r"\} 0\.0", text), text
    assert re.search(r"forklane_upstream_health_checks_total" + row + r',result="failed"\} [1-9]',
                     text), text
    b.health = 200
    recovered = time.monotonic()
    await eventually(lambda: _is(healthy(proxy, b), True), within=HEALTHY * INTERVAL + SLACK,
                     what="b healthy again")
    back = time.monotonic() - recovered
    assert await served_by(proxy, 8) == {"a", "b"}
    report("active-health", interval_s=INTERVAL, unhealthy_threshold=UNHEALTHY,
           healthy_threshold=HEALTHY, left_after_s=round(left, 2), back_after_s=round(back, 2))


async def _is(value: Any, expected: bool) -> bool:
    return (await value) is expected


async def test_every_endpoint_unhealthy_means_panic_not_an_outage(
    servers: Callable[[str], Any], proxy_factory: ProxyFactory
) -> None:
    a, b = await servers("a"), await servers("b")
    a.health = b.health = 500
    proxy = proxy_factory(config("h-panic", a, b))
    for up in (a, b):
        await eventually(lambda up=up: _is(healthy(proxy, up), False),
                         within=UNHEALTHY * INTERVAL + SLACK, what=f"{up.name} unhealthy")
    assert await served_by(proxy, 8) == {"a", "b"}  # better suspect endpoints than none


async def test_probes_follow_the_table(
    servers: Callable[[str], Any], proxy_factory: ProxyFactory
) -> None:
    a, b, c = await servers("a"), await servers("b"), await servers("c")
    b.health = 503
    proxy = proxy_factory(config("t-1", a, b, others=(c,)))
    path = proxy.config  # type: ignore[attr-defined]
    await eventually(lambda: _is(healthy(proxy, b), False), within=UNHEALTHY * INTERVAL + SLACK,
                     what="b found unhealthy")

    async def swap(doc: dict[str, Any]) -> None:
        write_config(path, doc)
        os.kill(proxy.pid, signal.SIGHUP)

        async def installed() -> bool:
            async with httpx.AsyncClient(base_url=proxy.url("admin")) as admin:
                return bool((await admin.get("/config")).json()["version"] == doc["version"])

        await eventually(installed, what=f"version {doc['version']} installed")

    # Another version with the same check: what the probes learnt stays, at once.
    await swap(config("t-2", a, b, others=(c,)))
    assert await healthy(proxy, b) is False
    assert await served_by(proxy, 6) == {"a"}
    # b leaves the table: its probes stop, a's go on.
    await swap(config("t-3", a, others=(c,)))
    assert await healthy(proxy, b) is None
    b_probes, a_probes = b.probes, a.probes
    await eventually(lambda: a.probes >= a_probes + 3, what="a probed three more times")
    assert b.probes <= b_probes + 1  # at most one that was already on its way
    # c's service has no check: never probed, and no row for it.
    assert c.probes == 0 and await healthy(proxy, c) is None
    # No check anywhere: no probe targets (so no tasks), no health families in /metrics.
    await swap(config("t-4", a, check=False, others=(c,)))
    assert await health_rows(proxy) == {}
    assert "forklane_upstream_health_healthy" not in await metrics(proxy)
    assert c.probes == 0
