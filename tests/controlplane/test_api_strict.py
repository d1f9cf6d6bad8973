"""Strict validation at the REST boundary: what is not exactly right is a clear 4xx, and
nothing of it is stored. Also: the OpenAPI document states the limits the server enforces."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

from conftest import Api

from forklane.controlplane.openapi import OPENAPI

SERVICE = {"metadata": {"name": "web"}, "spec": {"endpoints": ["127.0.0.1:9"]}}
SANDBOX = {
    "metadata": {"name": "sb", "labels": {"team": "a"}},
    "spec": {"forks": [{"service": "web", "endpoints": ["127.0.0.1:9"]}],
             "ttl": {"seconds": 600}},
}
SPLIT = {
    "metadata": {"name": "sp"},
    "spec": {"service": "web",
             "destinations": [{"name": "v2", "weight": 10, "endpoints": ["127.0.0.1:9"]}]},
}
GROUP = {"metadata": {"name": "rg"}, "spec": {"selector": {"team": "a"}}}
SERVICE2 = {"metadata": {"name": "api"},
            "spec": {"endpoints": ["127.0.0.1:9"], "authorities": ["api.example:8080"]}}


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return out


# (plural, valid template, field path, wrong value): each one alone makes the document invalid
MUTATIONS: list[tuple[str, dict[str, Any], str, Any]] = [
    ("sandboxes", SANDBOX, "spec.ttl.seconds", "3600"),
    ("sandboxes", SANDBOX, "spec.ttl.seconds", True),
    ("sandboxes", SANDBOX, "spec.ttl.seconds", 3600.5),
    ("sandboxes", SANDBOX, "spec.forks.0.endpoints.0", "127.0.0.1:0"),
    ("sandboxes", SANDBOX, "spec.forks.0.endpoints.0", "127.0.0.1:99999"),
    ("sandboxes", SANDBOX, "spec.forks.0.endpoints.0", "127.0.0.1:65536"),
    ("sandboxes", SANDBOX, "spec.forks.0.endpoints.0", "h" * 100_000 + ":80"),
    ("sandboxes", SANDBOX, "spec.forks.0.endpoints.0", 8080),
    ("sandboxes", SANDBOX, "metadata.bogus", "x"),
    ("sandboxes", SANDBOX, "metadata.labels.team", 1),
    ("sandboxes", SANDBOX, "metadata.labels", {f"k{i}": "v" for i in range(65)}),
    ("sandboxes", SANDBOX, "metadata.name", "x" * 64),
    ("sandboxes", SANDBOX, "spec.description", "d" * 5000),
    ("sandboxes", SANDBOX, "spec.routingKey", "k" * 129),
    ("sandboxes", SANDBOX, "spec.fallback", 1),
    ("sandboxes", SANDBOX, "spec.extra", 1),
    ("splits", SPLIT, "spec.destinations.0.weight", True),
    ("splits", SPLIT, "spec.destinations.0.weight", "10"),
    ("splits", SPLIT, "spec.destinations.0.endpoints.0", "127.0.0.1:99999"),
    ("splits", SPLIT, "spec.destinations.0.name", ""),
    ("services", SERVICE2, "spec.authorities.0", "h" * 100_000),
    ("services", SERVICE2, "spec.authorities.0", "api.example:99999"),
    ("services", SERVICE2, "spec.authorities.0", "api.example:0"),
    ("services", SERVICE2, "spec.endpoints.0", "[::1]:70000"),
    ("services", SERVICE2, "spec.timeouts", {"connect": "1"}),
    ("services", SERVICE2, "spec.ports", [{"port": "80", "endpoints": ["127.0.0.1:9"]}]),
    ("routegroups", GROUP, "spec.selector", {"team": True}),
    ("routegroups", GROUP, "metadata.nope", {}),
]


def invalid_documents() -> Iterator[tuple[str, dict[str, Any], str]]:
    for plural, template, path, value in MUTATIONS:
        yield plural, _set(template, path, value), path


async def test_no_invalid_resource_is_stored(api: Api) -> None:
    assert (await api.call("POST", "/api/v1/services", json_body=SERVICE))[0] == 201
    rejected = 0
    for plural, doc, path in invalid_documents():
        status, body, _ = await api.call("POST", f"/api/v1/{plural}", json_body=doc)
        assert status == 422, (path, status, body)
        assert body["error"]["reason"] == "Invalid"
        fields = [d["field"] for d in body["error"]["details"]]
        wanted = re.sub(r"\.(\d+)", r"[\1]", path)
        assert any(f == wanted or f.startswith(wanted) or wanted.startswith(f)
                   for f in fields), (path, fields)
        rejected += 1
    assert rejected == len(MUTATIONS)
    for plural in ("sandboxes", "splits", "routegroups"):
        _, listed, _ = await api.call("GET", f"/api/v1/{plural}")
        assert listed["items"] == [], (plural, listed["items"])
    _, listed, _ = await api.call("GET", "/api/v1/services")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["web"]


async def test_valid_documents_still_pass_and_round_trip(api: Api) -> None:
    """The strict boundary takes what it hands out: a document read back is accepted again,
    server-managed metadata and status included."""
    assert (await api.call("POST", "/api/v1/services", json_body=SERVICE))[0] == 201
    assert (await api.call("POST", "/api/v1/services", json_body=SERVICE2))[0] == 201
    for plural, doc in (("sandboxes", SANDBOX), ("splits", SPLIT), ("routegroups", GROUP)):
        status, made, _ = await api.call("POST", f"/api/v1/{plural}", json_body=doc)
        assert status == 201, made
        name = made["metadata"]["name"]
        _, current, _ = await api.call("GET", f"/api/v1/{plural}/{name}")
        current["metadata"]["labels"] = {**current["metadata"].get("labels", {}), "x": "y"}
        current["metadata"].pop("resourceVersion")  # last write wins, like apply
        status, updated, _ = await api.call("PUT", f"/api/v1/{plural}/{name}", json_body=current)
        assert status == 200, updated
        assert updated["metadata"]["labels"]["x"] == "y"
    # boundaries: the largest port, a float TTL-free sandbox, an IPv6 endpoint
    edge = _set(SANDBOX, "metadata.name", "edge")
    edge = _set(edge, "spec.forks.0.endpoints", ["[::1]:65535", "localhost:1"])
    status, body, _ = await api.call("POST", "/api/v1/sandboxes", json_body=edge)
    assert status == 201, body


async def test_empty_if_match_and_405_allow(api: Api) -> None:
    assert (await api.call("POST", "/api/v1/services", json_body=SERVICE))[0] == 201
    status, body, _ = await api.call("DELETE", "/api/v1/services/web", headers={"If-Match": ""})
    assert status == 400 and "If-Match" in body["error"]["message"]
    assert "400" in OPENAPI["paths"]["/api/v1/services/{name}"]["delete"]["responses"]
    status, body, headers = await api.call("PATCH", "/api/v1/services/web", json_body={})
    assert status == 405 and body["error"]["status"] == 405
    allowed = {m.strip() for m in headers["Allow"].split(",")}
    assert {"GET", "PUT", "DELETE"} <= allowed and "PATCH" not in allowed


def test_openapi_states_the_limits() -> None:
    schemas = OPENAPI["components"]["schemas"]
    endpoint = schemas["ForkSpec"]["properties"]["endpoints"]["items"]
    assert endpoint["maxLength"] == 259
    port = re.compile(endpoint["pattern"])
    assert port.match("a:65535") and port.match("a:1")
    assert not port.match("a:0") and not port.match("a:65536") and not port.match("a:99999")
    assert schemas["Metadata"]["properties"]["name"]["maxLength"] == 63
    assert "maxLength" in schemas["ServiceSpec"]["properties"]["authorities"]["items"]
    assert schemas["Metadata"]["additionalProperties"] is False
