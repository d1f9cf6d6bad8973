"""A store written before tenants existed keeps working: its objects belong to the default
tenant, its developer tokens act there, and the change log's older entries read the same.
Checked on both backends by writing the old schema's rows directly, then opening the store
and a control plane on them."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from conftest import ADMIN_TOKEN, PG_SKIP_REASON, Api, PgSchemas, find_postgres

from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from forklane.controlplane.store import postgres, sqlite
from forklane.controlplane.store.base import Store
from forklane.controlplane.store.postgres import PostgresStore
from forklane.controlplane.store.sqlite import SqliteStore

SECRET = "ab" * 32
OLD_TOKEN = f"flk_0123456789ab_{SECRET}"
SPEC = {"forks": [{"service": "web", "endpoints": ["127.0.0.1:9"]}], "routingKey": "old-key",
        "fallback": "fail"}
NOW = "2026-01-01T00:00:00+00:00"
AT = datetime.fromisoformat(NOW)
RECORD = {"kind": "sandboxes", "name": "old-sb", "uid": "u-1", "generation": 1,
          "resource_version": 2, "labels": {}, "created_by": "alice", "created_at": NOW,
          "updated_at": NOW, "spec": SPEC, "status": None}  # a change-log entry, as written then
SERVICE = {"endpoints": ["127.0.0.1:9"]}


def _old_sqlite(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
    for version, sql in sqlite.MIGRATIONS:
        if version <= 3:
            db.executescript(sql)
            db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
    rows = [("services", "web", "u-0", 1, 1, "{}", "admin", NOW, NOW, json.dumps(SERVICE), None),
            ("sandboxes", "old-sb", "u-1", 1, 2, "{}", "alice", NOW, NOW, json.dumps(SPEC), None)]
    db.executemany("INSERT INTO resources VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.execute("UPDATE meta SET revision = 2")
    db.execute("INSERT INTO changes VALUES (2, 'sandboxes', 'ADDED', ?, NULL)",
               (json.dumps(RECORD),))
    db.execute("INSERT INTO tokens VALUES ('0123456789ab', 'alice', 'developer', ?, ?, 'admin')",
               (hashlib.sha256(SECRET.encode()).hexdigest(), NOW))
    db.commit()
    db.close()


async def _old_postgres(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
        for version, sql in postgres.MIGRATIONS:
            if version <= 3:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1)", version)
        for kind, name, uid, rv, by, spec in (("services", "web", "u-0", 1, "admin", SERVICE),
                                              ("sandboxes", "old-sb", "u-1", 2, "alice", SPEC)):
            await conn.execute(
                "INSERT INTO resources VALUES ($1,$2,$3,1,$4,'{}'::jsonb,$5,$6,$6,$7::jsonb,NULL)",
                kind, name, uid, rv, by, AT, json.dumps(spec))
        await conn.execute("UPDATE meta SET revision = 2")
        await conn.execute("INSERT INTO changes VALUES (2, 'sandboxes', 'ADDED', $1::jsonb, NULL)",
                           json.dumps(RECORD))
        await conn.execute("INSERT INTO tokens VALUES ('0123456789ab', 'alice', 'developer', $1, "
                           "$2, 'admin')", hashlib.sha256(SECRET.encode()).hexdigest(), AT)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[
        Callable[[], Store]]:
    """Makes stores over one database written with the schema before tenants."""
    if request.param == "sqlite":
        path = tmp_path / "old.db"
        _old_sqlite(path)
        yield lambda: SqliteStore(path)
        return
    dsn = await find_postgres()
    if dsn is None:
        pytest.skip(PG_SKIP_REASON)
    schemas = PgSchemas(dsn)
    schema = schemas.new()
    await _old_postgres(dsn, schema)
    try:
        yield lambda: PostgresStore(dsn, schema=schema)
    finally:
        await schemas.drop_all()


async def test_old_rows_read_as_the_default_tenant(old_store: Callable[[], Store]) -> None:
    store = old_store()
    await store.open()
    try:
        record = await store.get("sandboxes", "old-sb")
        assert (record.tenant, record.created_by) == ("default", "alice")
        [change] = await store.changes("sandboxes", after=0)
        assert change.record.tenant == "default"
        token = await store.get_token("0123456789ab")
        assert token is not None and token.tenant is None
        # a later write keeps it, and the change log now says so
        _, after = await store.update("sandboxes", "old-sb", labels={"x": "1"}, spec=SPEC,
                                      expected_version=None, now=AT)
        assert after.tenant == "default"
        assert (await store.changes("sandboxes", after=2))[0].record.tenant == "default"
    finally:
        await store.aclose()


async def test_an_old_developer_token_keeps_its_sandboxes(
    old_store: Callable[[], Store], tmp_path: Path
) -> None:
    settings = Settings(listen="127.0.0.1:0", data_dir=tmp_path, admin_token=ADMIN_TOKEN,
                        reconcile_interval=2.0, probe_timeout=0.3, replica="test")
    plane = ControlPlane(settings, store=old_store(), with_push=False)
    await plane.start()
    assert plane.api_address is not None
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{plane.api_address[1]}", plane)
            _, me, _ = await api.call("GET", "/api/v1/whoami", token=OLD_TOKEN)
            assert (me["subject"], me["tenant"]) == ("alice", "default")
            status, sb, _ = await api.call("GET", "/api/v1/sandboxes/old-sb", token=OLD_TOKEN)
            assert status == 200 and sb["metadata"]["tenant"] == "default", sb
            _, snap, _ = await api.call("GET", "/api/v1/snapshot", token=OLD_TOKEN)
            assert [(f["routing_key"], f["tenant"]) for f in snap["forks"]] == [
                ("old-key", "default")]
            status, made, _ = await api.call("POST", "/api/v1/tokens", json_body={
                "subject": "alice", "role": "developer", "tenant": "team-a"})
            assert status == 201, made
            status, _, _ = await api.call("GET", "/api/v1/sandboxes/old-sb", token=made["token"])
            assert status == 404  # the same subject in another tenant is someone else
    finally:
        await plane.aclose()
