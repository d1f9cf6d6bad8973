"""SQLite store (aiosqlite, WAL): the zero-setup default, one file in the data directory.

One connection, one asyncio lock: every statement sequence runs alone, so a transaction
never interleaves with another coroutine's reads. Change notification is in-process only:
several processes on one file do not learn of each other's writes (use PostgreSQL for
replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

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
    labels_match,
)

__all__ = ["SqliteStore"]

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL);
        INSERT INTO meta (id, revision) VALUES (1, 0);
        CREATE TABLE resources (
            kind TEXT NOT NULL, name TEXT NOT NULL, uid TEXT NOT NULL,
            generation INTEGER NOT NULL, resource_version INTEGER NOT NULL,
            labels TEXT NOT NULL, created_by TEXT NOT NULL,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
            spec TEXT NOT NULL, status TEXT,
            PRIMARY KEY (kind, name)
        );
        CREATE TABLE tokens (
            token_id TEXT PRIMARY KEY, subject TEXT NOT NULL, role TEXT NOT NULL,
            secret_sha256 TEXT NOT NULL, created_at TEXT NOT NULL, created_by TEXT NOT NULL
        );
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, subject TEXT NOT NULL,
            verb TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
            generation_before INTEGER, generation_after INTEGER, revision INTEGER
        );
        """,
    ),
    (
        2,
        """
        ALTER TABLE meta ADD COLUMN compacted INTEGER NOT NULL DEFAULT 0;
        UPDATE meta SET compacted = revision;
        CREATE TABLE changes (
            revision INTEGER PRIMARY KEY, kind TEXT NOT NULL, type TEXT NOT NULL,
            record TEXT NOT NULL, labels_before TEXT
        );
        CREATE INDEX changes_kind ON changes (kind, revision);
        """,
    ),
    (
        3,
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL,
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
    "kind, name, uid, generation, resource_version, labels, created_by, created_at, "
    "updated_at, spec, status, tenant"
)


def _record(row: Any) -> Record:
    return Record(
        kind=row[0],
        name=row[1],
        uid=row[2],
        generation=row[3],
        resource_version=row[4],
        labels=loads(row[5]),
        created_by=row[6],
        created_at=datetime.fromisoformat(row[7]),
        updated_at=datetime.fromisoformat(row[8]),
        spec=loads(row[9]),
        status=loads(row[10]),
        tenant=row[11],
    )


class SqliteStore(Store):
    def __init__(self, path: Path | str, *, history: int = 10_000) -> None:
        super().__init__(history)
        self._path = str(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Run alone, and turn sqlite errors into `Unavailable` (ours pass through)."""
        async with self._lock:
            try:
                yield
            except StoreError:
                raise
            except sqlite3.Error as exc:
                raise Unavailable(f"sqlite: {exc}") from exc

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self._path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA busy_timeout=5000")
        async with self._guard():
            await self._migrate()

    async def _migrate(self) -> None:
        db = self._conn
        await db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        async with db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            async with self._transaction():
                for statement in filter(str.strip, sql.split(";")):
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))

    async def aclose(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    # -- helpers ----------------------------------------------------------------------------
    async def _fetch(self, kind: str, name: str) -> Record | None:
        sql = f"SELECT {_COLUMNS} FROM resources WHERE kind = ? AND name = ?"
        async with self._conn.execute(sql, (kind, name)) as cur:
            row = await cur.fetchone()
        return None if row is None else _record(row)

    async def _bump(self) -> int:
        await self._conn.execute("UPDATE meta SET revision = revision + 1 WHERE id = 1")
        return await self._revision()

    async def _log(
        self, revision: int, type_: str, record: Record, labels_before: Any = None
    ) -> None:
        """Append to the change log (inside the write's transaction); trim it now and then."""
        await self._conn.execute(
            "INSERT INTO changes (revision, kind, type, record, labels_before) VALUES (?,?,?,?,?)",
            (revision, record.kind, type_, dumps(record_doc(record)),
             None if labels_before is None else dumps(dict(labels_before))),
        )
        if revision % COMPACT_EVERY == 0 and revision > self.history:
            through = revision - self.history
            await self._conn.execute("DELETE FROM changes WHERE revision <= ?", (through,))
            await self._conn.execute(
                "UPDATE meta SET compacted = MAX(compacted, ?) WHERE id = 1", (through,)
            )

    async def _revision(self) -> int:
        async with self._conn.execute("SELECT revision FROM meta WHERE id = 1") as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception, cancellation included.

        A cancelled `await` does not stop its statement: aiosqlite's thread still runs it.
        So a cancellation that lands on BEGIN leaves the connection inside a transaction
        holding the file's write lock unless we roll back, and one that lands on COMMIT may
        find the commit done. `rollback()` runs after every statement queued before it and is
        a no-op outside a transaction, so it is right in both cases.
        """
        db = self._conn
        try:
            await db.execute("BEGIN IMMEDIATE")
            yield
            await db.execute("COMMIT")
        except BaseException:
            await db.rollback()
            raise

    async def _write(self, body: Any) -> Any:
        """Run `body()` in an IMMEDIATE transaction; notify listeners after commit."""
        async with self._guard():
            try:
                async with self._transaction():
                    result, revision = await body()
            except asyncio.CancelledError:
                # the COMMIT may have gone through before the cancellation: tell listeners
                # whatever revision the file is at now (a repeated one is dropped)
                self._notify(await self._revision())
                raise
        if revision is not None:
            self._notify(revision)
        return result

    # -- resources --------------------------------------------------------------------------
    async def revision(self) -> int:
        async with self._guard():
            return await self._revision()

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
        async def body() -> tuple[Record, int]:
            if await self._fetch(kind, name) is not None:
                raise AlreadyExists(f"{kind}/{name} already exists")
            revision = await self._bump()
            at = to_utc(now)
            record = Record(
                kind=kind, name=name, uid=new_uid(), generation=1, resource_version=revision,
                labels=dict(labels), created_by=created_by, created_at=at, updated_at=at,
                spec=spec, status=status, tenant=tenant,
            )
            await self._conn.execute(
                f"INSERT INTO resources ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (kind, name, record.uid, 1, revision, dumps(record.labels), created_by,
                 at.isoformat(), at.isoformat(), dumps(spec),
                 None if status is None else dumps(status), tenant),
            )
            await self._log(revision, "ADDED", record)
            return record, revision

        result: Record = await self._write(body)
        return result

    async def get(self, kind: str, name: str) -> Record:
        async with self._guard():
            record = await self._fetch(kind, name)
        if record is None:
            raise NotFound(f"{kind}/{name} not found")
        return record

    async def list(
        self,
        kind: str,
        *,
        selector: SelectorLike | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Page:
        sql = f"SELECT {_COLUMNS} FROM resources WHERE kind = ? AND name > ? ORDER BY name"
        async with self._guard():
            revision = await self._revision()
            async with self._conn.execute(sql, (kind, after or "")) as cur:
                rows = await cur.fetchall()
        items = [r for r in map(_record, rows) if not selector or labels_match(r.labels, selector)]
        if limit is not None and len(items) > limit:
            return Page(tuple(items[:limit]), items[limit - 1].name, revision)
        return Page(tuple(items), None, revision)

    async def changes(
        self, kind: str | None, *, after: int, limit: int = 1000
    ) -> tuple[Change, ...]:
        sql = (
            "SELECT revision, type, record, labels_before FROM changes WHERE revision > ? "
            + ("AND kind = ? " if kind is not None else "")
            + "ORDER BY revision LIMIT ?"
        )
        params: tuple[Any, ...] = (after, kind, limit) if kind is not None else (after, limit)
        async with self._guard():
            async with self._conn.execute("SELECT compacted FROM meta WHERE id = 1") as cur:
                row = await cur.fetchone()
            compacted = int(row[0]) if row else 0
            if after < compacted:
                raise Expired(f"revision {after} is older than the history kept", compacted)
            async with self._conn.execute(sql, params) as cur:
                rows = await cur.fetchall()
        return tuple(
            Change(int(r[0]), r[1], record_from_doc(loads(r[2])), loads(r[3])) for r in rows
        )

    async def list_all(self) -> tuple[int, tuple[Record, ...]]:
        sql = f"SELECT {_COLUMNS} FROM resources ORDER BY kind, name"
        async with self._guard():
            revision = await self._revision()
            async with self._conn.execute(sql) as cur:
                rows = await cur.fetchall()
        return revision, tuple(map(_record, rows))

    async def _current(self, kind: str, name: str, expected_version: int | None) -> Record:
        record = await self._fetch(kind, name)
        if record is None:
            raise NotFound(f"{kind}/{name} not found")
        if expected_version is not None and expected_version != record.resource_version:
            raise Conflict(
                f"{kind}/{name} is at resourceVersion {record.resource_version}, "
                f"not {expected_version}"
            )
        return record

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
        async def body() -> tuple[tuple[Record, Record], int]:
            before = await self._current(kind, name, expected_version)
            revision = await self._bump()
            generation = next_generation(before.generation, before.labels, before.spec, labels, spec)
            at = to_utc(now)
            await self._conn.execute(
                "UPDATE resources SET generation = ?, resource_version = ?, labels = ?, "
                "spec = ?, updated_at = ? WHERE kind = ? AND name = ?",
                (generation, revision, dumps(dict(labels)), dumps(spec), at.isoformat(), kind, name),
            )
            after = Record(
                kind=kind, name=name, uid=before.uid, generation=generation,
                resource_version=revision, labels=dict(labels), created_by=before.created_by,
                created_at=before.created_at, updated_at=at, spec=spec, status=before.status,
                tenant=before.tenant,
            )
            await self._log(revision, "MODIFIED", after, before.labels)
            return (before, after), revision

        result: tuple[Record, Record] = await self._write(body)
        return result

    async def update_status(
        self, kind: str, name: str, *, status: JSON, expected_version: int | None
    ) -> Record:
        async def body() -> tuple[Record, int]:
            before = await self._current(kind, name, expected_version)
            revision = await self._bump()
            await self._conn.execute(
                "UPDATE resources SET resource_version = ?, status = ? WHERE kind = ? AND name = ?",
                (revision, dumps(status), kind, name),
            )
            after = Record(
                kind=kind, name=name, uid=before.uid, generation=before.generation,
                resource_version=revision, labels=before.labels, created_by=before.created_by,
                created_at=before.created_at, updated_at=before.updated_at, spec=before.spec,
                status=status, tenant=before.tenant,
            )
            await self._log(revision, "MODIFIED", after, before.labels)
            return after, revision

        result: Record = await self._write(body)
        return result

    async def delete(self, kind: str, name: str, *, expected_version: int | None = None) -> Record:
        async def body() -> tuple[Record, int]:
            before = await self._current(kind, name, expected_version)
            revision = await self._bump()
            await self._conn.execute(
                "DELETE FROM resources WHERE kind = ? AND name = ?", (kind, name)
            )
            await self._log(revision, "DELETED", before, before.labels)
            return before, revision

        result: Record = await self._write(body)
        return result

    # -- tokens -----------------------------------------------------------------------------
    async def add_token(self, token: TokenRecord) -> None:
        async def body() -> tuple[None, None]:
            try:
                await self._conn.execute(
                    "INSERT INTO tokens (token_id, subject, role, secret_sha256, created_at, "
                    "created_by, tenant) VALUES (?,?,?,?,?,?,?)",
                    (token.token_id, token.subject, token.role, token.secret_sha256,
                     to_utc(token.created_at).isoformat(), token.created_by, token.tenant),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"token {token.token_id} already exists") from exc
            return None, None

        await self._write(body)

    async def get_token(self, token_id: str) -> TokenRecord | None:
        sql = (
            "SELECT token_id, subject, role, secret_sha256, created_at, created_by, tenant "
            "FROM tokens WHERE token_id = ?"
        )
        async with self._guard(), self._conn.execute(sql, (token_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return TokenRecord(row[0], row[1], row[2], row[3], datetime.fromisoformat(row[4]), row[5],
                           row[6])

    async def count_tokens(self, role: str) -> int:
        sql = "SELECT COUNT(*) FROM tokens WHERE role = ?"
        async with self._guard(), self._conn.execute(sql, (role,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def list_tokens(self) -> tuple[TokenRecord, ...]:
        sql = (
            "SELECT token_id, subject, role, secret_sha256, created_at, created_by, tenant "
            "FROM tokens ORDER BY created_at, token_id"
        )
        async with self._guard(), self._conn.execute(sql) as cur:
            rows = await cur.fetchall()
        return tuple(
            TokenRecord(r[0], r[1], r[2], r[3], datetime.fromisoformat(r[4]), r[5], r[6])
            for r in rows
        )

    async def delete_token(self, token_id: str) -> bool:
        async def body() -> tuple[bool, None]:
            cur = await self._conn.execute("DELETE FROM tokens WHERE token_id = ?", (token_id,))
            return cur.rowcount > 0, None

        deleted: bool = await self._write(body)
        return deleted

    # -- audit ------------------------------------------------------------------------------
    async def append_audit(self, entry: AuditEntry) -> None:
        async def body() -> tuple[None, None]:
            await self._conn.execute(
                "INSERT INTO audit (at, subject, verb, kind, name, generation_before, "
                "generation_after, revision) VALUES (?,?,?,?,?,?,?,?)",
                (to_utc(entry.at).isoformat(), entry.subject, entry.verb, entry.kind, entry.name,
                 entry.generation_before, entry.generation_after, entry.revision),
            )
            return None, None

        await self._write(body)

    async def list_audit(
        self, *, after: int = 0, limit: int = 100, kind: str | None = None,
        name: str | None = None,
    ) -> tuple[AuditEntry, ...]:
        one = kind is not None and name is not None
        sql = (
            "SELECT seq, at, subject, verb, kind, name, generation_before, generation_after, "
            "revision FROM audit WHERE seq > ? "
            + ("AND kind = ? AND name = ? " if one else "")
            + "ORDER BY seq LIMIT ?"
        )
        params: tuple[Any, ...] = (after, kind, name, limit) if one else (after, limit)
        async with self._guard(), self._conn.execute(sql, params) as cur:
            rows = await cur.fetchall()
        return tuple(
            AuditEntry(
                at=datetime.fromisoformat(r[1]), subject=r[2], verb=r[3], kind=r[4], name=r[5],
                generation_before=r[6], generation_after=r[7], revision=r[8], seq=r[0],
            )
            for r in rows
        )

    # -- events -----------------------------------------------------------------------------
    async def append_events(self, entries: Sequence[EventEntry]) -> None:
        if not entries:
            return

        async def body() -> tuple[None, None]:
            await self._conn.executemany(
                "INSERT INTO events (at, kind, name, type, reason, message, source) "
                "VALUES (?,?,?,?,?,?,?)",
                [(to_utc(e.at).isoformat(), e.kind, e.name, e.type, e.reason, e.message,
                  e.source) for e in entries],
            )
            for kind, name in dict.fromkeys((e.kind, e.name) for e in entries):
                await self._conn.execute(
                    "DELETE FROM events WHERE kind = ? AND name = ? AND seq <= (SELECT seq "
                    "FROM events WHERE kind = ? AND name = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (kind, name, kind, name, EVENTS_KEPT),
                )
            return None, None

        await self._write(body)

    async def list_events(
        self, kind: str, name: str | None = None, *, since: datetime | None = None,
        limit: int = 100,
    ) -> tuple[EventEntry, ...]:
        sql = (
            "SELECT seq, at, kind, name, type, reason, message, source FROM events "
            "WHERE kind = ? AND at >= ? " + ("AND name = ? " if name is not None else "")
            + "ORDER BY seq DESC LIMIT ?"
        )
        after = "" if since is None else to_utc(since).isoformat()
        params: tuple[Any, ...] = (
            (kind, after, name, limit) if name is not None else (kind, after, limit)
        )
        async with self._guard(), self._conn.execute(sql, params) as cur:
            rows = await cur.fetchall()
        return tuple(
            EventEntry(datetime.fromisoformat(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[0])
            for r in reversed(list(rows))
        )
