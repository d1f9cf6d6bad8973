"""The live-tap relay between replicas, on a real PostgreSQL: leased filters, relayed records.

Two hubs stand for two replicas sharing one database (one schema per test). A filter opened
on one reaches the other's push set; records the other's proxies match come back; the rows
of a replica that died (never renewed) expire and are deleted; a relay that cannot keep up
counts what it lost as dropped by `relay`, shown to the viewer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from conftest import PgSchemas

from forklane.controlplane.tap import TapHub
from forklane.controlplane.tap_relay import RELAY, TapRelay

pytestmark = pytest.mark.postgres


async def _eventually(what: str, check: Callable[[], bool | Awaitable[bool]],
                      within: float = 10.0) -> None:
    """Poll a condition with a deadline (the other side is the database)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def pair(pg_schemas: PgSchemas) -> AsyncIterator[tuple[TapRelay, TapRelay, str]]:
    schema = pg_schemas.new()
    conn = await asyncpg.connect(pg_schemas.dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    relays = [TapRelay(TapHub(hub_id=name), pg_schemas.dsn, schema, heartbeat=0.1, lease=0.5,
                       max_pending=10) for name in ("a", "b")]
    try:
        for relay in relays:
            await relay.start()
        yield relays[0], relays[1], schema
    finally:
        for relay in relays:
            await relay.aclose()


def _record(taps: list[str]) -> dict[str, object]:
    return {"routing_key": "k1", "service": "web", "status": 200, "target": "/", "taps": taps}


async def test_a_filter_on_one_replica_reaches_the_other_and_records_come_back(
    pair: tuple[TapRelay, TapRelay, str],
) -> None:
    a, b, _ = pair
    viewer = a.hub.open(["k1"])
    await _eventually("a's filter on b", lambda: viewer.spec.id in {f.id for f in b.hub.filters()})
    assert [f.id for f in a.hub.filters()] == [viewer.spec.id]  # nobody watches on b
    b.hub.received("p-on-b", [_record([viewer.spec.id]), _record([viewer.spec.id])],
                   {viewer.spec.id: 4})
    first = await asyncio.wait_for(viewer.queue.get(), 10)
    second = await asyncio.wait_for(viewer.queue.get(), 10)
    assert first["proxy"] == second["proxy"] == "p-on-b" and first["id"] != second["id"]
    assert viewer.proxy_dropped == {"p-on-b": 4}
    assert a.hub.recent(str(first["id"])) is not None  # explain --from-tap works here
    a.hub.close(viewer)
    await _eventually("the filter gone from b", lambda: b.hub.filters() == ())


async def test_a_dead_replicas_filters_expire(pair: tuple[TapRelay, TapRelay, str]) -> None:
    a, b, schema = pair
    conn = await asyncpg.connect(a.dsn, server_settings={"search_path": schema})
    try:
        # what a replica killed without goodbye leaves: a row nobody renews
        await conn.execute(
            "INSERT INTO tap_viewers (id, hub, spec, expires_at) VALUES "
            "('t1.dead', 'dead', '{\"id\": \"t1.dead\"}', now() + interval '0.4 seconds')")
        await conn.execute("SELECT pg_notify($1, 'f')", a.channel)
        await _eventually("the dead replica's filter on b",
                          lambda: "t1.dead" in {f.id for f in b.hub.filters()})
        await _eventually("its expiry", lambda: "t1.dead" not in {f.id for f in b.hub.filters()})

        async def deleted() -> bool:
            return await conn.fetchval("SELECT count(*) FROM tap_viewers WHERE hub = 'dead'") == 0

        await _eventually("its row deleted", deleted)
    finally:
        await conn.close()


async def test_what_the_relay_cannot_hold_is_counted_as_dropped(
    pair: tuple[TapRelay, TapRelay, str],
) -> None:
    a, b, _ = pair
    viewer = a.hub.open()
    await _eventually("a's filter on b", lambda: bool(b.hub.filters()))
    b.hub.received("p-on-b", [_record([viewer.spec.id]) for _ in range(25)], {})  # > 10
    await _eventually("the loss reported", lambda: viewer.proxy_dropped == {RELAY: 25})
    assert viewer.queue.empty()
