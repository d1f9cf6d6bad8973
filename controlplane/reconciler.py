"""Reconciler: keeps the pushed snapshot and every resource's status in line with the store.

A pass has two steps, in this order:
1. *publish*: when the store changed under us (a write by a user or another replica) or a
   sandbox expired, read everything at one revision, delete expired sandboxes (their routes
   are withdrawn by the snapshot compiled right after), compile, and publish when the routing
   content changed. Nothing else (no probe, no status write) runs before the publish;
2. *status*: judge every resource from the compiled result, the last probe results and the
   proxies' ACKs, and write each status that differs from what is stored.

This module is the loop only: what a status says is decided by `judging` (pure, one judge
per kind, from the `Facts` gathered here), and when fork endpoints are probed by `probes`
(`ProbeScheduler`). In the background loop probes run in their own task, so a slow probe
never delays a publish; `run_once()` (tests, start-up) awaits the due probes before judging.

Invariants:
- a pass runs promptly after any write (the store's change listener wakes it, including
  writes made by other replicas through PostgreSQL LISTEN/NOTIFY) and at least every
  `interval` seconds; wake-ups that arrive during a pass are coalesced into one more pass;
  after a pass that took more than 20 ms, the next one waits as long as that pass took (at
  most 100 ms), so bursts of writes on a large store cost a few passes, not one per write;
- our own status writes are counted: a revision bump made only by them never causes a
  re-read or a re-compile (every store write bumps the revision by exactly one);
- a snapshot is published only when its routing content differs from the last published
  one, so status writes (which bump the revision) never cause pushes;
- a status is written only when it differs from the stored one; statuses are recomputed only
  for resources whose inputs (record version, compile result, probe result, ACK state)
  changed;
- status writes never change `generation`; `observedGeneration` is the generation judged;
  writes use the resourceVersion last read or written, so a concurrent user write wins;
- `Routed` is true once every connected proxy of this replica ACKed the first published
  snapshot holding the sandbox's current generation, and then stays true for that generation
  (replicas never flip it back and forth). ACKs wake the reconciler only when they make some
  waiting sandbox Routed, so a burst of 50 ACKs costs one pass;
- the clock and the probe are injected, so tests decide what time it is and what answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from forklane.controlplane import wire
from forklane.controlplane.compiler import Compiled, Inputs, ServiceCache, compile_snapshot
from forklane.controlplane.judging import Facts, expires_at, judge, routed_in
from forklane.controlplane.probes import Probe, ProbeScheduler, tcp_probe
from forklane.controlplane.publisher import SnapshotPublisher
from forklane.controlplane.resources import Resource, to_wire
from forklane.controlplane.store.base import (
    AuditEntry,
    Conflict,
    NotFound,
    Record,
    Store,
    StoreError,
)
from forklane.controlplane.termination import has_workloads, terminating, terminating_status
from forklane.proxy.schema import Carrier, RoutingSnapshot

__all__ = ["AckView", "Clock", "Probe", "Reconciler", "StatusListener", "tcp_probe", "utcnow"]

log = logging.getLogger("forklane.controlplane.reconciler")

Clock = Callable[[], datetime]
_SETTLE_FROM = 0.02  # a pass longer than this (s) lets the next wake-up gather writes ...
_SETTLE_MAX = 0.1  # ... for as long as the pass took, at most this long
# (kind, name, status before, status written, when): called after each status write
StatusListener = Callable[[str, str, Mapping[str, Any] | None, Mapping[str, Any], datetime], None]
SYSTEM = "system:reconciler"


class AckView(Protocol):
    def all_acked(self, version: int) -> bool: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


Key = tuple[str, str]  # (plural, name)
Included = tuple[str, int, tuple[str, ...]]


def _included(sb: wire.Sandbox) -> Included:
    """What a published snapshot must hold for the sandbox to count as Routed: its current
    generation, and the endpoints of its fork workloads (they change without a new one)."""
    endpoints = tuple(sorted(
        ep for w in (sb.status.workloads if sb.status else ()) for ep in w.endpoints))
    return (sb.metadata.name, sb.metadata.generation or 0, endpoints)


class Reconciler:
    def __init__(
        self,
        store: Store,
        publisher: SnapshotPublisher,
        acks: AckView,
        *,
        clock: Clock = utcnow,
        probe: Probe = tcp_probe,
        probe_timeout: float = 1.0,
        interval: float = 5.0,
        fast_interval: float = 0.25,
        probe_concurrency: int = 64,
        carriers: tuple[Carrier, ...] | None = None,
        on_status: StatusListener | None = None,
        activity: Callable[[str], datetime | None] | None = None,
        signing_secrets: tuple[str, ...] = (),
    ) -> None:
        self._activity = activity or (lambda key: None)
        self._store = store
        self._on_status = on_status  # told of each status we write (the events of `describe`)
        self._signing = signing_secrets  # newest first; empty: routing keys are not signed
        self._publisher = publisher
        self._acks = acks
        self._clock = clock
        self._probes = ProbeScheduler(
            probe, timeout=probe_timeout, interval=interval, fast_interval=fast_interval,
            concurrency=probe_concurrency,
        )
        self._interval = interval
        self._carriers = carriers
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._probing: asyncio.Task[None] | None = None
        self._published: RoutingSnapshot | None = None
        self._published_content: dict[str, Any] | None = None
        self._compiled: Compiled | None = None
        self._passes = 0
        self._pass_done = asyncio.Condition()
        # what the last read saw, kept current with our own writes
        self._read_at: int | None = None  # revision of the last list_all
        self._own: set[int] = set()  # revisions written by us since `_read_at`
        self._records: dict[Key, Record] = {}
        self._models: dict[Key, tuple[int, Resource]] = {}  # key -> (resourceVersion, model)
        # (sandbox, generation, fork workload endpoints) -> first published version holding it
        self._included_at: dict[Included, int] = {}
        self._judged: dict[Key, tuple[Any, ...]] = {}  # status inputs last judged
        self._awaiting_ack: int | None = None  # lowest version a non-Routed sandbox waits on
        self._service_cache: ServiceCache = {}  # per-service validation, kept across passes

    def _seen(self, sb: wire.Sandbox) -> datetime | None:
        """When a proxy connected to this replica last reported the sandbox's key."""
        ttl = sb.spec.ttl
        if ttl is None or ttl.since != "lastActivity":
            return None
        shown = sb.status.routing_key if sb.status else None  # signed: KEY.SIGNATURE
        keys = {sb.spec.routing_key, shown, shown.rpartition(".")[0] if shown else None}
        seen = [at for k in keys if k and (at := self._activity(k)) is not None]
        return max(seen, default=None)

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._store.add_listener(self._on_change)
        self._task = asyncio.create_task(self._run(), name="forklane-reconciler")

    async def aclose(self) -> None:
        self._store.remove_listener(self._on_change)
        for task in (self._task, self._probing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._probing = None

    def _on_change(self, revision: int) -> None:
        self._wake.set()

    def kick(self) -> None:
        """Run a pass soon."""
        self._wake.set()

    def acks_changed(self) -> None:
        """A proxy connected, ACKed, NACKed or left: wake only if that makes a sandbox Routed
        (`all_acked` is monotonic in the version, so the lowest awaited version decides)."""
        waiting = self._awaiting_ack
        if waiting is not None and self._acks.all_acked(waiting):
            self._awaiting_ack = None
            self._wake.set()

    @property
    def compiled(self) -> Compiled | None:
        return self._compiled

    @property
    def published(self) -> RoutingSnapshot | None:
        return self._published

    async def wait_passes(self, count: int, within: float = 10.0) -> None:
        """Wait until `count` passes have completed since start (for tests and readiness)."""
        async with asyncio.timeout(within), self._pass_done:
            await self._pass_done.wait_for(lambda: self._passes >= count)

    @property
    def passes(self) -> int:
        return self._passes

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        took = 0.0
        while True:
            if took > _SETTLE_FROM:
                # a costly pass (thousands of services): let a burst of writes (discovery's
                # initial sync, a rollout) gather for a moment, so one pass compiles them all
                # instead of one pass per write; a cheap pass never waits
                await asyncio.sleep(min(took, _SETTLE_MAX))
            self._wake.clear()
            delay = self._interval
            started = loop.time()
            try:
                delay = await self._pass(inline_probes=False)
            except StoreError as exc:
                log.warning("reconcile pass failed: %s", exc)
                delay = min(self._interval, 1.0)
            except Exception:
                log.exception("reconcile pass failed")
                delay = min(self._interval, 1.0)
            took = loop.time() - started
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    # -- one pass ---------------------------------------------------------------------------
    async def run_once(self) -> float:
        """One full pass, probing what is due before judging; returns how soon the next one
        is wanted (seconds)."""
        return await self._pass(inline_probes=True)

    async def _pass(self, *, inline_probes: bool) -> float:
        now = self._clock()
        if await self._changed_under_us() or self._expiry_due(now):
            await self._refresh(now)
        compiled = self._compiled
        assert compiled is not None
        probing = self._probing is not None and not self._probing.done()
        if self._probing is not None and self._probing.done():
            if not self._probing.cancelled() and self._probing.exception() is not None:
                log.error("fork probes failed", exc_info=self._probing.exception())
            self._probing = None
        delay = self._interval
        if not probing:  # (a batch in flight wakes us when it ends)
            due, next_due = self._due_probes()
            if due and inline_probes:
                await self._probes.run(due)
                _, next_due = self._due_probes()
            elif due:
                self._probing = asyncio.create_task(
                    self._probe_then_wake(due), name="forklane-reconciler-probes"
                )
            if next_due is not None:
                delay = min(delay, next_due - asyncio.get_running_loop().time())
        await self._write_statuses(compiled, now)
        next_expiry = min(
            (e for _, m in self._models.values() if isinstance(m, wire.Sandbox)
             and m.metadata.deletion_timestamp is None and (e := expires_at(m, self._seen(m)))),
            default=None,
        )
        if next_expiry is not None:
            delay = max(0.0, min(delay, (next_expiry - now).total_seconds()))
        async with self._pass_done:
            self._passes += 1
            self._pass_done.notify_all()
        return max(delay, 0.01)

    async def _changed_under_us(self) -> bool:
        """True when someone else wrote since our last read (one cheap query)."""
        if self._read_at is None:
            return True
        current = await self._store.revision()
        own = sum(1 for r in self._own if self._read_at < r <= current)
        return current - self._read_at > own

    def _expiry_due(self, now: datetime) -> bool:
        for _, model in self._models.values():
            if isinstance(model, wire.Sandbox) and model.metadata.deletion_timestamp is None:
                at = expires_at(model, self._seen(model))
                if at is not None and now >= at:
                    return True
        return False

    async def _refresh(self, now: datetime) -> None:
        """Re-read, expire, compile and (when the routing content changed) publish."""
        revision, records = await self._store.list_all()
        if await self._expire(records, now):
            revision, records = await self._store.list_all()
        self._read_at, self._own = revision, set()
        self._records = {(r.kind, r.name): r for r in records}
        self._models = {key: self._model(rec) for key, rec in self._records.items()}
        by_kind: dict[str, list[Any]] = {
            "services": [], "sandboxes": [], "routegroups": [], "splits": []
        }
        for (kind, _), (_, model) in self._models.items():
            by_kind[kind].append(model)
        compiled = compile_snapshot(
            Inputs(
                revision=revision,
                services=by_kind["services"],
                sandboxes=by_kind["sandboxes"],
                routegroups=by_kind["routegroups"],
                splits=by_kind["splits"],
            ),
            self._carriers,
            self._service_cache,
            signing_secrets=self._signing,
        )
        held = {id(m) for m in by_kind["services"]}
        for stale in self._service_cache.keys() - held:
            del self._service_cache[stale]
        self._compiled = compiled
        content = compiled.snapshot.model_dump(mode="json", exclude={"version"})
        if content != self._published_content:
            await self._publisher.publish(compiled.snapshot)
            self._published = compiled.snapshot
            self._published_content = content
        assert self._published is not None
        version = int(self._published.version)
        live: dict[Included, int] = {}
        for rec in by_kind["sandboxes"]:
            at = _included(rec)
            live[at] = self._included_at.get(at, version)
        self._included_at = live
        names = {m.metadata.name for m in by_kind["sandboxes"]}
        self._probes.forget_except(names)
        for key in self._judged.keys() - self._records.keys():
            del self._judged[key]

    def _model(self, record: Record) -> tuple[int, Resource]:
        """The wire model of a record, converted once per resourceVersion."""
        cached = self._models.get((record.kind, record.name))
        if cached is not None and cached[0] == record.resource_version:
            return cached
        return record.resource_version, to_wire(record)

    async def _expire(self, records: Iterable[Record], now: datetime) -> bool:
        expired = False
        for record in records:
            if record.kind != "sandboxes":
                continue
            cached = self._models.get((record.kind, record.name))
            if cached is not None and cached[0] == record.resource_version:
                sb = cached[1]
            else:
                sb = to_wire(record)
            assert isinstance(sb, wire.Sandbox)
            at = expires_at(sb, self._seen(sb))
            if at is None or now < at or terminating(record.status):
                continue
            try:
                if has_workloads(record.status):  # routes, then workloads, then the record
                    await self._store.update_status(
                        "sandboxes", record.name, status=terminating_status(record.status, now),
                        expected_version=record.resource_version)
                else:
                    await self._store.delete(
                        "sandboxes", record.name, expected_version=record.resource_version
                    )
            except (NotFound, Conflict):
                continue
            expired = True
            log.info("sandbox %s expired at %s: deleted", record.name, at.isoformat())
            await self._store.append_audit(
                AuditEntry(now, SYSTEM, "expire", "sandboxes", record.name, record.generation, None)
            )
        return expired

    # -- probes -----------------------------------------------------------------------------
    def _due_probes(self) -> tuple[list[wire.Sandbox], float | None]:
        """Compiled sandboxes whose forks are due for a probe, and when the next one is."""
        assert self._compiled is not None
        problems = self._compiled.problems
        return self._probes.due(
            model for (kind, name), (_, model) in self._models.items()
            if isinstance(model, wire.Sandbox) and (kind, name) not in problems
        )

    async def _probe_then_wake(self, due: list[wire.Sandbox]) -> None:
        """Background batch: always wake the loop after, to judge and reschedule."""
        try:
            await self._probes.run(due)
        finally:
            self._wake.set()

    # -- statuses ---------------------------------------------------------------------------
    def _facts(self, key: Key, record: Record, compiled: Compiled,
               all_acked: Callable[[int], bool]) -> tuple[Facts, int | None]:
        """What is known about one resource now; and, for a sandbox still waiting to be
        Routed, the snapshot version whose ACKs it waits on."""
        kind, name = key
        problem = compiled.problems.get(key)
        facts = Facts(generation=record.generation, problem=problem,
                      routing_key=compiled.signed_keys.get(key) or compiled.routing_keys.get(key))
        if kind == "routegroups":
            return Facts(generation=record.generation, problem=problem,
                         routing_key=facts.routing_key,
                         members=tuple(compiled.group_members.get(name, ())),
                         not_selected=compiled.not_selected.get(name, 0)), None
        if kind != "sandboxes":
            return facts, None
        probed = self._probes.result(name)
        _, model = self._models[key]
        assert isinstance(model, wire.Sandbox)
        included = self._included_at.get(_included(model))
        routed_now = included is not None and all_acked(included)
        waits = (
            included
            if not routed_now and included is not None and not problem
            and not routed_in(record.status, record.generation)
            else None
        )
        return Facts(generation=record.generation, problem=problem,
                     routing_key=facts.routing_key,
                     forks=probed.forks if probed is not None else None,
                     routed_now=routed_now,
                     workload_forks=tuple(f.service for f in model.spec.forks if f.fork_of),
                     workloads=tuple(model.status.workloads) if model.status else (),
                     connections=tuple(model.status.connections or ()) if model.status else (),
                     seen=self._seen(model)), waits

    async def _write_statuses(self, compiled: Compiled, now: datetime) -> None:
        """Judge what changed and write the statuses that differ from the stored ones."""
        routed_cache: dict[int, bool] = {}

        def all_acked(version: int) -> bool:
            if version not in routed_cache:
                routed_cache[version] = self._acks.all_acked(version)
            return routed_cache[version]

        awaiting: int | None = None
        for key, record in sorted(self._records.items()):
            kind, name = key
            _, model = self._models[key]
            facts, waits = self._facts(key, record, compiled, all_acked)
            if waits is not None:
                awaiting = waits if awaiting is None else min(awaiting, waits)
            inputs: tuple[Any, ...] = (record.resource_version, facts)
            if self._judged.get(key) == inputs:
                continue
            doc = judge(kind, model, facts, now)
            if doc == record.status:
                self._judged[key] = inputs
                continue
            try:
                written = await self._store.update_status(
                    kind, name, status=doc, expected_version=record.resource_version
                )
            except (Conflict, NotFound):
                self.kick()  # a user write won: re-read on the next pass
                continue
            self._own.add(written.resource_version)
            if self._on_status is not None:
                self._on_status(kind, name, record.status, doc, now)
            self._records[key] = written
            # judging the record we just wrote gives the same document again: skip that
            self._judged[key] = (written.resource_version, facts)
            self._models[key] = (written.resource_version, to_wire(written))
        self._awaiting_ack = awaiting
        if awaiting is not None and self._acks.all_acked(awaiting):
            self.kick()  # the ACKs came while we were writing: judge them now
