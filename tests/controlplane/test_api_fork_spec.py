"""The fork spec over the REST API: a fork of a Deployment is accepted, bad ones get 422 with
the field path, and what only the cluster can tell (no controller, no Deployment) shows in
the sandbox's status instead of failing the request."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from conftest import Api

SERVICE = {"metadata": {"name": "pricing.shop"}, "spec": {"endpoints": ["127.0.0.1:9"]}}
FORK: dict[str, Any] = {
    "service": "pricing.shop",
    "forkOf": {"kind": "Deployment", "namespace": "shop", "name": "pricing"},
    "customizations": {
        "replicas": 2,
        "containers": [{
            "name": "app", "image": "pricing:pr-481", "args": ["--verbose"],
            "env": [{"name": "LOG_LEVEL", "value": "debug"},
                    {"name": "DB_PASSWORD",
                     "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        }],
    },
}


def _sandbox(name: str, *forks: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"forks": list(forks)}}


async def _invalid(api: Api, body: dict[str, Any]) -> list[tuple[str, str]]:
    status, err, _ = await api.call("POST", "/api/v1/sandboxes", json_body=body)
    assert status == 422, err
    assert err["error"]["reason"] == "Invalid"
    return [(d["field"], d["message"]) for d in err["error"]["details"]]


async def test_fork_of_a_deployment_is_stored_as_given(api: Api) -> None:
    await api.call("POST", "/api/v1/services", json_body=SERVICE)
    status, sb, _ = await api.call("POST", "/api/v1/sandboxes", json_body=_sandbox("pr-481", FORK))
    assert status == 201, sb
    fork = sb["spec"]["forks"][0]
    assert fork["forkOf"] == FORK["forkOf"] and fork["customizations"] == FORK["customizations"]
    assert "endpoints" not in fork or fork["endpoints"] == []
    plain = copy.deepcopy(FORK)
    del plain["customizations"]
    status, sb, _ = await api.call("POST", "/api/v1/sandboxes", json_body=_sandbox("p2", plain))
    assert status == 201 and sb["spec"]["forks"][0].get("customizations") is None


async def test_bad_fork_specs_get_422_with_field_paths(api: Api) -> None:
    both = {**FORK, "endpoints": ["127.0.0.1:9"]}
    assert (await _invalid(api, _sandbox("a", both)))[0][0] == "spec.forks[0]"
    neither = {"service": "pricing.shop"}
    assert "forkOf" in (await _invalid(api, _sandbox("a", neither)))[0][1]
    zero = copy.deepcopy(FORK)
    zero["customizations"]["replicas"] = 0
    assert [f for f, _ in await _invalid(api, _sandbox("a", zero))] == [
        "spec.forks[0].customizations.replicas"]
    kind = copy.deepcopy(FORK)
    kind["forkOf"]["kind"] = "StatefulSet"
    assert [f for f, _ in await _invalid(api, _sandbox("a", kind))] == [
        "spec.forks[0].forkOf.kind"]
    quantity = copy.deepcopy(FORK)
    quantity["customizations"]["containers"][0]["resources"] = {"limits": {"cpu": "lots"}}
    assert [f for f, _ in await _invalid(api, _sandbox("a", quantity))] == [
        "spec.forks[0].customizations.containers[0].resources.limits.cpu"]
    twice_env = copy.deepcopy(FORK)
    twice_env["customizations"]["containers"][0]["env"].append({"name": "LOG_LEVEL",
                                                                "value": "info"})
    (field, message), = await _invalid(api, _sandbox("a", twice_env))
    assert field == "spec.forks[0].customizations.containers[0].env"
    assert "env[2]" in message and "LOG_LEVEL" in message
    ref = copy.deepcopy(FORK)
    ref["customizations"]["containers"][0]["env"][1]["valueFrom"] = {}
    (field, message), = await _invalid(api, _sandbox("a", ref))
    assert field == "spec.forks[0].customizations.containers[0].env[1].valueFrom"
    assert "configMapKeyRef or secretKeyRef" in message
    twice = {**FORK, "service": "other.shop"}
    (field, message), = await _invalid(api, _sandbox("a", FORK, twice))
    assert field == "spec.forks" and "forks[1].forkOf" in message and "twice" in message
    status, _, _ = await api.call("GET", "/api/v1/sandboxes/a")
    assert status == 404, "nothing invalid is stored"


async def test_without_a_cluster_the_status_says_so(api: Api) -> None:
    await api.call("POST", "/api/v1/services", json_body=SERVICE)
    status, _, _ = await api.call("POST", "/api/v1/sandboxes", json_body=_sandbox("sb", FORK))
    assert status == 201
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        _, got, _ = await api.call("GET", "/api/v1/sandboxes/sb")
        conds = {c["type"]: c for c in got.get("status", {}).get("conditions", ())}
        if "ForkCreated" in conds:
            break
        assert loop.time() < deadline, got
        await asyncio.sleep(0.05)
    assert conds["ForkCreated"]["status"] == "False"
    assert conds["ForkCreated"]["reason"] == "WaitingForController"
    assert conds["Routed"]["reason"] == "WaitingForFork"
    assert got["status"]["phase"] == "Pending"
