"""One contract suite for every store backend (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from forklane.controlplane.store.base import (
    AlreadyExists,
    AuditEntry,
    Conflict,
    Expired,
    NotFound,
    Store,
    TokenRecord,
)

StoreFactory = Callable[[], Store]

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def make(store: Store, name: str, labels: dict[str, str] | None = None) -> int:
    rec = await store.create(
        "sandboxes", name, labels=labels or {}, spec={"n": name}, status=None,
        created_by="alice", now=T0,
    )
    return rec.resource_version


async def test_create_get_and_revision_bumps(store: Store) -> None:
    assert await store.revision() == 0
    rec = await store.create(
        "sandboxes", "a", labels={"team": "x"}, spec={"forks": [1]}, status=None,
        created_by="alice", now=T0,
    )
    assert (rec.generation, rec.resource_version) == (1, 1)
    got = await store.get("sandboxes", "a")
    assert got == rec
    assert got.created_at == T0 and got.labels == {"team": "x"} and got.spec == {"forks": [1]}
    assert await store.revision() == 1
    with pytest.raises(AlreadyExists):
        await make(store, "a")
    assert await store.revision() == 1, "a failed write must not bump the revision"
    # same name, other kind: independent
    other = await store.create(
        "services", "a", labels={}, spec={}, status=None, created_by="bob", now=T0
    )
    assert other.resource_version == 2


async def test_get_missing_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.get("sandboxes", "nope")
    with pytest.raises(NotFound):
        await store.delete("sandboxes", "nope")
    with pytest.raises(NotFound):
        await store.update_status("sandboxes", "nope", status={}, expected_version=None)


async def test_update_generation_and_optimistic_concurrency(store: Store) -> None:
    rv = await make(store, "a")
    before, after = await store.update(
        "sandboxes", "a", labels={}, spec={"n": "changed"}, expected_version=rv,
        now=T0 + timedelta(seconds=5),
    )
    assert before.generation == 1 and after.generation == 2
    assert after.resource_version == rv + 1
    assert after.updated_at == T0 + timedelta(seconds=5) and after.created_at == T0
    with pytest.raises(Conflict):
        await store.update(
            "sandboxes", "a", labels={}, spec={"n": "lost"}, expected_version=rv, now=T0
        )
    assert (await store.get("sandboxes", "a")).spec == {"n": "changed"}
    # identical spec: new resourceVersion, same generation
    _, same = await store.update(
        "sandboxes", "a", labels={}, spec={"n": "changed"}, expected_version=None, now=T0
    )
    assert same.generation == 2 and same.resource_version == rv + 2


async def test_status_write_bumps_version_not_generation(store: Store) -> None:
    rv = await make(store, "a")
    rec = await store.update_status(
        "sandboxes", "a", status={"phase": "Ready"}, expected_version=rv
    )
    assert rec.generation == 1 and rec.resource_version == rv + 1
    assert (await store.get("sandboxes", "a")).status == {"phase": "Ready"}
    with pytest.raises(Conflict):
        await store.update_status("sandboxes", "a", status={}, expected_version=rv)


async def test_delete_bumps_revision_and_honours_expected_version(store: Store) -> None:
    rv = await make(store, "a")
    with pytest.raises(Conflict):
        await store.delete("sandboxes", "a", expected_version=rv + 7)
    gone = await store.delete("sandboxes", "a", expected_version=rv)
    assert gone.name == "a"
    assert await store.revision() == rv + 1
    with pytest.raises(NotFound):
        await store.get("sandboxes", "a")


async def test_list_selector_and_pagination(store: Store) -> None:
    for i in range(5):
        await make(store, f"s{i}", {"team": "x" if i % 2 == 0 else "y", "env": "dev"})
    everything = await store.list("sandboxes")
    assert [r.name for r in everything.items] == ["s0", "s1", "s2", "s3", "s4"]
    assert everything.continue_after is None and everything.revision == 5
    team_x = await store.list("sandboxes", selector={"team": "x", "env": "dev"})
    assert [r.name for r in team_x.items] == ["s0", "s2", "s4"]
    page1 = await store.list("sandboxes", limit=2)
    assert [r.name for r in page1.items] == ["s0", "s1"]
    page2 = await store.list("sandboxes", limit=2, after=page1.continue_after)
    page3 = await store.list("sandboxes", limit=2, after=page2.continue_after)
    assert [r.name for r in page2.items + page3.items] == ["s2", "s3", "s4"]
    assert page3.continue_after is None
    assert (await store.list("services")).items == ()


async def test_list_all_is_consistent(store: Store) -> None:
    await make(store, "a")
    await store.create("services", "web", labels={}, spec={}, status=None, created_by="x", now=T0)
    revision, records = await store.list_all()
    assert revision == 2
    assert sorted((r.kind, r.name) for r in records) == [("sandboxes", "a"), ("services", "web")]


async def test_concurrent_updates_one_wins(store: Store) -> None:
    rv = await make(store, "a")

    async def bump(i: int) -> str:
        try:
            await store.update(
                "sandboxes", "a", labels={}, spec={"i": i}, expected_version=rv, now=T0
            )
        except Conflict:
            return "conflict"
        return "ok"

    results = await asyncio.gather(*(bump(i) for i in range(5)))
    assert sorted(results) == ["conflict"] * 4 + ["ok"]


async def test_listeners_hear_own_writes_at_once(store: Store) -> None:
    heard: list[int] = []
    store.add_listener(heard.append)
    rv = await make(store, "x")
    await store.update_status("sandboxes", "x", status={"phase": "Ready"}, expected_version=rv)
    await store.delete("sandboxes", "x")
    assert heard == [1, 2, 3]
    store.remove_listener(heard.append)
    await make(store, "y")
    assert heard == [1, 2, 3]


@pytest.mark.postgres
@pytest.mark.parametrize("store_factory", ["postgres"], indirect=True)
async def test_listeners_hear_other_replicas_writes(store_factory: StoreFactory) -> None:
    """Two instances on one database (replicas): each hears the other's writes.

    PostgreSQL only: SQLite notifies in-process, replicas need PostgreSQL.
    """
    a, b = store_factory(), store_factory()
    await a.open()
    await b.open()  # migrations already applied: must be a no-op
    heard_b: list[int] = []
    got = asyncio.Event()

    def on_change(revision: int) -> None:
        heard_b.append(revision)
        if revision >= 3:
            got.set()

    b.add_listener(on_change)
    heard_a: list[int] = []
    a.add_listener(heard_a.append)
    rv = await make(a, "x")
    await a.update_status("sandboxes", "x", status={"phase": "Ready"}, expected_version=rv)
    await a.delete("sandboxes", "x")
    assert heard_a[:3] == [1, 2, 3], "own writes are notified at once"
    if isinstance(a, type(b)) and type(a).__name__ == "SqliteStore":
        pytest.skip("SQLite notifies in-process only; cross-instance needs PostgreSQL")
    await asyncio.wait_for(got.wait(), 5)
    assert max(heard_b) == 3


async def test_tokens_hashed_roundtrip(store: Store) -> None:
    digest = hashlib.sha256(b"secret").hexdigest()
    tok = TokenRecord("abc123", "alice", "developer", digest, T0, "admin")
    await store.add_token(tok)
    assert await store.get_token("abc123") == tok
    assert await store.get_token("nope") is None
    assert await store.count_tokens("developer") == 1
    assert await store.count_tokens("admin") == 0
    with pytest.raises(AlreadyExists):
        await store.add_token(tok)
    assert await store.revision() == 0, "tokens are not resources"


async def test_audit_append_and_page(store: Store) -> None:
    for i in range(3):
        await store.append_audit(
            AuditEntry(T0, "alice", "create", "sandboxes", f"s{i}", None, 1, revision=i + 1)
        )
    entries = await store.list_audit()
    assert [e.name for e in entries] == ["s0", "s1", "s2"]
    assert entries[0].generation_before is None and entries[0].generation_after == 1
    assert entries[0].at == T0
    later = await store.list_audit(after=entries[0].seq, limit=1)
    assert [e.name for e in later] == ["s1"]


async def test_reopen_keeps_data(store_factory: StoreFactory) -> None:
    first = store_factory()
    await first.open()
    await make(first, "kept")
    await first.aclose()
    second = store_factory()
    await second.open()
    assert (await second.get("sandboxes", "kept")).spec == {"n": "kept"}
    assert await second.revision() == 1


async def test_change_log_has_every_write_in_order(store: Store) -> None:
    start = await store.revision()
    await make(store, "a", {"team": "x"})
    await store.update("sandboxes", "a", labels={"team": "y"}, spec={"n": 2},
                       expected_version=None, now=T0)  # fmt: skip
    await store.update_status("sandboxes", "a", status={"phase": "Ready"}, expected_version=None)
    await store.create("services", "s", labels={}, spec={}, status=None, created_by="b", now=T0)
    await store.delete("sandboxes", "a")
    changes = await store.changes("sandboxes", after=start)
    assert [c.type for c in changes] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    assert [c.revision for c in changes] == [start + 1, start + 2, start + 3, start + 5]
    assert changes[1].labels_before == {"team": "x"} and changes[1].record.labels == {"team": "y"}
    assert changes[2].record.status == {"phase": "Ready"}
    assert changes[3].record.spec == {"n": 2}  # a deletion carries the last state
    assert all(c.record.resource_version == c.revision for c in changes[:3])
    everything = await store.changes(None, after=start)
    assert [c.record.kind for c in everything].count("services") == 1
    assert await store.changes("sandboxes", after=start + 5) == ()
    assert len(await store.changes(None, after=start, limit=2)) == 2


async def test_change_log_is_trimmed_to_the_history(store: Store) -> None:
    store.history = 100  # keep 100 revisions: the log is trimmed every 100 writes
    for i in range(201):
        await make(store, f"s{i:03d}")
    now = await store.revision()
    with pytest.raises(Expired) as expired:
        await store.changes(None, after=0)
    assert 0 < expired.value.oldest <= now - 100
    kept = await store.changes(None, after=expired.value.oldest)
    assert kept and kept[-1].revision == now


async def test_tokens_list_and_revoke(store: Store) -> None:
    for token_id in ("t1", "t2"):
        await store.add_token(TokenRecord(token_id, "pricing", "proxy", "0" * 64, T0, "admin"))
    assert [t.token_id for t in await store.list_tokens()] == ["t1", "t2"]
    assert await store.delete_token("t1") is True
    assert await store.delete_token("t1") is False
    assert await store.get_token("t1") is None
    assert [t.token_id for t in await store.list_tokens()] == ["t2"]


async def test_audit_of_one_object(store: Store) -> None:
    for kind, name in (("sandboxes", "a"), ("sandboxes", "b"), ("services", "a")):
        await store.append_audit(AuditEntry(T0, "alice", "create", kind, name, None, 1))
    mine = await store.list_audit(kind="sandboxes", name="a")
    assert [(e.kind, e.name) for e in mine] == [("sandboxes", "a")]


async def test_a_write_cancelled_anywhere_leaves_the_store_usable(
    store_factory: StoreFactory,
) -> None:
    """A request cancelled mid-transaction (client gone, shutdown, timeout) must end its
    transaction: the write happened whole or not at all, and the next writes, from this
    store and from another sharing the database, go through at once. Cancelled after 0, 1,
    2, ... event-loop turns, the cancellation lands before, on BEGIN, inside, and on COMMIT."""
    store, other = store_factory(), store_factory()
    await store.open()
    await other.open()
    heard: list[int] = []
    store.add_listener(heard.append)
    for turns in range(16):
        task = asyncio.get_running_loop().create_task(make(store, f"cancelled-{turns}"))
        for _ in range(turns):
            await asyncio.sleep(0)  # let the write run `turns` steps, then cancel it there
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        async with asyncio.timeout(3):  # the store is not left locked
            await make(store, f"after-{turns}")
            await make(other, f"other-{turns}")
        names = {r.name for r in (await store.list("sandboxes")).items}
        assert {f"after-{turns}", f"other-{turns}"} <= names
    # whole or nothing: every revision is one record, and listeners heard the latest write
    revision = await store.revision()
    assert revision == len((await store.list("sandboxes")).items)
    assert heard and heard[-1] >= (await store.get("sandboxes", "after-15")).resource_version

