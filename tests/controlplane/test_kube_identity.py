"""A Kubernetes Service and its EndpointSlices → the discovered service (pure)."""

from __future__ import annotations

from typing import Any

from forklane.controlplane.kubernetes.identity import discovered_spec


def svc(ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "pricing", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"], "ports": ports,
                     **spec}}


def eps(*endpoints: dict[str, Any], ports: list[dict[str, Any]] | None = None,
        address_type: str = "IPv4") -> dict[str, Any]:
    return {"addressType": address_type, "endpoints": list(endpoints),
            "ports": ports if ports is not None else [{"name": "", "port": 8080}]}


def ep(ip: str, **conditions: Any) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": conditions}


def test_names_and_authorities() -> None:
    spec = discovered_spec(svc([{"port": 80, "targetPort": 8080}]), [eps(ep("10.1.0.5"))],
                           "corp.local")
    assert spec is not None and spec.discovered is not None
    assert spec.authorities == ["pricing.shop.svc", "pricing.shop.svc.corp.local",
                                "pricing.shop:80", "pricing.shop.svc:80",
                                "pricing.shop.svc.corp.local:80", "10.96.0.7:80"]
    assert spec.namespace_authorities == ["pricing", "pricing:80"]
    assert spec.endpoints == ["10.1.0.5:8080"] and spec.ports == []
    assert (spec.discovered.namespace, spec.discovered.name) == ("shop", "pricing")


def test_conditions_ready_unset_terminating_and_draining() -> None:
    slices = [eps(ep("10.0.0.1"), ep("10.0.0.2", ready=True), ep("10.0.0.3", ready=False),
                  ep("10.0.0.4", ready=False, serving=True, terminating=True),
                  ep("10.0.0.5", ready=False, serving=False, terminating=True))]
    spec = discovered_spec(svc([{"port": 80, "targetPort": 8080}]), slices)
    assert spec is not None and spec.discovered is not None
    assert spec.endpoints == ["10.0.0.1:8080", "10.0.0.2:8080"], "unset ready counts as ready"
    assert spec.discovered.draining == ["10.0.0.4:8080"]
    only_draining = discovered_spec(svc([{"port": 80, "targetPort": 8080}]), [eps(
        ep("10.0.0.4", ready=False, serving=True, terminating=True))])
    assert only_draining is not None and only_draining.endpoints == ["10.0.0.4:8080"]


def test_named_target_ports_ipv6_and_several_ports() -> None:
    ports = [{"name": "http", "port": 80, "targetPort": "web"},
             {"name": "metrics", "port": 9100, "targetPort": 9100},
             {"name": "dns", "port": 53, "protocol": "UDP"}]
    slices = [eps(ep("fd00::5"), address_type="IPv6",
                  ports=[{"name": "http", "port": 8081}, {"name": "metrics", "port": 9100}]),
              eps(ep("10.0.0.9"), ports=[{"name": "http", "port": 8082}])]
    spec = discovered_spec(svc(ports, clusterIPs=["10.96.0.7", "fd00:96::7"]), slices)
    assert spec is not None
    assert {p.port: p.endpoints for p in spec.ports} == {
        80: ["10.0.0.9:8082", "[fd00::5]:8081"],  # each pod's own resolution of "web"
        9100: ["10.0.0.9:9100", "[fd00::5]:9100"],  # the slice without it: numeric targetPort
    }
    assert "[fd00:96::7]:9100" in spec.authorities and "pricing.shop:53" not in spec.authorities


def test_what_is_not_discovered() -> None:
    assert discovered_spec(svc([{"port": 80}], type="ExternalName"), []) is None
    assert discovered_spec(svc([{"port": 53, "protocol": "UDP"}]), []) is None
    headless = discovered_spec(svc([{"port": 80}], clusterIP="None", clusterIPs=["None"]),
                               [eps(ep("10.0.0.1"), ports=[{"name": "", "port": 80}])])
    assert headless is not None and headless.endpoints == ["10.0.0.1:80"]
    assert not any(a.startswith("None") for a in headless.authorities)
    fqdn = discovered_spec(svc([{"port": 80}]), [eps(ep("db.example"), address_type="FQDN")])
    assert fqdn is not None and fqdn.endpoints == []
