"""What one developer's token may learn of another's: keys stay with their owners (the
snapshot view, a taken key), every refused call is audited, and each non-admin token has a
request budget (429 with Retry-After)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import ADMIN_TOKEN, Api, serve_api

from forklane.controlplane.ratelimit import RateLimiter
from forklane.controlplane.settings import Settings

SERVICE = {"metadata": {"name": "web"}, "spec": {"endpoints": ["127.0.0.1:9"]}}


def sandbox(name: str, key: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {
        "forks": [{"service": "web", "endpoints": ["127.0.0.1:9"]}], "routingKey": key}}


async def _snapshot_has(api: Api, key: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        _, snap, _ = await api.call("GET", "/api/v1/snapshot")
        if any(f["routing_key"] == key for f in snap["forks"]):
            return
        assert loop.time() < deadline, "the snapshot never carried the key"
        await asyncio.sleep(0.05)


async def test_a_developer_sees_only_its_own_keys(api: Api) -> None:
    alice = await api.token("alice", "developer")
    bob = await api.token("bob", "developer")
    assert (await api.call("POST", "/api/v1/services", json_body=SERVICE))[0] == 201
    for token, name in ((alice, "alice"), (bob, "bob")):
        status, body, _ = await api.call("POST", "/api/v1/sandboxes", token=token,
                                         json_body=sandbox(f"{name}-sb", f"{name}-key"))
        assert status == 201, body
    await _snapshot_has(api, "alice-key")
    await _snapshot_has(api, "bob-key")

    _, seen, _ = await api.call("GET", "/api/v1/snapshot", token=alice)
    assert [f["routing_key"] for f in seen["forks"]] == ["alice-key"]
    _, everything, _ = await api.call("GET", "/api/v1/snapshot")  # admin: all of it
    assert {f["routing_key"] for f in everything["forks"]} == {"alice-key", "bob-key"}

    # a taken key: the owner's peers learn who holds it, others only that it is taken
    status, err, _ = await api.call("POST", "/api/v1/sandboxes", token=alice,
                                    json_body=sandbox("alice-2", "bob-key"))
    assert status == 409 and "bob" not in err["error"]["message"]
    status, err, _ = await api.call("POST", "/api/v1/sandboxes", token=bob,
                                    json_body=sandbox("bob-2", "bob-key"))
    assert status == 409 and "sandboxes/bob-sb" in err["error"]["message"]


async def test_every_refused_call_is_audited(api: Api) -> None:
    alice = await api.token("alice", "developer")
    assert (await api.call("GET", "/api/v1/tokens", token=alice))[0] == 403
    assert (await api.call("GET", "/api/v1/sandboxes", token="not-a-token"))[0] == 401
    _, audit, _ = await api.call("GET", "/api/v1/audit")
    denied = [e for e in audit["items"] if e["verb"].startswith("denied-")]
    assert [(e["subject"], e["verb"], e["resource"]) for e in denied] == [
        ("alice", "denied-get", "tokens"), ("(no valid token)", "denied-get", "sandboxes")]
    assert "403" in denied[0]["name"] and "401" in denied[1]["name"]


@pytest.fixture
async def limited_api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings(listen="127.0.0.1:0", store="sqlite", data_dir=tmp_path,
                        admin_token=ADMIN_TOKEN, replica="test", api_rate_limit=0.1,
                        api_rate_burst=3)
    async with serve_api(settings) as api:
        yield api


async def test_each_token_has_a_request_budget(limited_api: Api) -> None:
    api = limited_api
    alice = await api.token("alice", "developer")
    bob = await api.token("bob", "developer")
    statuses = [(await api.call("GET", "/api/v1/services", token=alice))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    status, err, headers = await api.call("GET", "/api/v1/services", token=alice)
    assert status == 429 and err["error"]["reason"] == "TooManyRequests"
    assert int(headers["Retry-After"]) >= 1
    assert (await api.call("GET", "/api/v1/services", token=bob))[0] == 200  # bob's own budget
    admin = [(await api.call("GET", "/api/v1/services"))[0] for _ in range(5)]
    assert admin == [200] * 5  # admins are not limited
    _, audit, _ = await api.call("GET", "/api/v1/audit")
    assert any(e["verb"] == "denied-get" and "429" in e["name"] for e in audit["items"])


async def test_one_subject_name_in_two_tenants_has_two_budgets(limited_api: Api) -> None:
    api = limited_api
    tokens = []
    for tenant in ("team-a", "team-b"):
        status, made, _ = await api.call("POST", "/api/v1/tokens", json_body={
            "subject": "alice", "role": "developer", "tenant": tenant})
        assert status == 201, made
        tokens.append(made["token"])
    statuses = [(await api.call("GET", "/api/v1/services", token=tokens[0]))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert (await api.call("GET", "/api/v1/services", token=tokens[1]))[0] == 200


def test_the_limiter_refills_and_stays_bounded() -> None:
    limiter = RateLimiter(rate=2.0, burst=2, max_keys=3)
    assert [limiter.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert limiter.take("a", 0.5) == 0.0  # one token back after half a second
    for key in "bcdef":
        limiter.take(key, 10.0)
    assert len(limiter._buckets) <= 3
    assert RateLimiter(rate=0, burst=0).take("x", 0.0) == 0.0
