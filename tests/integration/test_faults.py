"""Faults a sandbox injects for its own requests: abort with an HTTP or gRPC status, or delay.

Real proxy processes on a static routing file, real upstreams (HTTP/1.1 recording servers and
a grpcio server). Every case checks the other half too: requests without the key, and with
another key, are never touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import pytest

from tests.integration.test_controlplane_e2e import (
    ADMIN,
    World,
    base_world,
    endpoint,
    get,
    wait_acked,
)
from tests.integration.test_grpc import Upstream, _channel

KEY = "faulty-1a2b"
OTHER = "calm-3c4d"


def _doc(web: str, faults: list[dict[str, Any]], forks: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": "f1",
        "services": [{"name": "web", "endpoints": [web]}, {"name": "api", "endpoints": [web]}],
        "faults": faults,
    }
    if forks:
        doc["forks"] = [{"routing_key": KEY, "service": "web", "endpoints": [web]}]
    return doc


def _key(key: str | None) -> dict[str, str]:
    return {"x-forklane-routing-key": key} if key else {}


async def test_abort_answers_the_keyed_requests_and_only_them(
    upstreams: Any, proxy_factory: Callable[..., Any]
) -> None:
    web = await upstreams("web")
    proc = proxy_factory(_doc(web.address, [
        {"routing_key": KEY, "service": "web", "abort_status": 418, "sandbox": "mine"}]))
    async with httpx.AsyncClient(base_url=proc.url()) as client:
        hit = await client.get("/x", headers={"host": "web", **_key(KEY)})
        assert hit.status_code == 418
        assert hit.headers["x-forklane-error"] == "fault-injected"
        assert "fault injected for sandbox mine" in hit.text
        for key in (None, OTHER):
            assert (await client.get("/x", headers={"host": "web", **_key(key)})).status_code == 200
        # another service is not in the fault
        assert (await client.get("/x", headers={"host": "api", **_key(KEY)})).status_code == 200
    assert len(web.requests) == 3  # the aborted request never reached the upstream


async def test_a_percentage_is_drawn_per_request_even_when_the_outcome_is_cached(
    upstreams: Any, proxy_factory: Callable[..., Any]
) -> None:
    web = await upstreams("web")
    proc = proxy_factory(_doc(web.address, [
        {"routing_key": KEY, "service": "web", "percent": 50, "abort_status": 503}], forks=True))
    seen: Counter[tuple[str, int]] = Counter()
    async with httpx.AsyncClient(base_url=proc.url()) as client:
        for _ in range(200):
            for name, key in (("keyed", KEY), ("keyless", None)):
                r = await client.get("/p", headers={"host": "web", **_key(key)})
                seen[(name, r.status_code)] += 1
    assert seen[("keyless", 200)] == 200  # never touched
    aborted = seen[("keyed", 503)]
    assert 60 <= aborted <= 140, seen  # 50 % of 200; far outside chance otherwise
    assert seen[("keyed", 200)] == 200 - aborted


async def test_delay_holds_keyed_requests_only(
    upstreams: Any, proxy_factory: Callable[..., Any]
) -> None:
    web = await upstreams("web")
    proc = proxy_factory(_doc(web.address, [
        {"routing_key": KEY, "service": "web", "delay_ms": 400}]))
    async with httpx.AsyncClient(base_url=proc.url()) as client:
        timings = {}
        for name, key in (("keyless", None), ("keyed", KEY)):
            t0 = time.monotonic()
            r = await client.get("/d", headers={"host": "web", **_key(key)})
            assert r.status_code == 200
            timings[name] = time.monotonic() - t0
    assert timings["keyed"] >= 0.4 and timings["keyless"] < 0.3, timings


@pytest.fixture
def grpc_faulty(proxy_factory: Callable[..., Any]) -> Any:
    base = Upstream("greeter").start()
    doc = {"version": "gf", "services": [{"name": "greeter", "endpoints": [base.address]}],
           "faults": [{"routing_key": KEY, "service": "greeter", "grpc_status": 7}]}
    proc = proxy_factory(doc)
    try:
        yield f"127.0.0.1:{proc.ports['outbound']}"
    finally:
        base.stop()


def test_grpc_calls_get_the_fault_as_a_grpc_status(grpc_faulty: str) -> None:
    with _channel(grpc_faulty) as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        with pytest.raises(grpc.RpcError) as failed:
            unary(b"ping", metadata=(("x-forklane-routing-key", KEY),), timeout=10)
        assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "fault injected" in (failed.value.details() or "")
        assert unary(b"ping", timeout=10) == b"ping"  # keyless: untouched
        assert unary(b"ping", metadata=(("x-forklane-routing-key", OTHER),), timeout=10) == b"ping"


@pytest.mark.parametrize("fault", [
    {"routing_key": KEY, "service": "web"},  # neither abort nor delay
    {"routing_key": KEY, "service": "web", "abort_status": 503, "delay_ms": 10},
    {"routing_key": KEY, "service": "nope", "abort_status": 503},
    {"routing_key": KEY, "service": "web", "abort_status": 200},
    {"routing_key": KEY, "service": "web", "percent": 0, "abort_status": 503},
])
def test_bad_faults_are_refused(fault: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from forklane.proxy.schema import RoutingSnapshot

    with pytest.raises(ValidationError):
        RoutingSnapshot.model_validate(_doc("127.0.0.1:1", [fault]))


# -- through the control plane: the API, the compiled snapshot, the CLI ----------------------


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with aiohttp.ClientSession() as session:
        w = World(tmp_path, session)
        try:
            yield w
        finally:
            await w.aclose()


async def _cli(plane: Any, *args: str) -> tuple[int, str]:
    env = {**os.environ, "FORKLANE_URL": plane.url, "FORKLANE_TOKEN": ADMIN,
           "FORKLANE_CONFIG": os.devnull}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "forklane", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode()


async def test_a_sandbox_fault_from_the_api_and_the_cli(world: World) -> None:
    plane, api, token, _ = await base_world(world)
    fork = await world.upstream("fork")
    key = "faultkey0123456789ab"
    bad, doc = await api.call("POST", "sandboxes", {"metadata": {"name": "bad"}, "spec": {
        "forks": [{"service": "web", "endpoints": [endpoint(fork)]}],
        "faults": [{"service": "web", "abortStatus": 503, "delayMs": 5}]}})
    assert bad == 422 and "either aborts" in json.dumps(doc)
    await api.write("POST", "sandboxes", {"metadata": {"name": "dev"}, "spec": {
        "routingKey": key, "forks": [{"service": "web", "endpoints": [endpoint(fork)]}],
        "faults": [{"service": "web", "abortStatus": 502}]}})
    sidecar = world.sidecar(plane, token, "p-fault")
    version = int((await api.call("GET", "snapshot"))[1]["version"])
    await wait_acked(api, ["p-fault"], version)
    assert await get(world.session, sidecar, "web", {"x-forklane-routing-key": key}) == (502, "?")
    assert await get(world.session, sidecar, "web") == (200, "baseline")

    code, err = await _cli(plane, "sandbox", "fault", "dev", "--service", "web", "--clear")
    assert code == 0, err
    version = int((await api.call("GET", "snapshot"))[1]["version"])
    await wait_acked(api, ["p-fault"], version)
    assert await get(world.session, sidecar, "web", {"x-forklane-routing-key": key}) == (
        200, "fork")
    code, err = await _cli(plane, "sandbox", "fault", "dev", "--service", "web", "--abort", "429",
                           "--percent", "100")
    assert code == 0, err
    version = int((await api.call("GET", "snapshot"))[1]["version"])
    await wait_acked(api, ["p-fault"], version)
    assert await get(world.session, sidecar, "web", {"x-forklane-routing-key": key}) == (429, "?")
    code, err = await _cli(plane, "sandbox", "fault", "dev", "--service", "web")
    assert code == 2 and "Traceback" not in err
    code, err = await _cli(plane, "sandbox", "fault", "dev", "--service", "web", "--abort", "200")
    assert code == 2 and "abortStatus" in err and "Traceback" not in err
