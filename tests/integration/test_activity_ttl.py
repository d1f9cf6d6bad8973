"""`ttl: {seconds, since: lastActivity}`: a sandbox lives while proxies see its key.

A real control plane and a real proxy process: the proxy reports the keys it routed every
`activity_interval` (0.5 s here) on its snapshot stream; the sandbox outlives its TTL while
keyed requests flow, records `status.lastActivity`, and is deleted once they stop.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_controlplane_e2e import (
    World,
    base_world,
    endpoint,
    get,
    until,
    wait_acked,
)
from tests.integration.test_tap import _Sidecar
from tests.support.processes import start_proxy

KEY = "activekey0123456789a"
TTL = 4


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with aiohttp.ClientSession() as session:
        w = World(tmp_path, session)
        try:
            yield w
        finally:
            await w.aclose()


async def test_a_sandbox_lives_while_its_key_is_seen_and_ends_after(world: World) -> None:
    plane, api, token, _ = await base_world(world)
    fork = await world.upstream("fork")
    bad, _ = await api.call("POST", "sandboxes", {"metadata": {"name": "x"}, "spec": {
        "forks": [{"service": "web", "endpoints": [endpoint(fork)]}],
        "ttl": {"seconds": TTL, "since": "lastUse"}}})
    assert bad == 422
    for name, key in (("busy", KEY), ("idle", "idlekey0123456789abc")):
        await api.write("POST", "sandboxes", {"metadata": {"name": name}, "spec": {
            "routingKey": key, "forks": [{"service": "web", "endpoints": [endpoint(fork)]}],
            "ttl": {"seconds": TTL, "since": "lastActivity"}}})
    proxy = start_proxy(
        None, world.tmp / "proxy-activity.log", "--controlplane", plane.grpc, "--service",
        "frontend", "--token", token, "--node-id", "p-act",
        env={"FORKLANE_ACTIVITY_INTERVAL": "0.5"},
    )
    world.sidecars.append(_Sidecar(proxy))  # type: ignore[arg-type]
    version = int((await api.call("GET", "snapshot"))[1]["version"])
    await wait_acked(api, ["p-act"], version)
    sidecar = _Sidecar(proxy)
    started = time.monotonic()
    while time.monotonic() - started < TTL + 3:  # well past the TTL, keyed requests flowing
        status, upstream = await get(world.session, sidecar, "web",  # type: ignore[arg-type]
                                     {"x-forklane-routing-key": KEY})
        assert (status, upstream) == (200, "fork"), "the busy sandbox must not end"
    busy_status, busy = await api.call("GET", "sandboxes/busy")
    assert busy_status == 200 and busy["status"].get("lastActivity"), busy
    idle_status, _ = await api.call("GET", "sandboxes/idle")
    assert idle_status == 404  # never seen: ended TTL after its creation

    async def ended() -> bool:
        return (await api.call("GET", "sandboxes/busy"))[0] == 404

    stopped = time.monotonic()
    await until("the busy sandbox to end once unseen", ended, within=TTL + 15)
    assert time.monotonic() - stopped >= TTL - 1.5  # not before its TTL from the last request

    async def back_to_baseline() -> bool:  # once the proxy runs the snapshot without it
        return await get(world.session, sidecar, "web",  # type: ignore[arg-type]
                         {"x-forklane-routing-key": KEY}) == (200, "baseline")

    await until("the key to route to the baseline again", back_to_baseline)
