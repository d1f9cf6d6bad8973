"""Outgoing webhooks on sandbox events, to a real local receiver that goes away and comes back.

A real control plane process (`--notify-urls` through its environment), a real aiohttp
receiver on loopback that checks every signature; the receiver is stopped while a sandbox is
deleted, and the delivery is retried until it is back.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from forklane.controlplane.webhooks.events import verify
from tests.integration.test_controlplane_e2e import (
    ADMIN,
    BANNER,
    Api,
    ControlPlane,
    World,
    endpoint,
    until,
)
from tests.support.processes import spawn, wait_for_line

SECRET = "notify-secret-0123456789"


class Receiver:
    """An HTTP endpoint that records each delivery and whether its signature holds."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        signed = verify(SECRET, body, request.headers.get("X-Forklane-Signature", ""),
                        int(time.time()))
        doc = await request.json()
        self.got.append({"type": doc["type"], "id": doc["id"], "sandbox": doc["sandbox"],
                         "signed": signed, "header": request.headers["X-Forklane-Event"],
                         "delivery": request.headers["X-Forklane-Delivery"]})
        return web.json_response({"ok": True})

    def events(self, sandbox: str) -> list[str]:
        return [g["type"] for g in self.got if g["sandbox"] == sandbox]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with aiohttp.ClientSession() as session:
        w = World(tmp_path, session)
        try:
            yield w
        finally:
            await w.aclose()


def start_plane(world: World, url: str) -> ControlPlane:
    plane = ControlPlane(world.tmp, world.tmp / "cp-notify")
    cmd = [sys.executable, "-m", "forklane.controlplane", "serve", "--listen", "127.0.0.1:0",
           "--grpc", "127.0.0.1:0", "--data-dir", str(plane.data_dir)]
    env = {"FORKLANE_ADMIN_TOKEN": ADMIN, "FORKLANE_RECONCILE_INTERVAL": "1",
           "FORKLANE_PROBE_TIMEOUT": "0.5", "FORKLANE_NOTIFY_URLS": url,
           "FORKLANE_NOTIFY_SECRET": SECRET}
    plane.proc = spawn(cmd, world.tmp / "controlplane-notify.log", env)
    match = BANNER.search(wait_for_line(plane.proc, "forklane controlplane listening", 30))
    assert match
    plane.api_port, plane.grpc_port = int(match.group(1)), int(match.group(2))
    world.planes.append(plane)
    return plane


async def test_sandbox_events_are_signed_and_retried_until_the_receiver_is_back(
    world: World,
) -> None:
    receiver = Receiver(_free_port())
    await receiver.start()
    try:
        plane = start_plane(world, f"http://127.0.0.1:{receiver.port}/hook")
        api = Api(world.session, plane)
        up = await world.upstream("fork")
        await api.write("POST", "services", {"metadata": {"name": "web"},
                                             "spec": {"endpoints": [endpoint(up)]}})
        await api.write("POST", "sandboxes", {"metadata": {"name": "dev"}, "spec": {
            "forks": [{"service": "web", "endpoints": [endpoint(up)]}]}})

        async def created_and_ready() -> bool:
            return receiver.events("dev") == ["sandbox.created", "sandbox.ready"]

        await until("created and ready", created_and_ready)
        assert all(g["signed"] and g["header"] == g["type"] and g["delivery"] == g["id"]
                   for g in receiver.got)

        await receiver.stop()  # the receiver goes away
        status, _ = await api.call("DELETE", "sandboxes/dev")
        assert status == 200

        async def retrying() -> bool:
            _, doc = await api.call("GET", "webhooks/deliveries")
            mine = [d for d in doc["items"] if d["type"] == "sandbox.deleted"]
            return bool(mine) and mine[0]["state"] == "pending" and mine[0]["attempts"] >= 2 \
                and bool(mine[0]["lastError"])

        await until("the deletion to be retried", retrying)
        await receiver.start()  # … and comes back on the same port

        async def deleted() -> bool:
            return "sandbox.deleted" in receiver.events("dev")

        await until("the deletion delivered", deleted, within=40)
        _, doc = await api.call("GET", "webhooks/deliveries")
        (done,) = [d for d in doc["items"] if d["type"] == "sandbox.deleted"]
        assert done["state"] == "delivered" and done["attempts"] >= 3 and done["lastStatus"] == 200

        await api.write("POST", "sandboxes", {"metadata": {"name": "brief"}, "spec": {
            "forks": [{"service": "web", "endpoints": [endpoint(up)]}], "ttl": {"seconds": 2}}})

        async def expired() -> bool:
            return "sandbox.expired" in receiver.events("brief")

        await until("the expiry", expired, within=30)
        assert receiver.events("brief")[0] == "sandbox.created"
        await api.write("POST", "services", {"metadata": {"name": "gone"},
                                             "spec": {"endpoints": [endpoint(up)]}})
        await api.write("POST", "sandboxes", {"metadata": {"name": "broken"}, "spec": {
            "forks": [{"service": "gone", "endpoints": [endpoint(up)]}]}})
        status, doc = await api.call("DELETE", "services/gone")  # its fork has nowhere to be
        assert status == 200, doc

        async def failed() -> bool:
            return receiver.events("broken")[-1:] == ["sandbox.failed"]

        await until("the failure", failed)
        assert "sandbox.deleted" not in receiver.events("brief")
        assert all(g["signed"] for g in receiver.got)
        assert len({g["id"] for g in receiver.got}) == len(receiver.got)  # each once
    finally:
        await receiver.stop()


def test_a_signature_with_another_secret_or_an_old_time_is_refused() -> None:
    from forklane.controlplane.webhooks.events import sign

    body = b'{"id":"1-created"}'
    now = 1_800_000_000
    assert verify(SECRET, body, sign(SECRET, body, now), now)
    assert not verify(SECRET, body, sign("other", body, now), now)
    assert not verify(SECRET, body + b" ", sign(SECRET, body, now), now)
    assert not verify(SECRET, body, sign(SECRET, body, now - 3600), now)
    assert not verify(SECRET, body, "garbage", now)
