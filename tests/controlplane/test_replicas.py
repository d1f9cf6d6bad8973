"""Two control-plane replicas on one PostgreSQL: a write on one is published by the other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from conftest import ADMIN_TOKEN, PG_SKIP_REASON, PgSchemas, find_postgres

from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from forklane.controlplane.store.postgres import PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
async def replicas(tmp_path: object) -> AsyncIterator[tuple[ControlPlane, ControlPlane]]:
    dsn = await find_postgres()
    if dsn is None:
        pytest.skip(PG_SKIP_REASON)
    schemas = PgSchemas(dsn)
    schema = schemas.new()
    planes: list[ControlPlane] = []
    try:
        for name in ("a", "b"):
            settings = Settings(
                listen="127.0.0.1:0", store=dsn, admin_token=ADMIN_TOKEN,
                reconcile_interval=60.0, replica=name,
            )
            plane = ControlPlane(
                settings, store=PostgresStore(dsn, schema=schema), with_push=False
            )
            await plane.start()
            planes.append(plane)
        yield planes[0], planes[1]
    finally:
        for plane in planes:
            await plane.aclose()
        await schemas.drop_all()


async def test_write_on_one_replica_is_published_by_the_other(
    replicas: tuple[ControlPlane, ControlPlane],
) -> None:
    a, b = replicas
    assert a.api_address is not None
    before = b.publisher.latest
    assert before is not None and before.forks == ()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    base = f"http://127.0.0.1:{a.api_address[1]}/api/v1"
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{base}/services", json={
            "metadata": {"name": "web"}, "spec": {"endpoints": ["127.0.0.1:9"]}}) as resp:
            assert resp.status == 201
        async with session.post(f"{base}/sandboxes", json={
            "metadata": {"name": "s"},
            "spec": {"routingKey": "shared-key",
                     "forks": [{"service": "web", "endpoints": ["127.0.0.1:9"]}]}}) as resp:
            assert resp.status == 201
    # b's reconciler interval is 60 s: only LISTEN/NOTIFY can make it publish this quickly
    async with asyncio.timeout(5):
        snap = await b.publisher.wait_newer(before.version)
        while not snap.forks:
            snap = await b.publisher.wait_newer(snap.version)
    assert [(f.routing_key, f.service) for f in snap.forks] == [("shared-key", "web")]
    assert a.banner().startswith("forklane controlplane listening on http://127.0.0.1:")
    assert "store postgresql://127.0.0.1:5432/test" in a.banner()
