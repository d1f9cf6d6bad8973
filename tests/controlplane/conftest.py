"""Shared fixtures: stores on SQLite (temporary file) and on the local PostgreSQL server.

PostgreSQL tests use a fresh schema per test and drop it afterwards; they are skipped with a
reason when no server answers on 127.0.0.1:5432.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from forklane.controlplane.store.base import Store
from forklane.controlplane.store.postgres import PostgresStore
from forklane.controlplane.store.sqlite import SqliteStore

PG_DSNS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
_pg_dsn: list[str | None] = []
PG_SKIP_REASON = "PostgreSQL is not reachable on 127.0.0.1:5432 (user postgres/root, db test)"


async def find_postgres() -> str | None:
    """The first DSN that connects, remembered for the session."""
    if _pg_dsn:
        return _pg_dsn[0]
    for dsn in PG_DSNS:
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            continue
        await conn.close()
        _pg_dsn.append(dsn)
        return dsn
    _pg_dsn.append(None)
    return None


class PgSchemas:
    """Creates uniquely named schemas and drops them all at teardown."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.names: list[str] = []

    def new(self) -> str:
        name = f"fl_test_{uuid.uuid4().hex[:12]}"
        self.names.append(name)
        return name

    async def drop_all(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            for name in self.names:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture
async def pg_schemas() -> AsyncIterator[PgSchemas]:
    dsn = await find_postgres()
    if dsn is None:
        pytest.skip(PG_SKIP_REASON)
    schemas = PgSchemas(dsn)
    yield schemas
    await schemas.drop_all()


StoreFactory = Callable[[], Store]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Makes (unopened) stores that share one database, as replicas would."""
    made: list[Store] = []
    if request.param == "sqlite":
        path = tmp_path / "forklane.db"

        def make() -> Store:
            made.append(SqliteStore(path))
            return made[-1]

        yield make
    else:
        dsn = await find_postgres()
        if dsn is None:
            pytest.skip(PG_SKIP_REASON)
        schemas = PgSchemas(dsn)
        schema = schemas.new()

        def make() -> Store:
            made.append(PostgresStore(schemas.dsn, schema=schema))
            return made[-1]

        yield make
    for store in made:
        await store.aclose()
    if request.param == "postgres":
        await schemas.drop_all()


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    s = store_factory()
    await s.open()
    return s


# -- a running control plane (API + reconciler, no push server) -----------------------------

ADMIN_TOKEN = "admin-token-for-tests-0123456789"


class Api:
    """A real HTTP client bound to one running control plane."""

    def __init__(self, session: aiohttp.ClientSession, base: str, plane: ControlPlane) -> None:
        self.session = session
        self.base = base
        self.plane = plane

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = ADMIN_TOKEN,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        payload = io.BytesIO(data) if data is not None and len(data) > 1 << 20 else data
        async with self.session.request(
            method, self.base + path, json=json_body, data=payload, headers=hdrs
        ) as resp:
            text = await resp.text()
            body = json.loads(text) if text else None
            return resp.status, body, resp.headers

    async def token(self, subject: str, role: str) -> str:
        status, body, _ = await self.call(
            "POST", "/api/v1/tokens", json_body={"subject": subject, "role": role}
        )
        assert status == 201, body
        token: str = body["token"]
        return token


@contextlib.asynccontextmanager
async def serve_api(settings: Settings) -> AsyncIterator[Api]:
    """A control plane without push on `settings`, and a client session for its API; both
    closed on exit."""
    plane = ControlPlane(settings, with_push=False)
    await plane.start()
    assert plane.api_address is not None
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(session, f"http://127.0.0.1:{plane.api_address[1]}", plane)
    finally:
        await plane.aclose()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings(
        listen="127.0.0.1:0", store="sqlite", data_dir=tmp_path, admin_token=ADMIN_TOKEN,
        reconcile_interval=2.0, probe_timeout=0.5, replica="test",
    )
    async with serve_api(settings) as api:
        yield api
