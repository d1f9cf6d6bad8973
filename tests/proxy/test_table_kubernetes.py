"""What a discovered Kubernetes service looks like in the table: the bare Service name only
in its own namespace, one set of endpoints per Service port, and a service with no ready
endpoint that is still known (503 `no-endpoints`, not 404 `no-route`)."""

from __future__ import annotations

from typing import Any

import pytest

from forklane.proxy.routing import RequestView, decide
from forklane.proxy.schema import RoutingSnapshot
from forklane.proxy.table import RoutingTable, build_table


def _pricing(namespace: str, pod: str) -> dict[str, Any]:
    """A two-port Service as the compiler emits it: http 80 -> 8080, grpc 9090 -> 9090."""
    names = [f"pricing.{namespace}", f"pricing.{namespace}.svc",
             f"pricing.{namespace}.svc.cluster.local"]
    return {
        "name": f"pricing.{namespace}",
        "namespace": namespace,
        "authorities": [*names, *(f"{n}:{p}" for n in names for p in (80, 9090))],
        "namespace_authorities": ["pricing", "pricing:80", "pricing:9090"],
        "endpoints": [f"{pod}:8080"],
        "ports": [
            {"port": 80, "endpoints": [f"{pod}:8080"]},
            {"port": 9090, "endpoints": [f"{pod}:9090"]},
        ],
    }


SNAPSHOT = RoutingSnapshot.model_validate(
    {
        "version": "k1",
        "services": [
            _pricing("shop", "10.1.0.5"),
            _pricing("bank", "10.2.0.5"),
            {"name": "pricing", "endpoints": ["10.9.9.9:80"]},  # a hand-made one, same name
            {"name": "idle.shop", "namespace": "shop", "namespace_authorities": ["idle"],
             "endpoints": []},
        ],
    }
)


def _where(table: RoutingTable, authority: str) -> tuple[str | None, str | None]:
    decision = decide(RequestView("outbound", "GET", "/", authority, {}), table, lambda: 0.5)
    dest = decision.route.destination
    return decision.route.service, (dest.endpoints[0].address if dest else decision.route.error)


@pytest.mark.parametrize(
    ("namespace", "authority", "expected"),
    [
        # the bare name resolves in the proxy's own namespace, before any hand-made service
        ("shop", "pricing", ("pricing.shop", "10.1.0.5:8080")),
        ("shop", "pricing:9090", ("pricing.shop", "10.1.0.5:9090")),
        ("bank", "pricing", ("pricing.bank", "10.2.0.5:8080")),
        # elsewhere the bare name is the hand-made service, as before
        ("", "pricing", ("pricing", "10.9.9.9:80")),
        ("other", "pricing", ("pricing", "10.9.9.9:80")),
        # qualified names work from everywhere, each port to its own target port
        ("bank", "pricing.shop", ("pricing.shop", "10.1.0.5:8080")),
        ("bank", "pricing.shop.svc.cluster.local:9090", ("pricing.shop", "10.1.0.5:9090")),
        ("", "pricing.bank.svc:80", ("pricing.bank", "10.2.0.5:8080")),
        # scaled to zero: known, but nowhere to go
        ("shop", "idle", ("idle.shop", "no-endpoints")),
        ("bank", "idle", (None, "no-route")),
    ],
)
def test_authority_resolution(namespace: str, authority: str, expected: tuple[str, str]) -> None:
    assert _where(build_table(SNAPSHOT, namespace=namespace), authority) == expected


def test_same_bare_name_in_two_namespaces_validates_but_not_twice_in_one() -> None:
    doc = SNAPSHOT.model_dump(mode="json")
    doc["services"][1]["namespace"] = "shop"
    with pytest.raises(ValueError, match=r"names both 'pricing\.shop' and 'pricing\.bank' in"):
        RoutingSnapshot.model_validate(doc)
