"""The SDK against a real control plane process: every resource, every error, sandboxes.

Each scenario runs with the sync and the async client. Fork destinations are real listening
sockets on 127.0.0.1, so the control plane's reachability probe sees them as it would in a
cluster; a closed port plays an unreachable fork.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from forklane import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
    WaitTimeout,
)
from forklane._core import build_sandbox
from forklane.controlplane.wire import ServiceResource, Split
from tests.sdk.controlplane_proc import ControlPlane, tcp_listener
from tests.sdk.sdk_support import Both, with_sandbox


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def listener() -> Iterator[str]:
    with tcp_listener() as endpoint:
        yield endpoint


@pytest.fixture
def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def service(name: str, endpoint: str, **labels: str) -> ServiceResource:
    return ServiceResource.model_validate(
        {
            "metadata": {"name": name, "labels": labels},
            "spec": {"endpoints": [endpoint], "authorities": [f"{name}.test"]},
        }
    )


def admin(cp: ControlPlane, mode: str) -> Both:
    return Both(mode, cp.url, cp.token)


async def make_service(cp: ControlPlane, endpoint: str) -> str:
    name = unique("svc")
    await admin(cp, "async").run(lambda c: c.services.create(service(name, endpoint)))
    return name


async def test_service_crud_round_trip(
    controlplane: ControlPlane, mode: str, listener: str
) -> None:
    client = admin(controlplane, mode)
    name = unique("svc")
    created = await client.run(lambda c: c.services.create(service(name, listener, team="pay")))
    assert created.metadata.name == name and created.metadata.resource_version
    got = await client.run(lambda c: c.services.get(name))
    assert got.spec.endpoints == [listener]
    listed = await client.run(lambda c: c.services.list({"team": "pay"}))
    assert name in [s.metadata.name for s in listed]
    assert name not in [
        s.metadata.name for s in await client.run(lambda c: c.services.list({"team": "nobody"}))
    ]

    changed = got.model_copy(update={"spec": got.spec.model_copy(update={"lb": "least_request"})})
    updated = await client.run(lambda c: c.services.update(changed))
    assert updated.spec.lb == "least_request"
    assert updated.metadata.generation == (got.metadata.generation or 0) + 1
    with pytest.raises(Conflict):  # `changed` still names the old resourceVersion
        await client.run(lambda c: c.services.update(changed))

    await client.run(lambda c: c.services.delete(name))
    with pytest.raises(NotFound, match=name):
        await client.run(lambda c: c.services.get(name))


async def test_creating_a_taken_name_is_a_conflict(
    controlplane: ControlPlane, mode: str, listener: str
) -> None:
    name = await make_service(controlplane, listener)
    with pytest.raises(Conflict):
        await admin(controlplane, mode).run(lambda c: c.services.create(service(name, listener)))


async def test_server_side_validation_names_the_field(
    controlplane: ControlPlane, mode: str, listener: str
) -> None:
    bad = ServiceResource.model_validate(
        {
            "metadata": {"name": unique("svc")},
            # valid by the wire schema (checked in the SDK); only the server knows a port
            # may be listed once
            "spec": {"endpoints": [listener], "ports": [
                {"port": 80, "endpoints": [listener]}, {"port": 80, "endpoints": [listener]}]},
        }
    )
    with pytest.raises(Invalid) as info:
        await admin(controlplane, mode).run(lambda c: c.services.create(bad))
    assert info.value.status == 422
    assert any(path.startswith("spec") for path, _ in info.value.fields), info.value.fields


async def test_a_bad_token_is_unauthorized(controlplane: ControlPlane, mode: str) -> None:
    with pytest.raises(Unauthorized):
        await Both(mode, controlplane.url, "not-a-valid-token").run(lambda c: c.services.list())


async def test_no_token_is_unauthorized(controlplane: ControlPlane, mode: str) -> None:
    with pytest.raises(Unauthorized):
        await Both(mode, controlplane.url, None).run(lambda c: c.sandboxes.list())


def developer_token(cp: ControlPlane, subject: str) -> str:
    r = httpx.post(
        f"{cp.url}/api/v1/tokens",
        json={"subject": subject, "role": "developer"},
        headers={"authorization": f"Bearer {cp.token}"},
    )
    r.raise_for_status()
    return str(r.json()["token"])


async def test_a_developer_may_not_touch_services(
    controlplane: ControlPlane, mode: str, listener: str
) -> None:
    dev = Both(mode, controlplane.url, developer_token(controlplane, "dev-a"))
    with pytest.raises(Forbidden):
        await dev.run(lambda c: c.services.create(service(unique("svc"), listener)))


async def test_sandbox_context_manager_end_to_end(
    controlplane: ControlPlane, mode: str, listener: str
) -> None:
    svc = await make_service(controlplane, listener)
    client = admin(controlplane, mode)
    name = unique("sb")
    seen: dict[str, Any] = {}

    def body(sb: Any) -> None:
        seen.update(name=sb.name, key=sb.routing_key, headers=dict(sb.headers))

    await client.run(with_sandbox([f"{svc}={listener}"], body, name=name, ttl="10m"))
    key = seen["key"]
    assert seen["name"] == name
    assert len(key) >= 26 and key.isalnum() and key == key.lower()  # 128 bits, [a-z0-9]
    assert seen["headers"] == {
        "x-forklane-routing-key": key,
        "baggage": f"forklane-routing-key={key}",
    }
    with pytest.raises(NotFound):
        await client.run(lambda c: c.sandboxes.get(name))


async def test_sandbox_is_deleted_when_the_body_raises(
    controlplane: ControlPlane, mode: str, listener: str
) -> None:
    svc = await make_service(controlplane, listener)
    client = admin(controlplane, mode)
    name = unique("sb")

    def body(sb: Any) -> None:
        raise RuntimeError("test body failed")

    with pytest.raises(RuntimeError, match="test body failed"):
        await client.run(with_sandbox([f"{svc}={listener}"], body, name=name))
    with pytest.raises(NotFound):
        await client.run(lambda c: c.sandboxes.get(name))


async def test_unreachable_fork_times_out_naming_the_reason_and_is_cleaned_up(
    controlplane: ControlPlane, mode: str, listener: str, closed_port: str
) -> None:
    svc = await make_service(controlplane, listener)
    client = admin(controlplane, mode)
    name = unique("sb")
    with pytest.raises(WaitTimeout) as info:
        await client.run(
            with_sandbox([f"{svc}={closed_port}"], lambda sb: None, name=name, timeout=1.5)
        )
    text = str(info.value)
    assert name in text and "phase Pending" in text
    assert "Reachable=False" in text and closed_port in text
    with pytest.raises(NotFound):
        await client.run(lambda c: c.sandboxes.get(name))


async def test_forking_an_unknown_service_is_invalid_at_once_and_nothing_is_made(
    controlplane: ControlPlane, mode: str, listener: str
) -> None:
    client = admin(controlplane, mode)
    name = unique("sb")
    ghost = unique("ghost")
    with pytest.raises(Invalid) as info:
        await client.run(with_sandbox([f"{ghost}={listener}"], lambda sb: None, name=name))
    assert info.value.status == 422
    assert info.value.fields == [
        ("spec.forks[0].service", f"unknown service {ghost!r}: create it first")]
    with pytest.raises(NotFound):
        await client.run(lambda c: c.sandboxes.get(name))


async def test_extend_and_wait_ready(controlplane: ControlPlane, mode: str, listener: str) -> None:
    svc = await make_service(controlplane, listener)
    client = admin(controlplane, mode)
    wanted = build_sandbox([f"{svc}={listener}"], name=unique("sb"), ttl="10m")
    created = await client.run(lambda c: c.sandboxes.create(wanted))
    try:
        ready = await client.run(lambda c: c.wait_ready(created.metadata.name, 20))
        assert ready.status.phase == "Ready"
        extended = await client.run(lambda c: c.sandboxes.extend(created.metadata.name, "2h"))
        assert extended.spec.ttl.seconds >= 2 * 3600
        assert extended.spec.routing_key == ready.status.routing_key  # the key survives updates
    finally:
        await client.run(lambda c: c.sandboxes.delete(created.metadata.name))


async def test_split_apply_creates_then_replaces(
    controlplane: ControlPlane, mode: str, listener: str
) -> None:
    svc = await make_service(controlplane, listener)
    client = admin(controlplane, mode)

    def split(weights: tuple[int, int]) -> Split:
        return Split.model_validate(
            {
                "metadata": {"name": svc},
                "spec": {
                    "service": svc,
                    "sticky": {"header": "x-user"},
                    "destinations": [
                        {"name": "v1", "weight": weights[0], "endpoints": [listener]},
                        {"name": "v2", "weight": weights[1], "endpoints": [listener]},
                    ],
                },
            }
        )

    first = await client.run(lambda c: c.splits.apply(split((90, 10))))
    second = await client.run(lambda c: c.splits.apply(split((50, 50))))
    assert [d.weight for d in second.spec.destinations] == [50, 50]
    assert second.metadata.uid == first.metadata.uid
    await client.run(lambda c: c.splits.delete(svc))


async def test_proxies_and_snapshot(controlplane: ControlPlane, mode: str, listener: str) -> None:
    await make_service(controlplane, listener)
    client = admin(controlplane, mode)
    proxies = await client.run(lambda c: c.proxies())
    assert proxies == []  # nothing connected in this test
    snapshot = await client.run(lambda c: c.snapshot())
    assert "version" in snapshot and json.dumps(snapshot)


async def test_dicts_and_models_give_the_same_resource(
    controlplane: ControlPlane, mode: str, listener: str
) -> None:
    client = admin(controlplane, mode)
    name = unique("svc")
    as_dict = {"metadata": {"name": name, "labels": {"by": "dict"}},
               "spec": {"endpoints": [listener], "authorities": [f"{name}.dict"]}}  # fmt: skip
    from_dict = await client.run(lambda c: c.services.create(as_dict))
    as_model = ServiceResource.model_validate(
        {"metadata": {"name": unique("svc")},
         "spec": {"endpoints": [listener], "authorities": [f"{name}.dict.model"]}})  # fmt: skip
    from_model = await client.run(lambda c: c.services.create(as_model))
    assert type(from_dict) is type(from_model)
    assert from_dict.spec.endpoints == from_model.spec.endpoints == [listener]
    assert from_dict.metadata.labels == {"by": "dict"}
    applied = await client.run(lambda c: c.services.apply({**as_dict, "spec": {
        **as_dict["spec"], "lb": "least_request"}}))  # fmt: skip
    assert applied.spec.lb == "least_request"


async def test_every_validation_problem_is_invalid_with_field_paths(
    controlplane: ControlPlane, mode: str
) -> None:
    client = admin(controlplane, mode)
    bad = {"metadata": {"name": "Not A Name"}, "spec": {"endpoints": ["nope"]}}
    with pytest.raises(Invalid) as info:
        await client.run(lambda c: c.services.create(bad))
    paths = [path for path, _ in info.value.fields]
    assert paths == ["metadata.name", "spec.endpoints[0]"]
    with pytest.raises(Invalid) as ttl:
        build_sandbox(["pricing=127.0.0.1:1"], ttl="soon")
    assert ttl.value.fields[0][0] == "spec.ttl"
    assert isinstance(ttl.value, ValueError)  # code that caught ValueError keeps working


def test_watch_sees_a_change_sync(controlplane: ControlPlane, listener: str) -> None:
    from forklane import Client

    with Client(controlplane.url, controlplane.token) as client:
        start = client.call("GET", "/api/v1/services")["metadata"]["resourceVersion"]
        name = unique("svc")
        client.services.create(service(name, listener))
        for event in client.watch("services", resource_version=start, timeout=20):
            if event.type == "ADDED" and event.object["metadata"]["name"] == name:
                break
        else:
            raise AssertionError("the watch ended without the ADDED event")
