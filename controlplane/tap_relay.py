"""Live-tap fan-in across control-plane replicas, through the PostgreSQL database they share.

A viewer's filter lives in the replica it reached, but proxies connected to the other
replicas must evaluate it too, and what they match must come back to that replica. With one
replica (SQLite) there is nothing to do and nothing here runs. With PostgreSQL:

- announce: each replica keeps its viewers' filters as rows of `tap_viewers` (id, hub, spec,
  expires_at), leased for `lease` seconds and renewed every `heartbeat`. A viewer that leaves
  is deleted at once; the rows of a replica that died expire and any replica deletes them.
  A change is announced with NOTIFY (payload `f`); every replica then reads the others' live
  rows and installs them (`TapHub.set_remote`), so its proxies are pushed those filters too.
  It re-reads every `heartbeat` as well (a lost notification, an expiry).
- relay: records a proxy sent for another replica's filter are batched per owner and written
  as one row of `tap_relay` (hub, batch) with a NOTIFY (payload `r:<hub>`); the owner takes
  its rows (`DELETE … RETURNING`) and hands them to its hub as if its own proxies had sent
  them. Rows nobody took (the owner died) are deleted after `keep` seconds.

Why rows and not NOTIFY payloads: a payload is at most 8,000 bytes, and one captured record
may be 40 KiB; a row takes any batch, and NOTIFY stays a small wake-up. Neither table holds
resources: nothing here bumps the store's revision, so a heartbeat never makes a replica
recompile or push a snapshot, and the change log keeps its history for watches.

Invariants: nothing here blocks the hub (`forward` appends to a bounded list; records that do
not fit are counted and reported to the viewer as dropped by proxy `relay`); a database
that is away only delays: each loop logs and tries again at the next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from typing import Any

import asyncpg
from pydantic import ValidationError

from forklane.controlplane.store.base import Store
from forklane.controlplane.store.postgres import PostgresStore
from forklane.controlplane.tap import TapHub
from forklane.proxy.push_messages import TapFilterSpec

__all__ = ["TapRelay", "relay_for"]

log = logging.getLogger("forklane.controlplane.tap")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tap_viewers (
    id TEXT PRIMARY KEY, hub TEXT NOT NULL, spec JSONB NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS tap_relay (
    seq BIGSERIAL PRIMARY KEY, hub TEXT NOT NULL, batch JSONB NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS tap_relay_hub ON tap_relay (hub, seq);
"""
_ROW_BYTES = 1 << 20  # a relay row holds about this much JSON at most
_TAKE = 50  # rows taken per statement
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
RELAY = "relay"  # the "proxy" that counts records the relay could not hold


def relay_for(store: Store, hub: TapHub) -> TapRelay | None:
    """The relay a store needs: one for PostgreSQL (several replicas), none otherwise."""
    if isinstance(store, PostgresStore):
        return TapRelay(hub, store.dsn, store.schema)
    return None


class TapRelay:
    def __init__(
        self,
        hub: TapHub,
        dsn: str,
        schema: str | None = None,
        *,
        heartbeat: float = 2.0,
        lease: float = 10.0,
        keep: float = 60.0,
        max_pending: int = 2000,
    ) -> None:
        self.hub = hub
        self.dsn = dsn
        self._settings = {"search_path": schema} if schema else {}
        self.channel = "forklane_tap" + (f"__{schema}" if schema else "")
        self.heartbeat = heartbeat
        self.lease = lease
        self.keep = keep
        self.max_pending = max_pending
        self._pool: asyncpg.Pool | None = None
        self._listen: asyncpg.Connection | None = None
        self._announced: set[str] = set()
        self._remote_changed = asyncio.Event()
        self._to_take = asyncio.Event()
        self._to_send = asyncio.Event()
        self._pending: dict[str, list[dict[str, Any]]] = {}  # owner -> batch items
        self._pending_records = 0
        self._overflow: dict[str, Counter[str]] = {}  # owner -> tap id -> records dropped
        self._tasks: list[asyncio.Task[None]] = []
        self.relayed = 0  # records written for other replicas
        self.taken = 0  # records taken for this replica's viewers

    @property
    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("tap relay is not started")
        return self._pool

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=3, server_settings=self._settings
        )
        async with self._db.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('forklane-tap:' || current_schema()))"
            )
            await conn.execute(_SCHEMA)
        self._listen = await asyncpg.connect(self.dsn, server_settings=self._settings)
        await self._listen.add_listener(self.channel, self._on_notification)
        self.hub.forward = self.forward
        for name, loop in (("announce", self._announce_loop), ("send", self._send_loop),
                           ("take", self._take_loop)):
            self._tasks.append(asyncio.create_task(loop(), name=f"forklane-tap-{name}"))

    async def aclose(self) -> None:
        self.hub.forward = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._listen is not None:
            conn, self._listen = self._listen, None
            with contextlib.suppress(*_ERRORS):
                await conn.remove_listener(self.channel, self._on_notification)
            with contextlib.suppress(*_ERRORS):
                await conn.close()
        if self._pool is not None:
            with contextlib.suppress(*_ERRORS):  # our viewers are gone with us
                async with self._pool.acquire() as conn:
                    await conn.execute("DELETE FROM tap_viewers WHERE hub = $1", self.hub.id)
                    await conn.execute("SELECT pg_notify($1, 'f')", self.channel)
            pool, self._pool = self._pool, None
            await pool.close()
        self.hub.set_remote({})

    def _on_notification(self, conn: object, pid: int, channel: str, payload: str) -> None:
        if payload == "f":
            self._remote_changed.set()
        elif payload == f"r:{self.hub.id}":
            self._to_take.set()

    # -- announcing this replica's filters, learning the others' ---------------------------

    async def _announce_loop(self) -> None:
        hub = self.hub
        while True:
            hub.local_changed.clear()
            self._remote_changed.clear()
            try:
                await self.sync()
            except _ERRORS:
                log.warning("tap: cannot reach the database to share filters", exc_info=True)
            waits = [asyncio.ensure_future(hub.local_changed.wait()),
                     asyncio.ensure_future(self._remote_changed.wait())]
            try:
                await asyncio.wait(waits, timeout=self.heartbeat,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def sync(self) -> None:
        """Renew this replica's leases (adding new viewers, removing gone ones), then install
        the live filters of the other replicas."""
        hub = self.hub
        local = {spec.id: spec for spec in hub.local_filters()}
        async with self._db.acquire() as conn, conn.transaction():
            if local:
                await conn.execute(
                    "INSERT INTO tap_viewers (id, hub, spec, expires_at) "
                    "SELECT x.id, $1, x.spec::jsonb, now() + make_interval(secs => $2) "
                    "FROM unnest($3::text[], $4::text[]) AS x(id, spec) "
                    "ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                    hub.id, self.lease, list(local),
                    [spec.model_dump_json() for spec in local.values()],
                )
            gone = await conn.fetch(
                "DELETE FROM tap_viewers WHERE (hub = $1 AND NOT (id = ANY($2::text[]))) "
                "OR expires_at < now() RETURNING id", hub.id, list(local),
            )
            if gone or set(local) - self._announced:
                await conn.execute("SELECT pg_notify($1, 'f')", self.channel)
            rows = await conn.fetch(
                "SELECT id, hub, spec::text FROM tap_viewers "
                "WHERE hub <> $1 AND expires_at > now() ORDER BY id", hub.id,
            )
            await conn.execute(
                "DELETE FROM tap_relay WHERE at < now() - make_interval(secs => $1)", self.keep
            )
        self._announced = set(local)
        remote: dict[str, tuple[TapFilterSpec, str]] = {}
        for row in rows:
            try:
                remote[str(row[0])] = (TapFilterSpec.model_validate_json(row[2]), str(row[1]))
            except ValidationError:  # a newer replica's filter this one cannot read
                continue
        hub.set_remote(remote)

    # -- records for other replicas' viewers ----------------------------------------------

    def forward(self, owner: str, item: dict[str, Any]) -> None:
        """Queue records (or message deliveries) for `owner`'s viewers (called by the hub;
        never blocks). Records beyond `max_pending` are counted as dropped instead."""
        records = item.get("records") or []
        if records and self._pending_records + len(records) > self.max_pending:
            lost = self._overflow.setdefault(owner, Counter())
            for record in records:
                lost.update(record.get("taps") or ())
            item = {**item, "records": []}
            records = []
        self._pending.setdefault(owner, []).append(item)
        self._pending_records += len(records) + len(item.get("deliveries") or ())
        self._to_send.set()

    async def _send_loop(self) -> None:
        while True:
            await self._to_send.wait()
            self._to_send.clear()
            pending, self._pending = self._pending, {}
            self._pending_records = 0
            overflow, self._overflow = self._overflow, {}
            for owner, lost in overflow.items():
                pending.setdefault(owner, []).append(
                    {"proxy": RELAY, "records": [], "dropped": dict(lost)})
            try:
                await self._send(pending)
            except _ERRORS:
                log.warning("tap: cannot relay records to other replicas", exc_info=True)

    async def _send(self, pending: dict[str, list[dict[str, Any]]]) -> None:
        if not pending:
            return
        async with self._db.acquire() as conn, conn.transaction():
            for owner, items in pending.items():
                for batch in _rows(items):
                    await conn.execute(
                        "INSERT INTO tap_relay (hub, batch) VALUES ($1, $2::jsonb)",
                        owner, batch,
                    )
                await conn.execute("SELECT pg_notify($1, $2)", self.channel, f"r:{owner}")
        self.relayed += sum(len(i.get("records") or ()) for items in pending.values()
                            for i in items)

    async def _take_loop(self) -> None:
        while True:
            self._to_take.clear()
            try:
                await self.take()
            except _ERRORS:
                log.warning("tap: cannot read records relayed to this replica", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._to_take.wait(), self.heartbeat)

    async def take(self) -> None:
        """Hand every row relayed to this replica to its hub, oldest first."""
        while True:
            async with self._db.acquire() as conn:
                rows = await conn.fetch(
                    "DELETE FROM tap_relay WHERE seq IN (SELECT seq FROM tap_relay "
                    "WHERE hub = $1 ORDER BY seq LIMIT $2) RETURNING seq, batch::text",
                    self.hub.id, _TAKE,
                )
            for row in sorted(rows, key=lambda r: int(r[0])):
                for item in json.loads(row[1]):
                    if "deliveries" in item:
                        self.hub.deliveries(str(item.get("reporter")), item["deliveries"],
                                            relay=False)
                        continue
                    records = item.get("records") or []
                    self.hub.received(str(item.get("proxy")), records, item.get("dropped") or {})
                    self.taken += len(records)
            if len(rows) < _TAKE:
                return


def _rows(items: list[dict[str, Any]]) -> list[str]:
    """Batch items as JSON arrays of about `_ROW_BYTES` each (one item may be alone)."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for item in items:
        text = json.dumps(item, separators=(",", ":"))
        if current and size + len(text) > _ROW_BYTES:
            out.append("[" + ",".join(current) + "]")
            current, size = [], 0
        current.append(text)
        size += len(text) + 1
    if current:
        out.append("[" + ",".join(current) + "]")
    return out
