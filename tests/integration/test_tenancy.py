"""A route group reaches only forks its creator was given, end to end: a real control plane
and a real proxy process. Another developer's group whose selector matches my sandbox sends
its key to the baseline, until I share the sandbox with that developer; a developer of
another tenant never gets in, shared or not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.test_controlplane_e2e import (
    Api,
    World,
    base_world,
    endpoint,
    get,
    until,
    wait_acked,
)

ALICE_KEY, MALLORY_KEY, EVE_KEY = "alicekey0123456789ab", "mallorykey0123456789", "evekey0123456789abcd"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with aiohttp.ClientSession() as session:
        w = World(tmp_path, session)
        try:
            yield w
        finally:
            await w.aclose()


async def _as(api: Api, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with api.session.request(method, f"{api.plane.url}/api/v1/{path}", json=body,
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.json()


async def _developer(api: Api, subject: str, tenant: str) -> str:
    status, doc = await api.call("POST", "tokens", {"subject": subject, "role": "developer",
                                                    "tenant": tenant})
    assert status == 201, doc
    return str(doc["token"])


async def test_a_route_group_never_pulls_in_a_fork_it_was_not_given(world: World) -> None:
    plane, api, proxy_token, _ = await base_world(world)
    fork = await world.upstream("alice-fork")
    alice = await _developer(api, "alice", "team-a")
    mallory = await _developer(api, "mallory", "team-a")
    eve = await _developer(api, "eve", "team-b")
    status, made = await _as(api, alice, "POST", "sandboxes", {
        "metadata": {"name": "alice-sb", "labels": {"team": "pay"}},
        "spec": {"routingKey": ALICE_KEY, "forks": [{"service": "web",
                                                     "endpoints": [endpoint(fork)]}]}})
    assert status == 201, made
    for who, name, key in ((mallory, "mallory-g", MALLORY_KEY), (eve, "eve-g", EVE_KEY)):
        status, doc = await _as(api, who, "POST", "routegroups", {
            "metadata": {"name": name}, "spec": {"selector": {"team": "pay"}, "routingKey": key}})
        assert status == 201, doc
    sidecar = world.sidecar(plane, proxy_token, "p-tenants")

    async def judged() -> bool:  # both groups were compiled (and alice's sandbox before them)
        for name in ("mallory-g", "eve-g"):
            _, group = await api.call("GET", f"routegroups/{name}")
            if (group.get("status") or {}).get("observedGeneration") != 1:
                return False
        return True

    await until("both route groups to be judged", judged)
    version = int((await api.call("GET", "snapshot"))[1]["version"])
    await wait_acked(api, ["p-tenants"], version)

    async def upstream_for(key: str) -> str:
        status, upstream = await get(world.session, sidecar, "web",
                                     {"x-forklane-routing-key": key})
        assert status == 200, (key, status)
        return upstream

    assert await upstream_for(ALICE_KEY) == "alice-fork"
    assert await upstream_for(MALLORY_KEY) == "baseline"  # selector matched, not hers
    assert await upstream_for(EVE_KEY) == "baseline"
    _, group = await _as(api, mallory, "GET", "routegroups/mallory-g")
    assert group["status"].get("sandboxes", []) == [] and group["status"]["notSelected"] == 1
    _, group = await _as(api, eve, "GET", "routegroups/eve-g")
    assert "notSelected" not in group["status"]  # another tenant's sandbox is not even counted

    # alice shares her sandbox with mallory (and names eve, who is in another tenant)
    _, current = await _as(api, alice, "GET", "sandboxes/alice-sb")
    current["spec"]["sharedWith"] = ["mallory", "eve"]
    status, shared = await _as(api, alice, "PUT", "sandboxes/alice-sb", current)
    assert status == 200, shared
    await wait_acked(api, ["p-tenants"], int(shared["metadata"]["resourceVersion"]))
    assert await upstream_for(MALLORY_KEY) == "alice-fork"
    assert await upstream_for(EVE_KEY) == "baseline"
    assert await upstream_for(ALICE_KEY) == "alice-fork"
