"""PostgreSQL store (asyncpg): for several control-plane replicas sharing one database.

Every write runs in one transaction that first bumps the single-row revision counter; that
row lock serialises writers, so revisions commit in order. The same transaction calls
`pg_notify` with the new revision; PostgreSQL delivers it on commit to every replica
listening on the channel (including this one), so each replica recompiles and pushes every
change to its own proxies. A replica also notifies its own listeners directly after commit,
so it never waits on the round trip for its own writes.

`schema` isolates a deployment (or a test run) inside one database; the channel name
includes it. Migrations are versioned and run under an advisory lock, so replicas starting
together migrate once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from forklane.controlplane.store._common import (
    COMPACT_EVERY,
    dumps,
    loads,
    new_uid,
    next_generation,
    record_doc,
    record_from_doc,
    to_utc,
)
from forklane.controlplane.store.base import (
    DEFAULT_TENANT,
    EVENTS_KEPT,
    JSON,
    AlreadyExists,
    AuditEntry,
    Change,
    Conflict,
    EventEntry,
    Expired,
    NotFound,
    Page,
    Record,
    SelectorLike,
    Store,
    StoreError,
    TokenRecord,
    Unavailable,
    equality_terms,
    labels_match,
)

__all__ = ["PostgresStore"]

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), revision BIGINT NOT NULL);
        INSERT INTO meta (id, revision) VALUES (1, 0);
        CREATE TABLE resources (
            kind TEXT NOT NULL, name TEXT NOT NULL, uid TEXT NOT NULL,
            generation BIGINT NOT NULL, resource_version BIGINT NOT NULL,
            labels JSONB NOT NULL, created_by TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL,
            spec JSONB NOT NULL, status JSONB,
            PRIMARY KEY (kind, name)
        );
        CREATE TABLE tokens (
            token_id TEXT PRIMARY KEY, subject TEXT NOT NULL, role TEXT NOT NULL,
            secret_sha256 TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, created_by TEXT NOT NULL
        );
        CREATE TABLE audit (
            seq BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL, subject TEXT NOT NULL,
            verb TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
            generation_before BIGINT, generation_after BIGINT, revision BIGINT
        );
        """,
    ),
    (
        2,
        """
        ALTER TABLE meta ADD COLUMN compacted BIGINT NOT NULL DEFAULT 0;
        UPDATE meta SET compacted = revision;
        CREATE TABLE changes (
            revision BIGINT PRIMARY KEY, kind TEXT NOT NULL, type TEXT NOT NULL,
            record JSONB NOT NULL, labels_before JSONB
        );
        CREATE INDEX changes_kind ON changes (kind, revision);
        """,
    ),
    (
        3,
        """
        CREATE TABLE events (
            seq BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL, kind TEXT NOT NULL,
            name TEXT NOT NULL, type TEXT NOT NULL, reason TEXT NOT NULL,
            message TEXT NOT NULL, source TEXT NOT NULL
        );
        CREATE INDEX events_object ON events (kind, name, seq);
        """,
    ),
    (
        4,
        # tenants: existing objects are the default tenant's; existing tokens name none
        # (a developer token without one acts in the default tenant)
        """
        ALTER TABLE resources ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
        ALTER TABLE tokens ADD COLUMN tenant TEXT;
        """,
    ),
)

_COLUMNS = (
    "kind, name, uid, generation, resource_version, labels::text, created_by, created_at, "
    "updated_at, spec::text, status::text, tenant"
)


def _record(row: Any) -> Record:
    return Record(
        kind=row[0],
        name=row[1],
        uid=row[2],
        generation=int(row[3]),
        resource_version=int(row[4]),
        labels=loads(row[5]),
        created_by=row[6],
        created_at=row[7],
        updated_at=row[8],
        spec=loads(row[9]),
        status=loads(row[10]),
        tenant=row[11],
    )


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


@contextlib.asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    """asyncpg and socket errors become `Unavailable`; our own errors pass through."""
    try:
        yield
    except StoreError:
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise Unavailable(f"postgresql: {exc}") from exc


class PostgresStore(Store):
    def __init__(self, dsn: str, *, schema: str | None = None, history: int = 10_000) -> None:
        super().__init__(history)
        self._dsn = dsn
        self._schema = schema
        self._channel = "forklane_changes" + (f"__{schema}" if schema else "")
        self._pool: asyncpg.Pool | None = None
        self._listen_conn: asyncpg.Connection | None = None

    @property
    def dsn(self) -> str:
        """Where the database is (for the live-tap relay, which keeps its tables beside)."""
        return self._dsn

    @property
    def schema(self) -> str | None:
        return self._schema

    @property
    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def open(self) -> None:
        settings = {"search_path": self._schema} if self._schema else {}
        async with _translated():
            if self._schema:
                conn = await asyncpg.connect(self._dsn)
                try:
                    with contextlib.suppress(asyncpg.UniqueViolationError):
                        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self._schema)}")
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=5, server_settings=settings
            )
            await self._migrate()
            self._listen_conn = await asyncpg.connect(self._dsn, server_settings=settings)
            await self._listen_conn.add_listener(self._channel, self._on_notification)

    def _on_notification(self, conn: object, pid: int, channel: str, payload: str) -> None:
        if payload.isdigit():
            self._notify(int(payload))

    async def _migrate(self) -> None:
        async with self._db.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('forklane-migrate:' || current_schema()))"
            )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)"
            )
            current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            for version, sql in MIGRATIONS:
                if version > current:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)

    async def aclose(self) -> None:
        if self._listen_conn is not None:
            conn, self._listen_conn = self._listen_conn, None
            with contextlib.suppress(Exception):
                await conn.remove_listener(self._channel, self._on_notification)
            await conn.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    # -- helpers ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[tuple[asyncpg.Connection, list[int]]]:
        """A write transaction that bumps the revision; listeners hear of it after commit."""
        bumped: list[int] = []
        async with _translated(), self._db.acquire() as conn:
            async with conn.transaction():
                revision = int(
                    await conn.fetchval(
                        "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision"
                    )
                )
                bumped.append(revision)
                await conn.execute("SELECT pg_notify($1, $2)", self._channel, str(revision))
                yield conn, bumped
        self._notify(revision)

    async def _log(
        self, conn: asyncpg.Connection, revision: int, type_: str, record: Record,
        labels_before: Any = None,
    ) -> None:
        """Append to the change log (inside the write's transaction); trim it now and then."""
        await conn.execute(
            "INSERT INTO changes (revision, kind, type, record, labels_before) "
            "VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)",
            revision, record.kind, type_, dumps(record_doc(record)),
            None if labels_before is None else dumps(dict(labels_before)),
        )
        if revision % COMPACT_EVERY == 0 and revision > self.history:
            through = revision - self.history
            await conn.execute("DELETE FROM changes WHERE revision <= $1", through)
            await conn.execute(
                "UPDATE meta SET compacted = GREATEST(compacted, $1) WHERE id = 1", through
            )

    @staticmethod
    async def _current(
        conn: asyncpg.Connection, kind: str, name: str, expected_version: int | None
    ) -> Record:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM resources WHERE kind = $1 AND name = $2", kind, name
        )
        if row is None:
            raise NotFound(f"{kind}/{name} not found")
        record = _record(row)
        if expected_version is not None and expected_version != record.resource_version:
            raise Conflict(
                f"{kind}/{name} is at resourceVersion {record.resource_version}, "
                f"not {expected_version}"
            )
        return record

    # -- resources --------------------------------------------------------------------------
    async def revision(self) -> int:
        async with _translated():
            return int(await self._db.fetchval("SELECT revision FROM meta WHERE id = 1"))

    async def create(
        self,
        kind: str,
        name: str,
        *,
        labels: Mapping[str, str],
        spec: JSON,
        status: JSON | None,
        created_by: str,
        now: datetime,
        tenant: str = DEFAULT_TENANT,
    ) -> Record:
        at = to_utc(now)
        async with self._write() as (conn, bumped):
            revision = bumped[0]
            record = Record(
                kind=kind, name=name, uid=new_uid(), generation=1, resource_version=revision,
                labels=dict(labels), created_by=created_by, created_at=at, updated_at=at,
                spec=spec, status=status, tenant=tenant,
            )
            inserted = await conn.fetchval(
                "INSERT INTO resources (kind, name, uid, generation, resource_version, labels, "
                "created_by, created_at, updated_at, spec, status, tenant) "
                "VALUES ($1,$2,$3,1,$4,$5::jsonb,$6,$7,$7,$8::jsonb,$9::jsonb,$10) "
                "ON CONFLICT (kind, name) DO NOTHING RETURNING 1",
                kind, name, record.uid, revision, dumps(record.labels), created_by, at,
                dumps(spec), None if status is None else dumps(status), tenant,
            )
            if inserted is None:
                raise AlreadyExists(f"{kind}/{name} already exists")
            await self._log(conn, revision, "ADDED", record)
        return record

    async def get(self, kind: str, name: str) -> Record:
        async with _translated():
            row = await self._db.fetchrow(
                f"SELECT {_COLUMNS} FROM resources WHERE kind = $1 AND name = $2", kind, name
            )
        if row is None:
            raise NotFound(f"{kind}/{name} not found")
        return _record(row)

    async def list(
        self,
        kind: str,
        *,
        selector: SelectorLike | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Page:
        async with _translated(), self._db.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                revision = int(await conn.fetchval("SELECT revision FROM meta WHERE id = 1"))
                rows = await conn.fetch(
                    f"SELECT {_COLUMNS} FROM resources WHERE kind = $1 AND name > $2 "
                    "AND labels @> $3::jsonb ORDER BY name",
                    kind, after or "", dumps(equality_terms(selector)),
                )
        items = [r for r in map(_record, rows) if not selector or labels_match(r.labels, selector)]
        if limit is not None and len(items) > limit:
            return Page(tuple(items[:limit]), items[limit - 1].name, revision)
        return Page(tuple(items), None, revision)

    async def changes(
        self, kind: str | None, *, after: int, limit: int = 1000
    ) -> tuple[Change, ...]:
        async with _translated(), self._db.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                compacted = int(await conn.fetchval("SELECT compacted FROM meta WHERE id = 1"))
                if after < compacted:
                    raise Expired(f"revision {after} is older than the history kept", compacted)
                if kind is None:
                    rows = await conn.fetch(
                        "SELECT revision, type, record::text, labels_before::text FROM changes "
                        "WHERE revision > $1 ORDER BY revision LIMIT $2", after, limit,
                    )
                else:
                    rows = await conn.fetch(
                        "SELECT revision, type, record::text, labels_before::text FROM changes "
                        "WHERE revision > $1 AND kind = $2 ORDER BY revision LIMIT $3",
                        after, kind, limit,
                    )
        return tuple(
            Change(int(r[0]), r[1], record_from_doc(loads(r[2])), loads(r[3])) for r in rows
        )

    async def list_all(self) -> tuple[int, tuple[Record, ...]]:
        async with _translated(), self._db.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                revision = int(await conn.fetchval("SELECT revision FROM meta WHERE id = 1"))
                rows = await conn.fetch(f"SELECT {_COLUMNS} FROM resources ORDER BY kind, name")
        return revision, tuple(map(_record, rows))

    async def update(
        self,
        kind: str,
        name: str,
        *,
        labels: Mapping[str, str],
        spec: JSON,
        expected_version: int | None,
        now: datetime,
    ) -> tuple[Record, Record]:
        at = to_utc(now)
        async with self._write() as (conn, bumped):
            revision = bumped[0]
            before = await self._current(conn, kind, name, expected_version)
            generation = next_generation(before.generation, before.labels, before.spec, labels, spec)
            await conn.execute(
                "UPDATE resources SET generation = $1, resource_version = $2, labels = $3::jsonb, "
                "spec = $4::jsonb, updated_at = $5 WHERE kind = $6 AND name = $7",
                generation, revision, dumps(dict(labels)), dumps(spec), at, kind, name,
            )
            after = Record(
                kind=kind, name=name, uid=before.uid, generation=generation,
                resource_version=revision, labels=dict(labels), created_by=before.created_by,
                created_at=before.created_at, updated_at=at, spec=spec, status=before.status,
                tenant=before.tenant,
            )
            await self._log(conn, revision, "MODIFIED", after, before.labels)
        return before, after

    async def update_status(
        self, kind: str, name: str, *, status: JSON, expected_version: int | None
    ) -> Record:
        async with self._write() as (conn, bumped):
            revision = bumped[0]
            before = await self._current(conn, kind, name, expected_version)
            await conn.execute(
                "UPDATE resources SET resource_version = $1, status = $2::jsonb "
                "WHERE kind = $3 AND name = $4",
                revision, dumps(status), kind, name,
            )
            after = Record(
                kind=kind, name=name, uid=before.uid, generation=before.generation,
                resource_version=revision, labels=before.labels, created_by=before.created_by,
                created_at=before.created_at, updated_at=before.updated_at, spec=before.spec,
                status=status, tenant=before.tenant,
            )
            await self._log(conn, revision, "MODIFIED", after, before.labels)
        return after

    async def delete(self, kind: str, name: str, *, expected_version: int | None = None) -> Record:
        async with self._write() as (conn, bumped):
            before = await self._current(conn, kind, name, expected_version)
            await conn.execute("DELETE FROM resources WHERE kind = $1 AND name = $2", kind, name)
            await self._log(conn, bumped[0], "DELETED", before, before.labels)
        return before

    # -- tokens -----------------------------------------------------------------------------
    async def add_token(self, token: TokenRecord) -> None:
        try:
            async with _translated():
                await self._db.execute(
                    "INSERT INTO tokens (token_id, subject, role, secret_sha256, created_at, "
                    "created_by, tenant) VALUES ($1,$2,$3,$4,$5,$6,$7)",
                    token.token_id, token.subject, token.role, token.secret_sha256,
                    to_utc(token.created_at), token.created_by, token.tenant,
                )
        except Unavailable as exc:
            if isinstance(exc.__cause__, asyncpg.UniqueViolationError):
                raise AlreadyExists(f"token {token.token_id} already exists") from exc
            raise

    async def get_token(self, token_id: str) -> TokenRecord | None:
        async with _translated():
            row = await self._db.fetchrow(
                "SELECT token_id, subject, role, secret_sha256, created_at, created_by, tenant "
                "FROM tokens WHERE token_id = $1",
                token_id,
            )
        if row is None:
            return None
        return TokenRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6])

    async def count_tokens(self, role: str) -> int:
        async with _translated():
            return int(await self._db.fetchval("SELECT COUNT(*) FROM tokens WHERE role = $1", role))

    async def list_tokens(self) -> tuple[TokenRecord, ...]:
        async with _translated():
            rows = await self._db.fetch(
                "SELECT token_id, subject, role, secret_sha256, created_at, created_by, tenant "
                "FROM tokens ORDER BY created_at, token_id"
            )
        return tuple(TokenRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows)

    async def delete_token(self, token_id: str) -> bool:
        async with _translated():
            done = await self._db.execute("DELETE FROM tokens WHERE token_id = $1", token_id)
        return str(done).endswith(" 1")

    # -- audit ------------------------------------------------------------------------------
    async def append_audit(self, entry: AuditEntry) -> None:
        async with _translated():
            await self._db.execute(
                "INSERT INTO audit (at, subject, verb, kind, name, generation_before, "
                "generation_after, revision) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                to_utc(entry.at), entry.subject, entry.verb, entry.kind, entry.name,
                entry.generation_before, entry.generation_after, entry.revision,
            )

    async def list_audit(
        self, *, after: int = 0, limit: int = 100, kind: str | None = None,
        name: str | None = None,
    ) -> tuple[AuditEntry, ...]:
        columns = (
            "SELECT seq, at, subject, verb, kind, name, generation_before, generation_after, "
            "revision FROM audit "
        )
        async with _translated():
            if kind is not None and name is not None:
                rows = await self._db.fetch(
                    columns + "WHERE seq > $1 AND kind = $2 AND name = $3 ORDER BY seq LIMIT $4",
                    after, kind, name, limit,
                )
            else:
                rows = await self._db.fetch(
                    columns + "WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit
                )
        return tuple(
            AuditEntry(
                at=r[1], subject=r[2], verb=r[3], kind=r[4], name=r[5],
                generation_before=r[6], generation_after=r[7], revision=r[8], seq=int(r[0]),
            )
            for r in rows
        )

    # -- events -----------------------------------------------------------------------------
    async def append_events(self, entries: Sequence[EventEntry]) -> None:
        if not entries:
            return
        async with _translated(), self._db.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO events (at, kind, name, type, reason, message, source) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7)",
                [(to_utc(e.at), e.kind, e.name, e.type, e.reason, e.message, e.source)
                 for e in entries],
            )
            for kind, name in dict.fromkeys((e.kind, e.name) for e in entries):
                await conn.execute(
                    "DELETE FROM events WHERE kind = $1 AND name = $2 AND seq <= (SELECT seq "
                    "FROM events WHERE kind = $1 AND name = $2 ORDER BY seq DESC LIMIT 1 "
                    "OFFSET $3)",
                    kind, name, EVENTS_KEPT,
                )

    async def list_events(
        self, kind: str, name: str | None = None, *, since: datetime | None = None,
        limit: int = 100,
    ) -> tuple[EventEntry, ...]:
        columns = "SELECT seq, at, kind, name, type, reason, message, source FROM events "
        start = None if since is None else to_utc(since)
        async with _translated():
            if name is not None:
                rows = await self._db.fetch(
                    columns + "WHERE kind = $1 AND name = $2 AND ($3::timestamptz IS NULL OR "
                    "at >= $3) ORDER BY seq DESC LIMIT $4", kind, name, start, limit,
                )
            else:
                rows = await self._db.fetch(
                    columns + "WHERE kind = $1 AND ($2::timestamptz IS NULL OR at >= $2) "
                    "ORDER BY seq DESC LIMIT $3", kind, start, limit,
                )
        return tuple(
            EventEntry(r[1], r[2], r[3], r[4], r[5], r[6], r[7], int(r[0])) for r in reversed(rows)
        )
