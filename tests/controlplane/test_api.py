"""REST contract over real HTTP: every verb, every error status, the token/role matrix."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from conftest import Api

from forklane.controlplane.resources import KINDS
from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings

SERVICE = {"metadata": {"name": "web"}, "spec": {"endpoints": ["127.0.0.1:9"]}}


def sandbox(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body = {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"forks": [{"service": "web", "endpoints": ["127.0.0.1:9"]}], **spec},
    }
    return body


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Poll `check` until true or the deadline (no fixed sleeps as synchronisation)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_create_get_list_update_delete(api: Api) -> None:
    status, svc, headers = await api.call("POST", "/api/v1/services", json_body=SERVICE)
    assert status == 201, svc
    assert headers["Location"] == "/api/v1/services/web"
    meta = svc["metadata"]
    assert meta["generation"] == 1 and meta["createdBy"] == "admin" and meta["uid"]
    assert svc["kind"] == "Service" and svc["apiVersion"] == "forklane.dev/v1"

    status, sb, _ = await api.call("POST", "/api/v1/sandboxes", json_body=sandbox("sb1"))
    assert status == 201, sb
    key = sb["spec"]["routingKey"]
    assert re.fullmatch(r"[a-z0-9]{32}", key), "generated keys are 128 bits of [a-z0-9]"
    assert sb["status"]["routingKey"] == key

    async def status_settled() -> bool:
        _, got, _ = await api.call("GET", "/api/v1/sandboxes/sb1")
        return bool(got["status"].get("observedGeneration") == 1)

    # the reconciler writes status (which bumps resourceVersion); let it settle first
    await eventually(status_settled)
    status, got, headers = await api.call("GET", "/api/v1/sandboxes/sb1")
    assert status == 200 and got["spec"]["routingKey"] == key
    assert headers["ETag"] == f'"{got["metadata"]["resourceVersion"]}"'

    # update via metadata.resourceVersion keeps the key, bumps generation. A status write
    # (a probe result) may land between our read and our write: that is a 409, and a client
    # reads again and retries, as a Kubernetes client does on a conflict.
    body = sandbox("sb1", {"team": "x"}, description="changed")
    for _ in range(20):
        body["metadata"]["resourceVersion"] = got["metadata"]["resourceVersion"]
        status, upd, _ = await api.call("PUT", "/api/v1/sandboxes/sb1", json_body=body)
        if status != 409:
            break
        _, got, _ = await api.call("GET", "/api/v1/sandboxes/sb1")
    assert status == 200, upd
    assert upd["metadata"]["generation"] == 2 and upd["spec"]["routingKey"] == key
    assert upd["spec"]["description"] == "changed"

    # the same stale version again: 409, nothing changes
    body["spec"]["description"] = "lost"
    status, err, _ = await api.call("PUT", "/api/v1/sandboxes/sb1", json_body=body)
    assert status == 409 and err["error"]["reason"] == "Conflict"
    # If-Match with the current version works
    async def generation_2_settled() -> bool:
        _, got, _ = await api.call("GET", "/api/v1/sandboxes/sb1")
        return bool(got["status"].get("observedGeneration") == 2)

    await eventually(generation_2_settled)
    del body["metadata"]["resourceVersion"]
    for _ in range(20):  # read, then write with If-Match; again on a status write's 409
        status, cur, _ = await api.call("GET", "/api/v1/sandboxes/sb1")
        status, upd, _ = await api.call(
            "PUT", "/api/v1/sandboxes/sb1", json_body=body,
            headers={"If-Match": f'"{cur["metadata"]["resourceVersion"]}"'},
        )
        if status != 409:
            break
    assert status == 200 and upd["spec"]["description"] == "lost"

    status, gone, _ = await api.call("DELETE", "/api/v1/sandboxes/sb1")
    assert status == 200 and gone["metadata"]["name"] == "sb1"
    status, err, _ = await api.call("DELETE", "/api/v1/sandboxes/sb1")
    assert status == 404 and err["error"]["reason"] == "NotFound"
    status, err, _ = await api.call("GET", "/api/v1/sandboxes/sb1")
    assert status == 404


async def test_list_label_selector_and_pagination(api: Api) -> None:
    await api.call("POST", "/api/v1/services", json_body=SERVICE)
    for i in range(5):
        status, _, _ = await api.call(
            "POST", "/api/v1/sandboxes",
            json_body=sandbox(f"s{i}", {"team": "a" if i < 3 else "b", "env": "dev"}),
        )
        assert status == 201
    status, page, _ = await api.call("GET", "/api/v1/sandboxes?labelSelector=team=a,env=dev")
    assert status == 200 and page["kind"] == "SandboxList"
    assert [s["metadata"]["name"] for s in page["items"]] == ["s0", "s1", "s2"]
    names: list[str] = []
    path = "/api/v1/sandboxes?limit=2"
    while True:
        status, page, _ = await api.call("GET", path)
        assert status == 200 and len(page["items"]) <= 2
        names += [s["metadata"]["name"] for s in page["items"]]
        token = page["metadata"].get("continue")
        if token is None:
            break
        path = f"/api/v1/sandboxes?limit=2&continue={token}"
    assert names == ["s0", "s1", "s2", "s3", "s4"]


async def test_error_statuses(api: Api) -> None:
    await api.call("POST", "/api/v1/services", json_body=SERVICE)

    status, err, _ = await api.call(
        "POST", "/api/v1/sandboxes", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and err["error"]["reason"] == "BadRequest"
    status, err, _ = await api.call("POST", "/api/v1/sandboxes", json_body=[1, 2])
    assert status == 400
    status, err, _ = await api.call(
        "POST", "/api/v1/sandboxes", data=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert status == 415 and err["error"]["reason"] == "UnsupportedMediaType"

    json_headers = {"Content-Type": "application/json"}
    deep = b"[" * 100_000 + b"]" * 100_000  # once a RecursionError and a 500
    for path in ("/api/v1/sandboxes", "/api/v1/splits", "/api/v1/services"):
        status, err, _ = await api.call("POST", path, data=deep, headers=json_headers)
        assert status == 400 and "nested deeper than 64" in err["error"]["message"], err
    nested_object = b'{"metadata": ' * 70 + b"1" + b"}" * 70
    status, err, _ = await api.call("POST", "/api/v1/sandboxes", data=nested_object,
                                    headers=json_headers)
    assert status == 400 and "nested deeper" in err["error"]["message"]
    in_strings = sandbox("brackets-in-strings", labels={"note": "[" * 200})
    status, body, _ = await api.call("POST", "/api/v1/sandboxes", json_body=in_strings)
    assert status == 201, body  # brackets inside strings are text, not nesting
    status, err, _ = await api.call("POST", "/api/v1/sandboxes", data=b" " * (2 << 20),
                                    headers=json_headers)
    assert status == 413 and "larger than" in err["error"]["message"]

    bad = sandbox("bad")
    bad["spec"]["forks"][0]["endpoints"] = ["no-port-here"]
    status, err, _ = await api.call("POST", "/api/v1/sandboxes", json_body=bad)
    assert status == 422 and err["error"]["reason"] == "Invalid"
    assert [d["field"] for d in err["error"]["details"]] == ["spec.forks[0].endpoints[0]"]

    split = {
        "metadata": {"name": "canary"},
        "spec": {"service": "web", "destinations": [
            {"name": "a", "weight": 0, "endpoints": ["127.0.0.1:9"]}]},
    }
    status, err, _ = await api.call("POST", "/api/v1/splits", json_body=split)
    assert status == 422, "an invalid rule is refused, never pushed"
    assert "positive weight" in err["error"]["message"]

    status, err, _ = await api.call("POST", "/api/v1/services", json_body=SERVICE)
    assert status == 409 and "already exists" in err["error"]["message"]

    status, first, _ = await api.call("POST", "/api/v1/sandboxes", json_body=sandbox("one"))
    dup = sandbox("two", routingKey=first["spec"]["routingKey"])
    status, err, _ = await api.call("POST", "/api/v1/sandboxes", json_body=dup)
    assert status == 409 and "already used by sandboxes/one" in err["error"]["message"]
    group = {"metadata": {"name": "g"},
             "spec": {"selector": {"a": "b"}, "routingKey": first["spec"]["routingKey"]}}
    status, err, _ = await api.call("POST", "/api/v1/routegroups", json_body=group)
    assert status == 409, "keys are unique across sandboxes and route groups"

    status, err, _ = await api.call("GET", "/api/v1/sandboxes?labelSelector=a%20in%20b")
    assert status == 400 and "labelSelector" in err["error"]["message"]
    status, err, _ = await api.call("GET", "/api/v1/sandboxes?limit=0")
    assert status == 400
    status, err, _ = await api.call("PUT", "/api/v1/sandboxes/other", json_body=sandbox("one"))
    assert status == 400 and "does not match" in err["error"]["message"]
    status, err, _ = await api.call(
        "PUT", "/api/v1/sandboxes/one", json_body=sandbox("one"), headers={"If-Match": '"x"'}
    )
    assert status == 400
    status, err, _ = await api.call("GET", "/api/v1/widgets")
    assert status == 404 and err["error"]["reason"] == "NotFound"
    status, err, _ = await api.call("PATCH", "/api/v1/sandboxes/one", json_body={})
    assert status == 405 and "error" in err


async def test_token_and_role_matrix(api: Api) -> None:
    status, err, headers = await api.call("GET", "/api/v1/sandboxes", token=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert err["error"]["reason"] == "Unauthorized"
    status, err, _ = await api.call("GET", "/api/v1/sandboxes", token="flk_abc_def")
    assert status == 401 and "invalid" in err["error"]["message"]
    status, _, _ = await api.call("GET", "/api/v1/sandboxes", token="garbage")
    assert status == 401

    alice = await api.token("alice", "developer")
    bob = await api.token("bob", "developer")
    proxy = await api.token("proxy-1", "proxy")
    assert alice.startswith("flk_") and alice != bob

    status, err, _ = await api.call("POST", "/api/v1/services", token=alice, json_body=SERVICE)
    assert status == 403 and "only admins" in err["error"]["message"]
    await api.call("POST", "/api/v1/services", json_body=SERVICE)
    status, _, _ = await api.call("GET", "/api/v1/services/web", token=alice)
    assert status == 200, "developers read services"

    status, sb, _ = await api.call("POST", "/api/v1/sandboxes", token=alice, json_body=sandbox("a1"))
    assert status == 201 and sb["metadata"]["createdBy"] == "alice"
    status, err, _ = await api.call("GET", "/api/v1/sandboxes/a1", token=bob)
    assert status == 403 and "alice" in err["error"]["message"]
    status, _, _ = await api.call("DELETE", "/api/v1/sandboxes/a1", token=bob)
    assert status == 403
    status, _, _ = await api.call("PUT", "/api/v1/sandboxes/a1", token=bob, json_body=sandbox("a1"))
    assert status == 403
    status, page, _ = await api.call("GET", "/api/v1/sandboxes", token=bob)
    assert status == 200 and page["items"] == [], "developers list only their own sandboxes"
    status, page, _ = await api.call("GET", "/api/v1/sandboxes", token=alice)
    assert [s["metadata"]["name"] for s in page["items"]] == ["a1"]

    status, err, _ = await api.call("POST", "/api/v1/sandboxes", token=proxy, json_body=sandbox("p"))
    assert status == 403 and "proxy" in err["error"]["message"]
    status, _, _ = await api.call("GET", "/api/v1/snapshot", token=proxy)
    assert status == 200

    status, _, _ = await api.call("GET", "/api/v1/audit", token=alice)
    assert status == 403
    status, _, _ = await api.call(
        "POST", "/api/v1/tokens", token=alice, json_body={"subject": "x", "role": "admin"}
    )
    assert status == 403
    status, err, _ = await api.call(
        "POST", "/api/v1/tokens", json_body={"subject": "x", "role": "root"}
    )
    assert status == 422 and err["error"]["details"][0]["field"] == "role"

    status, _, _ = await api.call("DELETE", "/api/v1/sandboxes/a1", token=alice)
    assert status == 200
    status, audit, _ = await api.call("GET", "/api/v1/audit")
    assert status == 200
    trail = [(e["subject"], e["verb"], e["resource"], e["name"]) for e in audit["items"]]
    assert ("alice", "create", "sandboxes", "a1") in trail
    assert ("alice", "delete", "sandboxes", "a1") in trail
    deleted = next(e for e in audit["items"] if e["verb"] == "delete")
    assert deleted["generationBefore"] == 1 and "generationAfter" not in deleted


async def test_every_route_the_server_serves_is_in_its_openapi_document(api: Api) -> None:
    """A client generated from the document reaches everything the server answers, the tap
    and `forklane connect` included (they were served undocumented)."""
    _, doc, _ = await api.call("GET", "/api/v1/openapi.json", token=None)
    documented = {(method.upper(), path) for path, item in doc["paths"].items()
                  for method in item if method != "parameters"}
    runner = api.plane._runner  # the server's own route table, not a copy of it
    assert runner is not None
    served: set[tuple[str, str]] = set()
    for route in runner.app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD beside every GET
        path = route.resource.canonical if route.resource is not None else ""
        if "{plural}" in path:  # one route for every kind, `{plural:sandboxes|services|…}`
            served |= {(route.method, path.replace("{plural}", plural)) for plural in KINDS}
        else:
            served.add((route.method, path))
    assert served - documented == set()
    assert ("GET", "/api/v1/sandboxes/{name}/connect") in documented


async def test_openapi_health_and_snapshot(api: Api) -> None:
    status, doc, _ = await api.call("GET", "/api/v1/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.")
    assert "/api/v1/sandboxes/{name}" in doc["paths"]
    assert "routingKey" in doc["components"]["schemas"]["SandboxSpec"]["properties"]
    assert (await api.call("GET", "/healthz", token=None))[0] == 200
    assert (await api.call("GET", "/readyz", token=None))[0] == 200

    await api.call("POST", "/api/v1/services", json_body=SERVICE)
    _, sb, _ = await api.call("POST", "/api/v1/sandboxes", json_body=sandbox("s"))
    key = sb["spec"]["routingKey"]

    async def fork_published() -> bool:
        _, snap, _ = await api.call("GET", "/api/v1/snapshot")
        return any(f["routing_key"] == key for f in snap["forks"])

    await eventually(fork_published)
    await api.call("DELETE", "/api/v1/sandboxes/s")

    async def fork_withdrawn() -> bool:
        return not await fork_published()

    await eventually(fork_withdrawn)


async def test_broken_split_reported_in_status_not_pushed(api: Api) -> None:
    await api.call("POST", "/api/v1/services", json_body=SERVICE)
    orphan = {
        "metadata": {"name": "orphan"},
        "spec": {"service": "ghost", "destinations": [
            {"name": "a", "weight": 1, "endpoints": ["127.0.0.1:9"]}]},
    }
    status, err, _ = await api.call("POST", "/api/v1/splits", json_body=orphan)
    assert status == 422, "a reference to an unknown service is rejected at once"
    assert err["error"]["details"] == [
        {"field": "spec.service", "message": "unknown service 'ghost': create it first"}]
    status, _, _ = await api.call("GET", "/api/v1/splits/orphan")
    assert status == 404
    # a service deleted after the split was made is judged later: the split is Failed
    ghost = {**SERVICE, "metadata": {"name": "ghost"}}
    assert (await api.call("POST", "/api/v1/services", json_body=ghost))[0] == 201
    assert (await api.call("POST", "/api/v1/splits", json_body=orphan))[0] == 201
    assert (await api.call("DELETE", "/api/v1/services/ghost"))[0] == 200

    async def failed() -> bool:
        _, got, _ = await api.call("GET", "/api/v1/splits/orphan")
        return bool(got.get("status", {}).get("phase") == "Failed")

    await eventually(failed)
    _, got, _ = await api.call("GET", "/api/v1/splits/orphan")
    cond = next(c for c in got["status"]["conditions"] if c["type"] == "Compiled")
    assert cond["status"] == "False" and "ghost" in cond["message"]
    _, snap, _ = await api.call("GET", "/api/v1/snapshot")
    assert snap["splits"] == [] and [s["name"] for s in snap["services"]] == ["web"]


async def test_no_auth_mode_accepts_anonymous_callers(tmp_path: Path) -> None:
    """`auth: false` (local demo only): no token needed, the caller acts as an admin."""
    settings = Settings(listen="127.0.0.1:0", data_dir=tmp_path, auth=False, replica="demo")
    plane = ControlPlane(settings, with_push=False)
    await plane.start()
    try:
        assert plane.api_address is not None
        base = f"http://127.0.0.1:{plane.api_address[1]}/api/v1"
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/services", json=SERVICE) as resp:
                assert resp.status == 201
                assert (await resp.json())["metadata"]["createdBy"] == "anonymous"
            async with session.post(
                f"{base}/tokens", json={"subject": "x", "role": "developer"}
            ) as resp:
                assert resp.status == 400, "tokens are refused when they would not be checked"
    finally:
        await plane.aclose()
