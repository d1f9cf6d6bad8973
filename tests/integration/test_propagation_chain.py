"""The routing key across three real services, each behind its own forklane sidecar process.

    client ─▶ [sidecar a] ─▶ app a ─▶ [sidecar a] ─▶ [sidecar b] ─▶ app b ─▶ [sidecar b] ─▶ c | c-fork
                inbound               outbound         inbound               outbound

- app a is instrumented with the OpenTelemetry SDK and its real W3C propagators: it carries
  `traceparent` and `baggage` on, and nothing forklane-specific;
- app b forwards only `traceparent`: the key is lost at b (the commonest break);
- app c (and its fork) use the forklane SDK's aiohttp middleware and report the key they saw.
Only service c has a fork. The sidecars' outbound listeners route by the shared routing file;
services' endpoints are the sidecars' inbound listeners, so every hop crosses a sidecar.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from forklane.propagation import current_routing_key
from forklane.propagation.aiohttp import server_middleware
from tests.support.processes import _READY, Proc, spawn, wait_for_line, write_config

pytestmark = pytest.mark.asyncio

KEY = "dev-chain-4c1d"
ROUTING_KEY_HEADER = "x-forklane-routing-key"


@dataclass
class App:
    """A service app in the test loop; `seen` holds the headers of every request it got."""

    name: str
    runner: web.AppRunner
    port: int
    seen: list[dict[str, str]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def _serve(name: str, handler: Callable[[App, web.Request], Awaitable[web.Response]],
                 middlewares: list[Any] | None = None) -> App:
    app = web.Application(middlewares=middlewares or [])
    record: list[App] = []

    async def handle(request: web.Request) -> web.Response:
        record[0].seen.append({k.lower(): v for k, v in request.headers.items()})
        return await handler(record[0], request)

    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    record.append(App(name, runner, port))
    return record[0]


@dataclass
class Chain:
    apps: dict[str, App]
    sidecars: dict[str, Proc]

    async def call(self, headers: dict[str, str]) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"{self.sidecars['a'].url('inbound')}/checkout",
                                 headers={"host": "a", **headers})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def metric(self, sidecar: str, name: str, service: str) -> float:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{self.sidecars[sidecar].url('admin')}/metrics")).text
        m = re.search(rf'^{name}_total\{{service="{re.escape(service)}"\}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0


def _routing(version: str, ends: dict[str, str], fork: str) -> dict[str, Any]:
    return {
        "version": version,
        "services": [{"name": n, "endpoints": [ends[n]]} for n in ("a", "b", "c")],
        "forks": [{"routing_key": KEY, "service": "c", "endpoints": [fork], "sandbox": "dev"}],
    }


async def _wait_version(proc: Proc, version: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if (await client.get(f"{proc.url('admin')}/config")).json()["version"] == version:
                return
            await asyncio.sleep(0.05)  # polling the admin API with a deadline
    raise AssertionError(f"sidecar never loaded {version}:\n{proc.output()}")


async def _build_chain(tmp_path: Path, flags: tuple[str, ...]) -> AsyncIterator[Chain]:
    provider = TracerProvider()
    tracer = provider.get_tracer("app-a")
    propagator = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    sessions: list[aiohttp.ClientSession] = []
    outbound: dict[str, str] = {}

    def session() -> aiohttp.ClientSession:
        if not sessions:
            sessions.append(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)))
        return sessions[0]

    async def call(via: str, host: str, headers: dict[str, str]) -> Any:
        async with session().get(f"{outbound[via]}/next", headers={"Host": host, **headers}) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def app_a(app: App, request: web.Request) -> web.Response:
        # Instrumented: OpenTelemetry extracts traceparent + baggage and injects them again.
        # As OpenTelemetry's server instrumentations do: attach the extracted context
        # (trace + baggage), start the handler's span in it, inject on the way out.
        token = otel_context.attach(propagator.extract(dict(request.headers)))
        try:
            with tracer.start_as_current_span("a-checkout"):
                carrier: dict[str, str] = {}
                propagator.inject(carrier)
                down = await call("a", "b", carrier)
        finally:
            otel_context.detach(token)
        return web.json_response({"by": "a", "next": down})

    async def app_b(app: App, request: web.Request) -> web.Response:
        # Forwards traceparent only: baggage and the key header are dropped here.
        keep = {"traceparent": request.headers["traceparent"]}
        down = await call("b", "c", keep)
        return web.json_response({"by": "b", "next": down})

    async def app_c(app: App, request: web.Request) -> web.Response:
        return web.json_response({"by": app.name, "key": current_routing_key()})

    apps = {
        "a": await _serve("a", app_a),
        "b": await _serve("b", app_b),
        "c": await _serve("c", app_c, [server_middleware()]),
        "c-fork": await _serve("c-fork", app_c, [server_middleware()]),
    }
    placeholder = {n: "127.0.0.1:9" for n in ("a", "b", "c")}
    boot = _routing("boot", placeholder, apps["c-fork"].address)
    sidecars: dict[str, Proc] = {}
    configs: dict[str, Path] = {}
    try:
        # Three processes start at once (their start-up is most of this fixture's time).
        for n in ("a", "b", "c"):
            configs[n] = write_config(tmp_path / f"routing-{n}.yaml", boot)
            sidecars[n] = spawn(
                [sys.executable, "-m", "forklane.proxy", "run", "--config", str(configs[n]),
                 "--port", "0", "--inbound-port", "0", "--admin-port", "0",
                 "--service", n, "--local-app", apps[n].address, *flags],
                tmp_path / f"sidecar-{n}.log",
            )
        for proc in sidecars.values():
            line = await asyncio.to_thread(wait_for_line, proc, "forklane proxy listening", 20)
            proc.ports = {name: int(port) for name, port in _READY.findall(line)}
        for n, proc in sidecars.items():
            outbound[n] = proc.url("outbound")
        # The services' endpoints are the sidecars' inbound ports, known only now: reload.
        ends = {n: f"127.0.0.1:{proc.ports['inbound']}" for n, proc in sidecars.items()}
        for n, proc in sidecars.items():
            write_config(configs[n], _routing("chain", ends, apps["c-fork"].address))
            proc.popen.send_signal(signal.SIGHUP)
        for proc in sidecars.values():
            await _wait_version(proc, "chain")
        yield Chain(apps, sidecars)
    finally:
        for s in sessions:
            await s.close()
        for proc in sidecars.values():
            await asyncio.to_thread(proc.stop)
        for app in apps.values():
            await app.runner.cleanup()
        provider.shutdown()


@pytest.fixture
async def repairing(tmp_path: Path) -> AsyncIterator[Chain]:
    """Every sidecar repairs keys by trace (and would count gaps it could not repair)."""
    async for chain in _build_chain(tmp_path, ("--trace-repair", "--trace-gaps")):
        yield chain


@pytest.fixture
async def observing(tmp_path: Path) -> AsyncIterator[Chain]:
    """Repair off: the sidecars only count propagation gaps."""
    async for chain in _build_chain(tmp_path, ("--trace-gaps",)):
        yield chain


def _served_by(body: dict[str, Any]) -> list[str]:
    out = []
    while body is not None:
        out.append(body["by"])
        body = body.get("next")  # type: ignore[assignment]
    return out


async def test_with_repair_the_key_reaches_the_fork_past_the_app_that_drops_it(
    repairing: Chain,
) -> None:
    body = await repairing.call({ROUTING_KEY_HEADER: KEY})
    assert _served_by(body) == ["a", "b", "c-fork"]
    assert body["next"]["next"]["key"] == KEY, "the fork's app sees the key (SDK middleware)"
    assert len(repairing.apps["c"].seen) == 0
    # app a only ever had the key in OpenTelemetry baggage; app b dropped it.
    assert f"forklane-routing-key={KEY}" in repairing.apps["a"].seen[0]["baggage"]
    b_out = repairing.apps["c-fork"].seen[0]
    assert b_out[ROUTING_KEY_HEADER] == KEY and f"forklane-routing-key={KEY}" in b_out["baggage"]
    assert await repairing.metric("b", "forklane_routing_keys_restored", "b") == 1
    assert await repairing.metric("b", "forklane_propagation_gap", "b") == 0
    for hop in ("a", "c"):
        assert await repairing.metric(hop, "forklane_routing_keys_restored", hop) == 0


async def test_without_repair_the_gap_metric_names_the_hop_that_dropped_the_key(
    observing: Chain,
) -> None:
    body = await observing.call({ROUTING_KEY_HEADER: KEY})
    assert _served_by(body) == ["a", "b", "c"]
    assert body["next"]["next"]["key"] is None
    assert len(observing.apps["c-fork"].seen) == 0
    assert await observing.metric("b", "forklane_propagation_gap", "b") == 1
    assert await observing.metric("a", "forklane_propagation_gap", "a") == 0
    assert await observing.metric("c", "forklane_propagation_gap", "c") == 0
    assert await observing.metric("b", "forklane_routing_keys_restored", "b") == 0


async def test_without_a_key_nothing_reaches_any_fork(repairing: Chain) -> None:
    body = await repairing.call({})
    assert _served_by(body) == ["a", "b", "c"]
    assert body["next"]["next"]["key"] is None
    assert len(repairing.apps["c-fork"].seen) == 0
    for hop in ("a", "b", "c"):
        assert await repairing.metric(hop, "forklane_routing_keys_restored", hop) == 0
        assert await repairing.metric(hop, "forklane_propagation_gap", hop) == 0
