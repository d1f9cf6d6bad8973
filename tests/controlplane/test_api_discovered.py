"""Discovered services over the REST API: listed beside hand-made ones, marked, and never
created, changed or deleted through it (the cluster owns them)."""

from __future__ import annotations

from datetime import UTC, datetime

from conftest import Api

DISCOVERED_SPEC = {
    "authorities": ["pricing.shop.svc", "10.96.0.7:80"],
    "namespace": "shop",
    "namespaceAuthorities": ["pricing"],
    "endpoints": [],
    "discovered": {"kind": "Service", "namespace": "shop", "name": "pricing"},
}


async def _discovered(api: Api) -> None:
    await api.plane.store.create(
        "services", "pricing.shop", labels={}, spec=DISCOVERED_SPEC, status=None,
        created_by="system:discovery", now=datetime.now(UTC),
    )


async def test_discovered_service_is_listed_and_read_only(api: Api) -> None:
    await _discovered(api)
    made = {"metadata": {"name": "web"}, "spec": {"endpoints": ["127.0.0.1:9"]}}
    assert (await api.call("POST", "/api/v1/services", json_body=made))[0] == 201

    status, page, _ = await api.call("GET", "/api/v1/services")
    assert status == 200
    by_name = {s["metadata"]["name"]: s for s in page["items"]}
    assert by_name["pricing.shop"]["spec"]["discovered"]["namespace"] == "shop"
    assert "discovered" not in by_name["web"]["spec"]

    body = {"metadata": {"name": "pricing.shop"}, "spec": {"endpoints": ["127.0.0.1:9"]}}
    status, err, _ = await api.call("PUT", "/api/v1/services/pricing.shop", json_body=body)
    assert status == 409, err
    assert "discovered from the Kubernetes Service shop/pricing" in err["error"]["message"]
    status, err, _ = await api.call("DELETE", "/api/v1/services/pricing.shop")
    assert status == 409 and "change that Service in the cluster" in err["error"]["message"]
    assert (await api.call("GET", "/api/v1/services/pricing.shop"))[0] == 200


async def test_rest_cannot_forge_a_discovered_service(api: Api) -> None:
    body = {"metadata": {"name": "forged.shop"}, "spec": DISCOVERED_SPEC}
    status, err, _ = await api.call("POST", "/api/v1/services", json_body=body)
    assert status == 422
    assert err["error"]["details"] == [
        {"field": "spec.discovered", "message": "set by the control plane's Kubernetes discovery only"}
    ]


async def test_hand_made_service_still_needs_an_endpoint_and_may_hold_dots(api: Api) -> None:
    empty = {"metadata": {"name": "a.b"}, "spec": {"endpoints": []}}
    status, err, _ = await api.call("POST", "/api/v1/services", json_body=empty)
    assert status == 422 and "at least one endpoint" in err["error"]["message"]
    dotted = {"metadata": {"name": "a.b"}, "spec": {"endpoints": ["127.0.0.1:9"]}}
    assert (await api.call("POST", "/api/v1/services", json_body=dotted))[0] == 201
    sandbox = {"metadata": {"name": "sb"},
               "spec": {"forks": [{"service": "a.b", "endpoints": ["127.0.0.1:9"]}]}}
    assert (await api.call("POST", "/api/v1/sandboxes", json_body=sandbox))[0] == 201
    bad = {"metadata": {"name": "a.b"}, "spec": {"forks": sandbox["spec"]["forks"]}}
    assert (await api.call("POST", "/api/v1/sandboxes", json_body=bad))[0] == 422


async def test_metrics_for_a_service_monitor(api: Api) -> None:
    await _discovered(api)
    async with api.session.get(api.base + "/metrics") as resp:  # no token: scrapeable
        assert resp.status == 200
        text = await resp.text()
    assert "forklane_controlplane_proxies 0" in text
    assert "# TYPE forklane_controlplane_snapshot_version gauge" in text


def test_service_resource_takes_plain_metadata_and_checks_the_service_name() -> None:
    import pytest
    from pydantic import ValidationError

    from forklane.controlplane import wire

    made = wire.ServiceResource(metadata=wire.Metadata(name="web"),
                                spec=wire.ServiceSpec(endpoints=["127.0.0.1:9"]))
    assert made.metadata.name == "web"
    with pytest.raises(ValidationError):
        wire.ServiceResource(metadata={"name": "Bad_Name"}, spec=made.spec)
