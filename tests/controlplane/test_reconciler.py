"""Reconciler: TTL expiry on an injected clock, readiness from real sockets and proxy ACKs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from forklane.controlplane.publisher import SnapshotPublisher
from forklane.controlplane.reconciler import Reconciler
from forklane.controlplane.store.base import NotFound, Store
from forklane.controlplane.store.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Acks:
    """A registry whose proxies have ACKed every version up to `upto`."""

    def __init__(self, upto: int = 0) -> None:
        self.upto = upto

    def all_acked(self, version: int) -> bool:
        return version <= self.upto


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = SqliteStore(tmp_path / "r.db")
    await s.open()
    yield s
    await s.aclose()


@pytest.fixture
async def listening_port() -> AsyncIterator[int]:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def put_sandbox(
    store: Store, name: str, port: int, ttl: dict[str, Any] | None = None, now: datetime = T0
) -> None:
    if not (await store.list("services")).items:
        await store.create("services", "web", labels={}, spec={"endpoints": ["127.0.0.1:1"]},
                           status=None, created_by="t", now=now)
    spec: dict[str, Any] = {
        "routingKey": f"key{name}",
        "forks": [{"service": "web", "endpoints": [f"127.0.0.1:{port}"]}],
    }
    if ttl:
        spec["ttl"] = ttl
    await store.create("sandboxes", name, labels={}, spec=spec, status=None, created_by="t",
                       now=now)


def make(store: Store, clock: Clock, acks: Acks | None = None) -> tuple[Reconciler, SnapshotPublisher]:
    publisher = SnapshotPublisher()
    rec = Reconciler(store, publisher, acks or Acks(10**9), clock=clock, probe_timeout=0.5,
                     interval=60.0)
    return rec, publisher


async def test_ttl_expiry_withdraws_routes(store: Store, closed_port: int) -> None:
    clock = Clock()
    rec, publisher = make(store, clock)
    await put_sandbox(store, "short", closed_port, ttl={"seconds": 60})
    await put_sandbox(store, "byupdate", closed_port, ttl={"seconds": 60, "since": "update"})
    clock.now = T0 + timedelta(seconds=50)
    cur = await store.get("sandboxes", "byupdate")
    await store.update("sandboxes", "byupdate", labels={"bumped": "1"}, spec=cur.spec,
                       expected_version=None, now=clock.now)
    await rec.run_once()
    assert publisher.latest is not None
    assert {f.sandbox for f in publisher.latest.forks} == {"short", "byupdate"}
    status = (await store.get("sandboxes", "short")).status
    assert status is not None and status["expiresAt"].startswith("2026-03-01T12:01:00")

    clock.now = T0 + timedelta(seconds=61)
    await rec.run_once()
    with pytest.raises(NotFound):
        await store.get("sandboxes", "short")
    assert {f.sandbox for f in publisher.latest.forks} == {"byupdate"}, "routes withdrawn"
    audit = await store.list_audit()
    assert [(a.subject, a.verb, a.name) for a in audit] == [
        ("system:reconciler", "expire", "short")
    ]

    clock.now = T0 + timedelta(seconds=111)
    await rec.run_once()
    assert publisher.latest.forks == ()


async def test_ready_needs_reachable_and_routed(
    store: Store, listening_port: int, closed_port: int
) -> None:
    acks = Acks(upto=0)
    rec, publisher = make(store, Clock(), acks)
    await put_sandbox(store, "up", listening_port)
    await put_sandbox(store, "down", closed_port)
    await rec.run_once()

    def conditions(status: dict[str, Any]) -> dict[str, str]:
        return {c["type"]: c["status"] for c in status["conditions"]}

    up = (await store.get("sandboxes", "up")).status
    assert up is not None and up["phase"] == "Pending", "reachable but no proxy ACKed yet"
    assert conditions(up) == {"Compiled": "True", "Reachable": "True", "Routed": "False",
                              "Ready": "False"}
    assert up["forks"] == [{"service": "web", "ready": True, "message": ""}]

    assert publisher.latest is not None
    acks.upto = int(publisher.latest.version)
    await rec.run_once()
    up_rec = await store.get("sandboxes", "up")
    assert up_rec.status is not None and up_rec.status["phase"] == "Ready"
    assert up_rec.generation == 1 and up_rec.status["observedGeneration"] == 1
    down = (await store.get("sandboxes", "down")).status
    assert down is not None and down["phase"] == "Pending"
    assert conditions(down)["Reachable"] == "False" and conditions(down)["Routed"] == "True"
    assert str(closed_port) in down["forks"][0]["message"]


async def test_status_writes_do_not_republish(store: Store, closed_port: int) -> None:
    rec, publisher = make(store, Clock())
    await put_sandbox(store, "a", closed_port)
    await rec.run_once()
    assert publisher.latest is not None
    first = publisher.latest.version
    revision = await store.revision()
    await rec.run_once()
    assert publisher.latest.version == first, "status-only changes push nothing"
    assert await store.revision() == revision, "an unchanged status is not rewritten"


async def test_write_is_reconciled_promptly(store: Store, closed_port: int) -> None:
    rec, publisher = make(store, Clock())  # interval 60 s: only the change listener can wake it
    await rec.start()
    try:
        await rec.wait_passes(1)
        before = publisher.latest
        assert before is not None
        await put_sandbox(store, "late", closed_port)
        async with asyncio.timeout(5):
            snap = await publisher.wait_newer(before.version)
            while not snap.forks:
                snap = await publisher.wait_newer(snap.version)
        assert [f.sandbox for f in snap.forks] == ["late"]
    finally:
        await rec.aclose()


async def test_an_ack_burst_wakes_the_reconciler_once_it_routes_a_sandbox(
    store: Store, listening_port: int
) -> None:
    """Fifty proxies ACKing one version must not cost fifty passes, and an ACK that makes a
    waiting sandbox Routed must make it Ready at once (the interval here is 60 s)."""
    from tests.support.polling import eventually

    acks = Acks(0)  # no proxy has ACKed anything yet
    rec, _ = make(store, Clock(), acks)
    await put_sandbox(store, "a", listening_port)
    await rec.start()
    try:
        async def conditions() -> dict[str, str]:
            status = (await store.get("sandboxes", "a")).status or {}
            return {c["type"]: c["status"] for c in status.get("conditions", [])}

        async def reachable_not_routed() -> bool:
            c = await conditions()
            return c.get("Reachable") == "True" and c.get("Routed") == "False"

        await eventually(reachable_not_routed, what="a reachable sandbox waiting for ACKs")
        for _ in range(50):  # ACKs of other versions / other proxies: nothing to do
            rec.acks_changed()
        before = rec.passes
        acks.upto = 10**9
        for _ in range(50):  # the burst that routes it
            rec.acks_changed()

        async def ready() -> bool:
            status = (await store.get("sandboxes", "a")).status or {}
            return bool(status.get("phase") == "Ready")

        await eventually(ready, within=5, what="Ready right after the ACKs")
        assert rec.passes - before <= 3, "an ACK burst is coalesced into one pass"
    finally:
        await rec.aclose()
