"""The consumer's routes watcher against a real control plane: follows changes, says why it
cannot, and starts from its cache."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from forklane import AsyncClient
from forklane.messaging import RoutesWatcher
from tests.messaging.conftest import Plane
from tests.support.polling import eventually


async def test_the_watcher_follows_creates_and_deletes_and_relists_after_a_stream_ends(
    plane: Plane, tmp_path: Path
) -> None:
    await plane.service("billing")
    changes: list[dict[str, str]] = []
    routes = RoutesWatcher("billing", await plane.consumer_client(), watch_timeout=1,
                           cache_file=tmp_path / "r.json",
                           on_change=lambda v: changes.append(dict(v.forks)))  # fmt: skip
    await routes.start()
    try:
        assert await routes.wait_answered()
        assert routes.view.forks == {} and routes.source == "control plane"
        await plane.sandbox("alice", "alice-key", "billing")
        await eventually(lambda: routes.view.forks == {"alice-key": "alice"}, what="created")
        await plane.admin.sandboxes.delete("alice")
        await eventually(lambda: routes.view.forks == {}, what="deleted")
        await plane.sandbox("bob", "bob-key", "billing")
        await eventually(lambda: routes.view.forks == {"bob-key": "bob"}, what="bob, after the"
                         " 1 s watch streams ended and were listed again", within=15)
    finally:
        await routes.aclose()
    assert {"alice-key": "alice"} in changes and changes[-1] == {"bob-key": "bob"}
    cached = RoutesWatcher("billing", await plane.consumer_client(), cache_file=tmp_path / "r.json")
    assert cached.source == "cache" and cached.view.forks == {"bob-key": "bob"}


async def test_a_token_that_may_not_read_routes_is_said_once_and_the_view_stays_the_baselines(
    plane: Plane, caplog: pytest.LogCaptureFixture
) -> None:
    doc = await plane.admin.call("POST", "/api/v1/tokens", {"subject": "p", "role": "proxy"})
    client = AsyncClient(plane.url, doc["token"])
    routes = RoutesWatcher("billing", client, backoff=(0.01, 0.02))
    caplog.set_level(logging.WARNING, "forklane.messaging.routes")
    await routes.start()
    try:
        assert not await routes.wait_answered(0.5)
        await eventually(lambda: routes.last_error is not None, what="an error")
    finally:
        await routes.aclose()
        await client.aclose()
    assert routes.view.forks == {} and not routes.connected
    assert "Forbidden" in (routes.last_error or "")
    assert len([r for r in caplog.records if "consumer tokens" in r.getMessage()
                or "Forbidden" in r.getMessage()]) == 1  # fmt: skip
