"""The REST API's newer contract over real HTTP: watches (on both store backends), fail-early
checks, idempotent updates, dry runs, the default TTL, tokens, whoami, version, events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ADMIN_TOKEN, Api, StoreFactory

from forklane.controlplane import wire
from forklane.controlplane.events import proxy_event
from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from tests.support.polling import eventually

SERVICE = {"metadata": {"name": "web"}, "spec": {"endpoints": ["127.0.0.1:9"]}}


def sandbox(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"forks": [{"service": "web", "endpoints": ["127.0.0.1:9"]}], **spec},
    }


@pytest.fixture
async def api_on(store_factory: StoreFactory, tmp_path: Path) -> AsyncIterator[Api]:
    """A control plane on each store backend (SQLite, and PostgreSQL when it answers)."""
    settings = Settings(
        listen="127.0.0.1:0", data_dir=tmp_path, admin_token=ADMIN_TOKEN, reconcile_interval=2.0,
        probe_timeout=0.3, replica="test", watch_bookmark_interval=0.2,
    )  # fmt: skip
    plane = ControlPlane(settings, store=store_factory(), with_push=False)
    await plane.start()
    assert plane.api_address is not None
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(session, f"http://127.0.0.1:{plane.api_address[1]}", plane)
    finally:
        await plane.aclose()


class Watch:
    """A watch stream read line by line; `next()` waits (bounded) for the next event."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, within: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            line = await self.response.content.readline()
        assert line, "the stream ended"
        event: dict[str, Any] = json.loads(line)
        return event

    async def next_not_bookmark(self) -> dict[str, Any]:
        while (event := await self.next())["type"] == "BOOKMARK":
            pass
        return event


async def open_watch(api: Api, query: str) -> Watch:
    response = await api.session.get(
        f"{api.base}/api/v1/sandboxes?watch=true&{query}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("application/json")
    return Watch(response)


async def test_watch_streams_changes_in_order_on_both_backends(api_on: Api) -> None:
    api = api_on
    assert (await api.call("POST", "/api/v1/services", json_body=SERVICE))[0] == 201
    _, listed, _ = await api.call("GET", "/api/v1/sandboxes")
    watch = await open_watch(api, f"resourceVersion={listed['metadata']['resourceVersion']}")
    try:
        status, created, _ = await api.call("POST", "/api/v1/sandboxes", json_body=sandbox("a"))
        assert status == 201
        added = await watch.next_not_bookmark()
        assert added["type"] == "ADDED" and added["object"]["metadata"]["name"] == "a"
        assert added["object"]["metadata"]["resourceVersion"] == \
            created["metadata"]["resourceVersion"]  # fmt: skip
        await api.call("DELETE", "/api/v1/sandboxes/a")
        seen = [await watch.next_not_bookmark()]
        while seen[-1]["type"] != "DELETED":  # status writes of the reconciler come between
            assert seen[-1]["type"] == "MODIFIED"
            seen.append(await watch.next_not_bookmark())
        versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in seen[:-1]]
        assert versions == sorted(versions)
    finally:
        watch.response.close()


async def test_watch_without_a_version_starts_with_what_exists_and_bookmarks(api_on: Api) -> None:
    api = api_on
    await api.call("POST", "/api/v1/services", json_body=SERVICE)
    await api.call("POST", "/api/v1/sandboxes", json_body=sandbox("old"))
    watch = await open_watch(api, "allowWatchBookmarks=true&timeoutSeconds=30")
    try:
        first = await watch.next()
        assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "old"
        while (event := await watch.next())["type"] != "BOOKMARK":
            pass
        assert event["object"]["kind"] == "Sandbox"
        assert int(event["object"]["metadata"]["resourceVersion"]) >= 2
    finally:
        watch.response.close()


async def test_watch_selector_turns_label_changes_into_added_and_deleted(api: Api) -> None:
    await api.call("POST", "/api/v1/services", json_body=SERVICE)
    await api.call("POST", "/api/v1/sandboxes", json_body=sandbox("x", {"team": "a"}))
    watch = await open_watch(api, "labelSelector=team%20in%20(b,c)")
    try:
        _, current, _ = await api.call("GET", "/api/v1/sandboxes/x")
        moved = sandbox("x", {"team": "b"})
        assert (await api.call("PUT", "/api/v1/sandboxes/x", json_body=moved))[0] == 200
        assert (await watch.next())["type"] == "ADDED"
        away = sandbox("x", {"team": "z"})
        assert (await api.call("PUT", "/api/v1/sandboxes/x", json_body=away))[0] == 200
        while (event := await watch.next())["type"] == "MODIFIED":
            pass
        assert event["type"] == "DELETED"
        assert current["metadata"]["name"] == event["object"]["metadata"]["name"]
    finally:
        watch.response.close()


async def test_watch_from_a_trimmed_version_is_410_gone(api: Api) -> None:
    api.plane.store.history = 100
    for i in range(201):
        await api.plane.store.create("services", f"s{i}", labels={}, spec={"endpoints": ["h:1"]},
                                     status=None, created_by="t", now=datetime.now(UTC))  # fmt: skip
    status, err, _ = await api.call("GET", "/api/v1/sandboxes?watch=true&resourceVersion=1")
    assert status == 410
    assert err["error"]["reason"] == "Expired" and "list again" in err["error"]["message"]


async def test_unknown_service_is_422_with_the_field_path(api: Api) -> None:
    status, err, _ = await api.call("POST", "/api/v1/sandboxes", json_body=sandbox("s"))
    assert status == 422
    assert err["error"]["details"][0]["field"] == "spec.forks[0].service"
    assert (await api.call("GET", "/api/v1/sandboxes/s"))[0] == 404


async def test_unreachable_fork_is_a_warning_at_once_and_the_default_ttl_applies(
    api: Api,
) -> None:
    await api.call("POST", "/api/v1/services", json_body=SERVICE)
    status, created, headers = await api.call("POST", "/api/v1/sandboxes", json_body=sandbox("w"))
    assert status == 201
    (warning,) = headers.getall("Warning")  # type: ignore[attr-defined]
    assert warning.startswith('299 - "fork web: 127.0.0.1:9') and "Pending" in warning
    assert created["spec"]["ttl"] == {"seconds": 3600, "since": "creation"}


async def test_an_update_that_changes_nothing_writes_nothing(api: Api) -> None:
    await api.call("POST", "/api/v1/services", json_body=SERVICE)

    async def settled() -> bool:  # the reconciler's status write comes first
        return (await api.call("GET", "/api/v1/services/web"))[1].get("status") is not None

    await eventually(settled, what="the service's first status")
    _, first, _ = await api.call("GET", "/api/v1/services/web")
    revision = await api.plane.store.revision()
    status, again, _ = await api.call("PUT", "/api/v1/services/web", json_body=SERVICE)
    assert status == 200
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert await api.plane.store.revision() == revision
    _, audit, _ = await api.call("GET", "/api/v1/audit")
    assert [e["verb"] for e in audit["items"] if e["resource"] == "services"] == ["create"]


async def test_dry_run_validates_and_stores_nothing(api: Api) -> None:
    await api.call("POST", "/api/v1/services", json_body=SERVICE)
    status, doc, _ = await api.call("POST", "/api/v1/sandboxes?dryRun=All", json_body=sandbox("d"))
    assert status == 201 and doc["metadata"]["name"] == "d" and doc["spec"]["routingKey"]
    status, err, _ = await api.call("POST", "/api/v1/splits?dryRun=All", json_body={
        "metadata": {"name": "x"}, "spec": {"service": "nope"}})  # fmt: skip
    assert status == 422 and err["error"]["details"][0]["field"] == "spec.service"
    changed = {**SERVICE, "spec": {"endpoints": ["127.0.0.1:10"]}}
    status, doc, _ = await api.call("PUT", "/api/v1/services/web?dryRun=All", json_body=changed)
    assert status == 200 and doc["spec"]["endpoints"] == ["127.0.0.1:10"]
    assert (await api.call("GET", "/api/v1/services/web"))[1]["spec"]["endpoints"] == [
        "127.0.0.1:9"]  # fmt: skip
    assert (await api.call("GET", "/api/v1/sandboxes/d"))[0] == 404
    _, audit, _ = await api.call("GET", "/api/v1/audit")
    assert [(e["verb"], e["resource"]) for e in audit["items"]] == [("create", "services")]


async def test_tokens_list_revoke_whoami_version(api: Api) -> None:
    token = await api.token("pricing-sidecar", "proxy")
    status, me, _ = await api.call("GET", "/api/v1/whoami", token=token)
    assert status == 200 and (me["subject"], me["role"]) == ("pricing-sidecar", "proxy")
    _, tokens, _ = await api.call("GET", "/api/v1/tokens")
    assert tokens["kind"] == "TokenList" and tokens["apiVersion"] == "forklane.dev/v1"
    (item,) = [t for t in tokens["items"] if t["subject"] == "pricing-sidecar"]
    assert set(item) == {"id", "subject", "role", "createdAt", "createdBy"}  # never a secret
    assert (await api.call("DELETE", f"/api/v1/tokens/{item['id']}"))[0] == 200
    assert (await api.call("GET", "/api/v1/whoami", token=token))[0] == 401
    assert (await api.call("DELETE", f"/api/v1/tokens/{item['id']}"))[0] == 404
    status, version, _ = await api.call("GET", "/version", token=None)
    assert status == 200 and version["kind"] == "Version" and version["replica"] == "test"


async def test_events_tell_what_happened_to_an_object(api: Api) -> None:
    await api.call("POST", "/api/v1/services", json_body=SERVICE)
    changed = {**SERVICE, "spec": {"endpoints": ["127.0.0.1:10"]}}
    await api.call("PUT", "/api/v1/services/web", json_body=changed)
    status, events, _ = await api.call("GET", "/api/v1/services/web/events")
    assert status == 200 and events["kind"] == "EventList"
    reasons = [e["reason"] for e in events["items"]]
    assert reasons[:2] == ["Created", "Updated"]
    assert events["items"][1]["message"] == "generation 1 → 2"


async def test_events_are_stored_so_every_replica_tells_the_same_history(
    api_on: Api, store_factory: StoreFactory, tmp_path: Path
) -> None:
    """Condition changes are kept in the store (both backends): another replica sharing the
    database, started after they happened, shows them too; so are proxies' push records."""
    api = api_on
    await api.call("POST", "/api/v1/services", json_body=SERVICE)
    assert (await api.call("POST", "/api/v1/sandboxes", json_body=sandbox("sb1")))[0] == 201

    async def reasons(on: Api) -> list[str]:
        status, body, _ = await on.call("GET", "/api/v1/sandboxes/sb1/events")
        assert status == 200, body
        return [e["reason"] for e in body["items"]]

    async def probed(on: Api = api) -> list[dict[str, Any]]:
        await api.plane.events.flush()
        _, body, _ = await on.call("GET", "/api/v1/sandboxes/sb1/events")
        return [e for e in body["items"] if e["reason"] == "ForkUnreachable"
                and e["message"].startswith("Reachable=False: 127.0.0.1:9")]  # fmt: skip

    async def unreachable_told() -> bool:
        return bool(await probed())

    await eventually(unreachable_told, what="the ForkUnreachable event with the probe's answer")
    event = (await probed())[-1]
    assert event["type"] == "Warning" and event["source"] == "reconciler"
    _, body, _ = await api.call("GET", "/api/v1/sandboxes/sb1/events")
    told = [e["reason"] for e in body["items"]]
    assert told.index("Created") < told.index("ForkUnreachable"), told
    api.plane.events.record([proxy_event(wire.Event(
        time=datetime.now(UTC), reason="SnapshotAcked", message="snapshot 7 applied",
        source="node-a"))])  # fmt: skip
    await api.plane.events.flush()

    settings = Settings(listen="127.0.0.1:0", data_dir=tmp_path / "other", replica="other",
                        admin_token=ADMIN_TOKEN, reconcile_interval=2.0)  # fmt: skip
    other = ControlPlane(settings, store=store_factory(), with_push=False)
    await other.start()
    try:
        assert other.api_address is not None
        async with aiohttp.ClientSession() as session:
            seen = await reasons(Api(session, f"http://127.0.0.1:{other.api_address[1]}", other))
    finally:
        await other.aclose()
    assert {"Created", "ForkUnreachable", "SnapshotAcked"} <= set(seen), seen
