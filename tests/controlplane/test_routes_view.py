"""The routes view: which keys fork which service, listed and watched, for consumer tokens."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.controlplane.conftest import Api
from tests.support.polling import eventually


async def _setup(api: Api) -> None:
    for name in ("orders", "billing"):
        status, body, _ = await api.call("POST", "/api/v1/services", json_body={
            "metadata": {"name": name}, "spec": {"endpoints": ["127.0.0.1:9"]}})  # fmt: skip
        assert status == 201, body


async def _sandbox(api: Api, name: str, key: str, services: list[str],
                   labels: dict[str, str] | None = None) -> None:  # fmt: skip
    body = {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"routingKey": key,
                     "forks": [{"service": s, "endpoints": ["127.0.0.1:9"]} for s in services]}}
    status, got, _ = await api.call("POST", "/api/v1/sandboxes", json_body=body)
    assert status == 201, got


async def _routes(api: Api, selector: str | None = None, token: str | None = None) -> Any:
    query = f"?labelSelector={selector}" if selector else ""
    kw = {"token": token} if token else {}
    status, body, _ = await api.call("GET", f"/api/v1/routes{query}", **kw)
    assert status == 200, body
    return body


def _pairs(doc: Any) -> set[tuple[str, str, str]]:
    return {(r["spec"]["service"], r["spec"]["routingKey"], r["spec"]["sandbox"])
            for r in doc["items"]}  # fmt: skip


async def test_list_names_each_forked_service_and_key_with_the_carriers(api: Api) -> None:
    await _setup(api)
    await _sandbox(api, "alice", "alice-key", ["orders", "billing"])
    await _sandbox(api, "bob", "bob-key", ["billing"])

    async def compiled() -> bool:
        return len((await _routes(api))["items"]) == 3

    await eventually(compiled, what="three routes")
    doc = await _routes(api)
    assert doc["kind"] == "RouteList"
    assert doc["carriers"] == [{"kind": "header", "name": "x-forklane-routing-key"},
                               {"kind": "baggage", "name": "forklane-routing-key"}]
    assert _pairs(await _routes(api, "service=billing")) == {
        ("billing", "alice-key", "alice"), ("billing", "bob-key", "bob")}  # fmt: skip
    assert _pairs(await _routes(api, "service=orders")) == {("orders", "alice-key", "alice")}
    assert doc["metadata"]["resourceVersion"].isdigit()


async def test_a_route_groups_key_names_the_member_sandbox_that_forks_the_service(api: Api) -> None:
    await _setup(api)
    await _sandbox(api, "alice", "alice-key", ["orders"], {"team": "pay"})
    await _sandbox(api, "bob", "bob-key", ["billing"], {"team": "pay"})
    status, body, _ = await api.call("POST", "/api/v1/routegroups", json_body={
        "metadata": {"name": "pay"}, "spec": {"selector": {"team": "pay"}, "routingKey": "pay-key"}})  # fmt: skip
    assert status == 201, body

    async def grouped() -> bool:
        return ("billing", "pay-key", "bob") in _pairs(await _routes(api))

    await eventually(grouped, what="the group's route")
    doc = await _routes(api)
    group = [r for r in doc["items"] if r["spec"]["routingKey"] == "pay-key"]
    assert {(r["spec"]["service"], r["spec"]["sandbox"], r["spec"]["routeGroup"]) for r in group} == {
        ("orders", "alice", "pay"), ("billing", "bob", "pay")}  # fmt: skip


async def test_a_consumer_token_reads_routes_and_nothing_else(api: Api) -> None:
    await _setup(api)
    consumer = await api.token("billing-worker", "consumer")
    assert (await _routes(api, token=consumer))["kind"] == "RouteList"
    for path in ("/api/v1/sandboxes", "/api/v1/services", "/api/v1/snapshot", "/api/v1/proxies"):
        status, body, _ = await api.call("GET", path, token=consumer)
        assert status == 403, (path, body)
        assert "routes" in body["error"]["message"]
    status, _, _ = await api.call("POST", "/api/v1/sandboxes", token=consumer, json_body={})
    assert status == 403
    proxy = await api.token("sidecar", "proxy")
    status, _, _ = await api.call("GET", "/api/v1/routes", token=proxy)
    assert status == 403  # least privilege both ways: a proxy token is not a consumer's
    developer = await api.token("dev", "developer")
    assert (await _routes(api, token=developer))["kind"] == "RouteList"
    status, _, _ = await api.call("GET", "/api/v1/routes", token=None)
    assert status == 401


async def _watch_lines(api: Api, query: str, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {api.plane.settings.admin_token}"}
    async with api.session.get(f"{api.base}/api/v1/routes?watch=true&{query}", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=20)) as resp:  # fmt: skip
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if line.strip():
                out.append(json.loads(line))
                if len(out) == count:
                    break
    return out


async def test_watch_streams_added_and_deleted_routes_from_a_version(api: Api) -> None:
    await _setup(api)
    start = (await _routes(api))["metadata"]["resourceVersion"]
    query = f"resourceVersion={start}&labelSelector=service=orders"
    watching = asyncio.create_task(_watch_lines(api, query, 2))
    await _sandbox(api, "alice", "alice-key", ["orders", "billing"])

    async def listed() -> bool:
        return bool((await _routes(api, "service=orders"))["items"])

    await eventually(listed, what="alice's route")
    status, _, _ = await api.call("DELETE", "/api/v1/sandboxes/alice")
    assert status == 200
    events = await asyncio.wait_for(watching, 20)
    assert [(e["type"], e["object"]["spec"]["routingKey"], e["object"]["spec"]["service"])
            for e in events] == [("ADDED", "alice-key", "orders"), ("DELETED", "alice-key", "orders")]  # fmt: skip


async def test_watch_from_an_old_version_is_gone_and_bad_input_is_a_clear_400(api: Api) -> None:
    await _setup(api)
    old = (await _routes(api))["metadata"]["resourceVersion"]
    await _sandbox(api, "alice", "alice-key", ["orders"])

    async def moved() -> bool:
        return (await _routes(api))["metadata"]["resourceVersion"] != old

    await eventually(moved, what="a newer snapshot")
    status, body, _ = await api.call("GET", f"/api/v1/routes?watch=true&resourceVersion={old}")
    assert status == 410 and "list again" in body["error"]["message"]
    status, body, _ = await api.call("GET", "/api/v1/routes?watch=true&resourceVersion=abc")
    assert status == 400
    status, body, _ = await api.call("GET", "/api/v1/routes?labelSelector=a=(")
    assert status == 400 and "labelSelector" in body["error"]["message"]
