"""Tenants: a developer token acts in one tenant. Another tenant's sandboxes and route groups
are hidden from it (404, as if they did not exist; the refusal is audited), it creates only
in its own tenant, its views of the snapshot and of the routes hold only its own keys, and a
route group selects only sandboxes its creator may use (its own, or shared with it)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ADMIN_TOKEN, Api, StoreFactory, serve_api

from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from forklane.proxy.context.signing import KeyClaims, KeyVerifier, sign_routing_key
from tests.support.polling import eventually

SERVICE = {"metadata": {"name": "web"}, "spec": {"endpoints": ["127.0.0.1:9"]}}


def sandbox(name: str, key: str | None = None, labels: dict[str, str] | None = None,
            service: str = "web", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"forks": [{"service": service, "endpoints": ["127.0.0.1:9"]}], **spec}
    if key is not None:
        body["routingKey"] = key
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": body}


async def token(api: Api, subject: str, tenant: str | None, role: str = "developer") -> str:
    body = {"subject": subject, "role": role, **({"tenant": tenant} if tenant else {})}
    status, made, _ = await api.call("POST", "/api/v1/tokens", json_body=body)
    assert status == 201, made
    assert made.get("tenant") == ((tenant or "default") if role == "developer" else None)
    return str(made["token"])


async def create(api: Api, plural: str, body: dict[str, Any], who: str) -> dict[str, Any]:
    status, made, _ = await api.call("POST", f"/api/v1/{plural}", token=who, json_body=body)
    assert status == 201, made
    return dict(made)


async def forks_of(api: Api, who: str = ADMIN_TOKEN) -> set[str]:
    _, snap, _ = await api.call("GET", "/api/v1/snapshot", token=who)
    return {f["routing_key"] for f in snap["forks"]}


@pytest.fixture
async def api_on(store_factory: StoreFactory, tmp_path: Path) -> AsyncIterator[Api]:
    """A control plane on each store backend (SQLite, and PostgreSQL when it answers)."""
    settings = Settings(listen="127.0.0.1:0", data_dir=tmp_path, admin_token=ADMIN_TOKEN,
                        reconcile_interval=2.0, probe_timeout=0.3, replica="test")
    plane = ControlPlane(settings, store=store_factory(), with_push=False)
    await plane.start()
    assert plane.api_address is not None
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(session, f"http://127.0.0.1:{plane.api_address[1]}", plane)
    finally:
        await plane.aclose()


@pytest.fixture
async def world(api_on: Api) -> dict[str, str]:
    """alice and carol in team-a, bob in team-b; each has a sandbox with its own key, all
    labelled team=pay. alice and bob fork `web`, carol forks `api` (so a group may join
    alice's and carol's, and would fail if it ever took bob's beside alice's)."""
    api = api_on
    for name in ("web", "api"):
        assert (await api.call("POST", "/api/v1/services", json_body={
            "metadata": {"name": name}, "spec": {"endpoints": ["127.0.0.1:9"]}}))[0] == 201
    people = {"alice": ("team-a", "web"), "carol": ("team-a", "api"), "bob": ("team-b", "web")}
    tokens = {who: await token(api, who, tenant) for who, (tenant, _) in people.items()}
    for who, (_, service) in people.items():
        await create(api, "sandboxes", sandbox(f"{who}-sb", f"{who}-key", {"team": "pay"},
                                               service), tokens[who])
    return tokens


async def test_a_developer_creates_in_its_own_tenant_and_admins_in_any(api: Api) -> None:
    assert (await api.call("POST", "/api/v1/services", json_body=SERVICE))[0] == 201
    alice = await token(api, "alice", "team-a")
    made = await create(api, "sandboxes", sandbox("a1"), alice)
    assert made["metadata"]["tenant"] == "team-a"
    status, _, _ = await api.call("POST", "/api/v1/sandboxes", token=alice,
                                  json_body=sandbox("a2") | {"metadata": {"name": "a2",
                                                                          "tenant": "team-a"}})
    assert status == 201  # naming its own tenant is fine

    body = sandbox("a3")
    body["metadata"]["tenant"] = "team-b"
    status, err, _ = await api.call("POST", "/api/v1/sandboxes", token=alice, json_body=body)
    assert status == 403, err
    assert "team-a" in err["error"]["message"] and "team-b" in err["error"]["message"]
    assert (await api.call("GET", "/api/v1/sandboxes/a3"))[0] == 404  # nothing stored

    assert (await create(api, "sandboxes", body, ADMIN_TOKEN))["metadata"]["tenant"] == "team-b"
    assert (await create(api, "sandboxes", sandbox("plain"), ADMIN_TOKEN)
            )["metadata"]["tenant"] == "default"
    for tenant, names in (("team-a", ["a1", "a2"]), ("team-b", ["a3"]), ("nobody", [])):
        _, listed, _ = await api.call("GET", f"/api/v1/sandboxes?tenant={tenant}")
        assert [i["metadata"]["name"] for i in listed["items"]] == names, tenant
    status, err, _ = await api.call("GET", "/api/v1/services?tenant=team-a")
    assert status == 400 and "shared" in err["error"]["message"], err
    group = await create(api, "routegroups", {"metadata": {"name": "g"},
                                              "spec": {"selector": {"a": "b"}}}, alice)
    assert group["metadata"]["tenant"] == "team-a"

    # who a token is, and what a token may carry
    _, me, _ = await api.call("GET", "/api/v1/whoami", token=alice)
    assert (me["subject"], me["role"], me["tenant"]) == ("alice", "developer", "team-a")
    _, me, _ = await api.call("GET", "/api/v1/whoami")
    assert "tenant" not in me  # admins act in every tenant
    for role in ("proxy", "consumer", "admin"):
        status, err, _ = await api.call("POST", "/api/v1/tokens", json_body={
            "subject": "x", "role": role, "tenant": "team-a"})
        assert status == 422 and err["error"]["details"][0]["field"] == "tenant", err
    _, tokens, _ = await api.call("GET", "/api/v1/tokens")
    assert [t.get("tenant") for t in tokens["items"] if t["subject"] == "alice"] == ["team-a"]


async def test_a_tenant_is_fixed_and_only_sandboxes_and_route_groups_have_one(api: Api) -> None:
    assert (await api.call("POST", "/api/v1/services", json_body=SERVICE))[0] == 201
    alice = await token(api, "alice", "team-a")
    made = await create(api, "sandboxes", sandbox("a1"), alice)
    moved = {**made, "metadata": {**made["metadata"], "tenant": "team-b"}}
    status, err, _ = await api.call("PUT", "/api/v1/sandboxes/a1", json_body=moved)
    assert status == 422 and err["error"]["details"][0]["field"] == "metadata.tenant", err
    # a document read back and sent again (kubectl-style apply) keeps it; omitting it too
    again = {**made, "metadata": {**made["metadata"], "labels": {"x": "1"}}}
    again["metadata"].pop("resourceVersion")  # last write wins (a status write may come first)
    status, updated, _ = await api.call("PUT", "/api/v1/sandboxes/a1", token=alice,
                                        json_body=again)
    assert status == 200 and updated["metadata"]["tenant"] == "team-a", updated
    bare = {"metadata": {"name": "a1"}, "spec": made["spec"]}
    status, updated, _ = await api.call("PUT", "/api/v1/sandboxes/a1", token=alice,
                                        json_body=bare)
    assert status == 200 and updated["metadata"]["tenant"] == "team-a", updated

    status, err, _ = await api.call("POST", "/api/v1/services", json_body={
        "metadata": {"name": "api", "tenant": "team-a"}, "spec": {"endpoints": ["127.0.0.1:9"]}})
    assert status == 422 and err["error"]["details"][0]["field"] == "metadata.tenant", err
    _, svc, _ = await api.call("GET", "/api/v1/services/web")
    assert "tenant" not in svc["metadata"]  # shared by every tenant
    for field, body in (
        ("metadata.tenant", {"metadata": {"name": "b1", "tenant": "Team_A"},
                             "spec": made["spec"]}),
        ("spec.sharedWith[0]", {"metadata": {"name": "b2"},
                                "spec": {**made["spec"], "sharedWith": ["not a subject"]}}),
    ):
        body["spec"].pop("routingKey", None)
        status, err, _ = await api.call("POST", "/api/v1/sandboxes", json_body=body)
        assert status == 422 and err["error"]["details"][0]["field"] == field, err


async def test_another_tenants_objects_are_hidden_and_the_refusal_is_audited(
    api_on: Api, world: dict[str, str]
) -> None:
    api = api_on
    bob, carol = world["bob"], world["carol"]
    await create(api, "routegroups", {"metadata": {"name": "alice-g"},
                                      "spec": {"selector": {"team": "pay"}}}, world["alice"])
    for path, message in (
        ("/api/v1/sandboxes/alice-sb", "sandboxes/alice-sb not found"),
        ("/api/v1/routegroups/alice-g", "routegroups/alice-g not found"),
        ("/api/v1/sandboxes/alice-sb/events", "sandboxes/alice-sb not found"),
        ("/api/v1/tap?sandbox=alice-sb&seconds=1", "sandboxes/alice-sb not found"),
    ):
        status, err, _ = await api.call("GET", path, token=bob)
        assert (status, err["error"]["message"]) == (404, message), (path, err)
    _, made, _ = await api.call("GET", "/api/v1/sandboxes/alice-sb")
    status, err, _ = await api.call("PUT", "/api/v1/sandboxes/alice-sb", token=bob,
                                    json_body={"metadata": {"name": "alice-sb"},
                                               "spec": made["spec"]})
    assert status == 404, err
    status, err, _ = await api.call("DELETE", "/api/v1/sandboxes/alice-sb", token=bob)
    assert status == 404, err
    _, listed, _ = await api.call("GET", "/api/v1/sandboxes", token=bob)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["bob-sb"]
    _, groups, _ = await api.call("GET", "/api/v1/routegroups", token=bob)
    assert groups["items"] == []
    # the object is untouched, and its owner and admins still see it
    assert (await api.call("GET", "/api/v1/sandboxes/alice-sb", token=world["alice"]))[0] == 200
    _, after, _ = await api.call("GET", "/api/v1/sandboxes/alice-sb")
    assert after["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]

    # a colleague in the same tenant knows it exists, and may not touch it
    status, err, _ = await api.call("GET", "/api/v1/sandboxes/alice-sb", token=carol)
    assert status == 403 and "alice" in err["error"]["message"], err

    _, audit, _ = await api.call("GET", "/api/v1/audit?limit=1000")
    denied = [e for e in audit["items"] if e["subject"] == "bob" and e["verb"].startswith("denied")]
    assert {e["verb"] for e in denied} == {"denied-get", "denied-put", "denied-delete"}
    assert len(denied) == 6 and all("404" in e["name"] and "team-a" in e["name"]
                                    for e in denied), denied


async def test_a_hidden_404_reads_exactly_like_a_missing_object(
    api_on: Api, world: dict[str, str]
) -> None:
    api = api_on
    bob = world["bob"]
    await api.call("DELETE", "/api/v1/sandboxes/carol-sb")  # now truly missing
    for verb in ("GET", "DELETE"):
        _, hidden, h1 = await api.call(verb, "/api/v1/sandboxes/alice-sb", token=bob)
        _, gone, h2 = await api.call(verb, "/api/v1/sandboxes/carol-sb", token=bob)
        assert hidden == json.loads(json.dumps(gone).replace("carol-sb", "alice-sb")), verb
        assert h1.get("Content-Type") == h2.get("Content-Type")


async def test_a_watch_shows_nothing_of_another_tenant(api_on: Api, world: dict[str, str]) -> None:
    api = api_on
    bob = world["bob"]
    _, listed, _ = await api.call("GET", "/api/v1/sandboxes", token=bob)
    since = listed["metadata"]["resourceVersion"]
    url = f"{api.base}/api/v1/sandboxes?watch=true&resourceVersion={since}"
    async with api.session.get(url, headers={"Authorization": f"Bearer {bob}"},
                               timeout=aiohttp.ClientTimeout(total=20)) as resp:
        assert resp.status == 200
        _, alice_sb, _ = await api.call("GET", "/api/v1/sandboxes/alice-sb")
        alice_sb["metadata"]["labels"] = {"team": "pay", "changed": "yes"}
        alice_sb["metadata"].pop("resourceVersion")
        assert (await api.call("PUT", "/api/v1/sandboxes/alice-sb", json_body=alice_sb))[0] == 200
        await create(api, "sandboxes", sandbox("bob-2"), bob)
        seen = []
        async for line in resp.content:  # events come in revision order: alice's came first
            if line.strip():
                event = json.loads(line)
                seen.append(event["object"]["metadata"].get("name"))
                if seen[-1] == "bob-2":
                    break
    assert seen[-1] == "bob-2" and "alice-sb" not in seen, seen


async def test_keys_are_shown_to_their_owners_only(api_on: Api, world: dict[str, str]) -> None:
    api = api_on
    alice, bob = world["alice"], world["bob"]
    # a route group of alice named like bob's sandbox: forks are matched by key, not name
    await create(api, "routegroups", {"metadata": {"name": "bob-sb"},
                                      "spec": {"selector": {"team": "pay"}, "routingKey": "ag"}},
                 alice)

    async def compiled() -> bool:
        return {"alice-key", "bob-key", "carol-key", "ag"} <= await forks_of(api)

    await eventually(compiled, what="every key in the snapshot")
    assert await forks_of(api, alice) == {"alice-key", "ag"}
    assert await forks_of(api, bob) == {"bob-key"}
    _, snap, _ = await api.call("GET", "/api/v1/snapshot")
    tenants = {f["routing_key"]: f["tenant"] for f in snap["forks"]}
    assert tenants == {"alice-key": "team-a", "carol-key": "team-a", "bob-key": "team-b",
                       "ag": "team-a"}

    def keys(doc: Any) -> set[str]:
        return {r["spec"]["routingKey"] for r in doc["items"]}

    _, routes, _ = await api.call("GET", "/api/v1/routes", token=alice)
    assert keys(routes) == {"alice-key", "ag"}
    _, routes, _ = await api.call("GET", "/api/v1/routes", token=bob)
    assert keys(routes) == {"bob-key"}
    consumer = await token(api, "billing-worker", None, "consumer")
    _, routes, _ = await api.call("GET", "/api/v1/routes", token=consumer)
    assert keys(routes) == {"alice-key", "bob-key", "carol-key", "ag"}  # consumers need all
    labels = {r["spec"]["routingKey"]: r["metadata"]["labels"] for r in routes["items"]}
    assert labels["bob-key"] == {"service": "web", "sandbox": "bob-sb"}  # not the group "bob-sb"
    assert labels["ag"] == {"service": "web", "sandbox": "alice-sb", "routeGroup": "bob-sb"}

    # a key taken in another tenant: 409, and nothing about who holds it
    status, err, _ = await api.call("POST", "/api/v1/sandboxes", token=bob,
                                    json_body=sandbox("bob-3", "alice-key"))
    assert status == 409 and "alice" not in err["error"]["message"], err
    assert "team-a" not in err["error"]["message"]
    # a subject of the same name in another tenant is not the owner either
    other_alice = await token(api, "alice", "team-b")
    status, err, _ = await api.call("POST", "/api/v1/sandboxes", token=other_alice,
                                    json_body=sandbox("alice-3", "alice-key"))
    assert status == 409 and "alice-sb" not in err["error"]["message"], err
    assert await forks_of(api, other_alice) == set()
    assert (await api.call("GET", "/api/v1/sandboxes/alice-sb", token=other_alice))[0] == 404


async def _group_status(api: Api, name: str, check: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def ready() -> bool:
        _, doc, _ = await api.call("GET", f"/api/v1/routegroups/{name}")
        found.clear()
        found.update(doc.get("status") or {})
        return bool(check(doc.get("status") or {}))

    await eventually(ready, what=f"routegroups/{name} status")
    return found


async def test_a_route_group_selects_only_what_its_creator_may_use(
    api_on: Api, world: dict[str, str]
) -> None:
    api = api_on
    alice, carol = world["alice"], world["carol"]
    await create(api, "routegroups", {"metadata": {"name": "pay"},
                                      "spec": {"selector": {"team": "pay"}, "routingKey": "pk"}},
                 alice)
    # carol's sandbox (same tenant) matches but is not alice's: counted, not named, not used;
    # bob's (another tenant) is not even counted
    status = await _group_status(api, "pay", lambda s: s.get("phase") == "Ready")
    assert status["sandboxes"] == ["alice-sb"] and status["notSelected"] == 1, status
    _, doc, _ = await api.call("GET", "/api/v1/routegroups/pay", token=alice)
    assert "carol" not in json.dumps(doc["status"])

    # carol shares hers with alice: now it is selected
    _, carol_sb, _ = await api.call("GET", "/api/v1/sandboxes/carol-sb", token=carol)
    carol_sb["spec"]["sharedWith"] = ["alice"]
    carol_sb["metadata"].pop("resourceVersion")  # last write wins: the reconciler writes too
    status_code, body, _ = await api.call("PUT", "/api/v1/sandboxes/carol-sb", token=carol,
                                          json_body=carol_sb)
    assert status_code == 200, body
    status = await _group_status(api, "pay", lambda s: len(s.get("sandboxes", [])) == 2)
    assert status["sandboxes"] == ["alice-sb", "carol-sb"] and "notSelected" not in status

    # sharing reaches into one tenant only: bob's sandbox shared with "alice" stays out
    _, bob_sb, _ = await api.call("GET", "/api/v1/sandboxes/bob-sb")
    bob_sb["spec"]["sharedWith"] = ["alice"]
    bob_sb["metadata"].pop("resourceVersion")
    assert (await api.call("PUT", "/api/v1/sandboxes/bob-sb", json_body=bob_sb))[0] == 200
    _, written, _ = await api.call("GET", "/api/v1/sandboxes/bob-sb")
    revision = int(written["metadata"]["resourceVersion"])

    def compiled_since() -> bool:
        compiled = api.plane.reconciler.compiled
        return compiled is not None and int(compiled.snapshot.version) >= revision

    await eventually(compiled_since, what="a compile that read the share")
    compiled = api.plane.reconciler.compiled
    assert compiled is not None
    assert compiled.group_members["pay"] == ("alice-sb", "carol-sb")
    assert ("routegroups", "pay") not in compiled.problems
    assert sorted(f.service for f in compiled.snapshot.forks if f.routing_key == "pk") == [
        "api", "web"]


# -- signed keys carry the tenant ---------------------------------------------------------

SECRETS = ("new-secret-0123456789", "old-secret-0123456789")


@pytest.fixture
async def signing_api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings(
        listen="127.0.0.1:0", store="sqlite", data_dir=tmp_path, admin_token=ADMIN_TOKEN,
        reconcile_interval=0.5, probe_timeout=0.3, replica="test", routing_key_secrets=SECRETS,
    )
    async with serve_api(settings) as api:
        yield api


async def test_a_signed_key_covers_the_tenant(signing_api: Api) -> None:
    api = signing_api
    assert (await api.call("POST", "/api/v1/services", json_body=SERVICE))[0] == 201
    alice = await token(api, "alice", "team-a")
    made = await create(api, "sandboxes", sandbox("sb", ttl={"seconds": 600}), alice)
    bare = made["spec"]["routingKey"]
    presented = ""

    async def signed() -> bool:
        nonlocal presented
        _, sb, _ = await api.call("GET", "/api/v1/sandboxes/sb", token=alice)
        presented = (sb.get("status") or {}).get("routingKey", "")
        return "." in presented

    await eventually(signed, what="the signed key in the status")
    latest = api.plane.publisher.latest
    assert latest is not None
    [fork] = [f for f in latest.forks if f.routing_key == bare]
    assert fork.tenant == "team-a"
    assert presented == sign_routing_key(SECRETS[0], bare, "sb", "team-a", fork.expires_at)
    # what the proxies verify with: the snapshot's claims, under its secrets
    verifier = KeyVerifier.build(
        latest.signing.secrets if latest.signing else (),
        {f.routing_key: KeyClaims(f.sandbox, f.tenant, f.expires_at) for f in latest.forks},
        clock=lambda: 0.0,
    )
    assert verifier.verify(presented) == (bare, None)
    for tenant in ("team-b", "default", ""):
        forged = sign_routing_key(SECRETS[0], bare, "sb", tenant, fork.expires_at)
        assert verifier.verify(forged) == (None, "bad-signature"), tenant


async def test_a_tap_line_is_read_back_only_by_whom_it_was_shown_to(api: Api) -> None:
    """The same subject name in two tenants is two people: one's tap lines are not the
    other's to read back."""
    assert (await api.call("POST", "/api/v1/services", json_body=SERVICE))[0] == 201
    alice_a = await token(api, "alice", "team-a")
    alice_b = await token(api, "alice", "team-b")
    await create(api, "sandboxes", sandbox("a-sb", "a-key"), alice_a)
    url = f"{api.base}/api/v1/tap?sandbox=a-sb&seconds=30"
    async with api.session.get(url, headers={"Authorization": f"Bearer {alice_a}"},
                               timeout=aiohttp.ClientTimeout(total=20)) as resp:
        assert resp.status == 200
        started = json.loads(await resp.content.readline())
        assert started["type"] == "started"
        api.plane.taps.received("p1", [{"taps": [started["id"]], "service": "web"}], {})
        while (line := json.loads(await resp.content.readline()))["type"] != "request":
            pass
    status, err, _ = await api.call("GET", f"/api/v1/tap/requests/{line['id']}", token=alice_b)
    assert status == 404, err
    status, shown, _ = await api.call("GET", f"/api/v1/tap/requests/{line['id']}", token=alice_a)
    assert status == 200 and shown["id"] == line["id"], shown
