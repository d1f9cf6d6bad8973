"""Reconciler: keeps the pushed snapshot and every resource's status in line with the store.

A pass has two steps, in this order:
1. *publish*: when the store changed under us (a write by a user or another replica) or a
   sandbox expired, read everything at one revision, delete expired sandboxes (their routes
   are withdrawn by the snapshot compiled right after), compile, and publish when the routing
   content changed. Nothing else (no probe, no status write) runs before the publish;
2. *status*: judge every resource from the compiled result, the last probe results and the
   proxies' ACKs, and write each status that differs from what is stored.

Fork endpoints are probed off the pass: a sandbox whose forks are new or changed is probed
at once, a Pending one again after a backoff (`fast_interval`, doubling up to `interval`), a
Ready one every `interval`; at most `probe_concurrency` connects run at a time. In the
background loop probes run in their own task, so a slow probe never delays a publish;
`run_once()` (tests, start-up) awaits the due probes before judging.

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
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from forklane.controlplane import wire
from forklane.controlplane.compiler import Compiled, Inputs, ServiceCache, compile_snapshot
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
from forklane.proxy.schema import Carrier, RoutingSnapshot, parse_endpoint

__all__ = ["AckView", "Clock", "Probe", "Reconciler", "tcp_probe", "utcnow"]

log = logging.getLogger("forklane.controlplane.reconciler")

Clock = Callable[[], datetime]
_SETTLE_FROM = 0.02  # a pass longer than this (s) lets the next wake-up gather writes ...
_SETTLE_MAX = 0.1  # ... for as long as the pass took, at most this long
Probe = Callable[[str, float], Awaitable[str | None]]
SYSTEM = "system:reconciler"


class AckView(Protocol):
    def all_acked(self, version: int) -> bool: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


NO_SUCH_HOST = "no such host"  # a probe's answer for a name the resolver says does not exist


async def tcp_probe(endpoint: str, within: float) -> str | None:
    """None when `endpoint` accepts a TCP connection `within` seconds, else the reason."""
    try:
        host, port = parse_endpoint(endpoint)
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME:  # an answer, not a failure to get one
            return f"{endpoint}: {NO_SUCH_HOST}"
        return f"{endpoint}: {exc.strerror or exc}"
    except TimeoutError:
        return f"{endpoint}: no answer within {within:g}s"
    except (OSError, ValueError) as exc:
        return f"{endpoint}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def _unreachable_reason(unreachable: Iterable[wire.ForkStatus]) -> str:
    """`ForkUnresolvable` when some fork names a host that does not exist (waiting will not
    help: `forklane sandbox create --wait` stops on it), else `ForkUnreachable`."""
    if any(one.endswith(NO_SUCH_HOST) for f in unreachable for one in f.message.split("; ")):
        return "ForkUnresolvable"
    return "ForkUnreachable"


def expires_at(sb: wire.Sandbox) -> datetime | None:
    ttl = sb.spec.ttl
    meta = sb.metadata
    if ttl is None or meta.creation_timestamp is None:
        return None
    since = meta.update_timestamp if ttl.since == "update" else meta.creation_timestamp
    return (since or meta.creation_timestamp) + timedelta(seconds=ttl.seconds)


def _conditions(
    old: Iterable[wire.Condition], new: Mapping[str, tuple[bool, str, str]], now: datetime
) -> list[wire.Condition]:
    """New conditions, keeping `lastTransitionTime` where the status did not change."""
    before = {c.type: c for c in old}
    out = []
    for type_, (ok, reason, message) in new.items():
        status = "True" if ok else "False"
        prev = before.get(type_)
        at = prev.last_transition_time if prev is not None and prev.status == status else now
        out.append(
            wire.Condition(
                type=type_, status=status, reason=reason, message=message,
                last_transition_time=at,
            )
        )
    return out


def _dump(model: Any) -> dict[str, Any]:
    return wire.dump(model)


Key = tuple[str, str]  # (plural, name)


@dataclass(slots=True)
class _Probed:
    """What the last probe of one sandbox's forks found, and when to probe again."""

    target: tuple[tuple[str, tuple[str, ...]], ...]  # (service, endpoints) per fork
    forks: list[wire.ForkStatus] | None = None  # None: not probed yet
    due: float = 0.0  # loop time
    failures: int = 0
    seq: int = 0  # bumped whenever `forks` changes: part of the status inputs


def _routed_in(status: dict[str, Any] | None, generation: int) -> bool:
    """The stored status already says Routed for this generation."""
    return (
        status is not None
        and status.get("observedGeneration") == generation
        and any(
            c.get("type") == "Routed" and c.get("status") == "True"
            for c in status.get("conditions", ())
        )
    )


def _probe_target(sb: wire.Sandbox) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((f.service, tuple(f.endpoints)) for f in sb.spec.forks)


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
        signing_secrets: tuple[str, ...] = (),
    ) -> None:
        self._store = store
        self._signing = signing_secrets  # newest first; empty: routing keys are not signed
        self._publisher = publisher
        self._acks = acks
        self._clock = clock
        self._probe = probe
        self._probe_timeout = probe_timeout
        self._interval = interval
        self._fast = min(fast_interval, interval)
        self._probe_slots = asyncio.Semaphore(max(1, probe_concurrency))
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
        self._included_at: dict[tuple[str, int], int] = {}  # (sandbox, generation) -> version
        self._probed: dict[str, _Probed] = {}
        self._judged: dict[Key, tuple[Any, ...]] = {}  # status inputs last judged
        self._awaiting_ack: int | None = None  # lowest version a non-Routed sandbox waits on
        self._service_cache: ServiceCache = {}  # per-service validation, kept across passes

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
                await self._probe_sandboxes(due)
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
             and (e := expires_at(m))),
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
            if isinstance(model, wire.Sandbox):
                at = expires_at(model)
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
        live: dict[tuple[str, int], int] = {}
        for rec in by_kind["sandboxes"]:
            at = (rec.metadata.name, rec.metadata.generation)
            live[at] = self._included_at.get(at, version)
        self._included_at = live
        names = {m.metadata.name for m in by_kind["sandboxes"]}
        for gone in self._probed.keys() - names:
            del self._probed[gone]
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
            at = expires_at(sb)
            if at is None or now < at:
                continue
            try:
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
    def _due_probes(self) -> tuple[list[tuple[str, wire.Sandbox]], float | None]:
        """Sandboxes whose forks are new, changed, or due for another look; and when the
        next one not yet due will be (loop time)."""
        assert self._compiled is not None
        now = asyncio.get_running_loop().time()
        due: list[tuple[str, wire.Sandbox]] = []
        next_due: float | None = None
        for (kind, name), (_, model) in self._models.items():
            if not isinstance(model, wire.Sandbox) or (kind, name) in self._compiled.problems:
                continue
            target = _probe_target(model)
            probed = self._probed.get(name)
            if probed is None or probed.target != target:
                probed = self._probed[name] = _Probed(target)
            if probed.due <= now:
                due.append((name, model))
            elif next_due is None or probed.due < next_due:
                next_due = probed.due
        return due, next_due

    async def _probe_then_wake(self, due: list[tuple[str, wire.Sandbox]]) -> None:
        """Background batch: always wake the loop after, to judge and reschedule."""
        try:
            await self._probe_sandboxes(due)
        finally:
            self._wake.set()

    async def _probe_sandboxes(self, due: list[tuple[str, wire.Sandbox]]) -> bool:
        """Probe in parallel (bounded); True when some result changed."""
        results = await asyncio.gather(*(self._probe_forks(sb) for _, sb in due))
        now = asyncio.get_running_loop().time()
        changed = False
        for (name, sb), forks in zip(due, results, strict=True):
            probed = self._probed.get(name)
            if probed is None or probed.target != _probe_target(sb):
                continue  # deleted or changed while probing: probed again later
            ok = all(f.ready for f in forks)
            probed.failures = 0 if ok else probed.failures + 1
            backoff = self._fast * 2 ** min(probed.failures - 1, 16)
            probed.due = now + (self._interval if ok else min(self._interval, backoff))
            if forks != probed.forks:
                probed.forks = forks
                probed.seq += 1
                changed = True
        return changed

    async def _probe_one(self, endpoint: str) -> str | None:
        async with self._probe_slots:
            return await self._probe(endpoint, self._probe_timeout)

    async def _probe_forks(self, sb: wire.Sandbox) -> list[wire.ForkStatus]:
        endpoints = [(fork.service, ep) for fork in sb.spec.forks for ep in fork.endpoints]
        answers = await asyncio.gather(*(self._probe_one(ep) for _, ep in endpoints))
        errors: dict[str, list[str]] = {fork.service: [] for fork in sb.spec.forks}
        for (service, _), error in zip(endpoints, answers, strict=True):
            if error is not None:
                errors[service].append(error)
        return [
            wire.ForkStatus(
                service=fork.service,
                ready=not errors[fork.service],
                message="; ".join(errors[fork.service]),
            )
            for fork in sb.spec.forks
        ]

    # -- statuses ---------------------------------------------------------------------------
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
            problem = compiled.problems.get(key)
            compiled_cond = (
                (False, "CompileFailed", problem) if problem else (True, "Compiled", "")
            )
            status: Any
            if isinstance(model, wire.Sandbox):
                probed = self._probed.get(name)
                included = self._included_at.get((name, record.generation))
                routed_now = included is not None and all_acked(included)
                if (
                    not routed_now and included is not None and not problem
                    and not _routed_in(record.status, record.generation)
                ):
                    awaiting = included if awaiting is None else min(awaiting, included)
                inputs: tuple[Any, ...] = (
                    record.resource_version, problem, compiled.routing_keys.get(key),
                    probed.seq if probed else -1, routed_now, compiled.signed_keys.get(key),
                )
                if self._judged.get(key) == inputs:
                    continue
                status = self._sandbox_status(
                    model, compiled, compiled_cond, probed.forks if probed else None,
                    routed_now, now,
                )
            elif isinstance(model, wire.RouteGroup):
                members = compiled.group_members.get(name, ())
                inputs = (record.resource_version, problem, compiled.routing_keys.get(key),
                          members, compiled.signed_keys.get(key))
                if self._judged.get(key) == inputs:
                    continue
                phase = "Failed" if problem else ("Ready" if members else "Pending")
                status = wire.RouteGroupStatus(
                    phase=phase,
                    routing_key=compiled.signed_keys.get(key) or compiled.routing_keys.get(key),
                    observed_generation=record.generation,
                    sandboxes=list(members),
                    conditions=_conditions(
                        model.status.conditions if model.status else (),
                        {"Compiled": compiled_cond},
                        now,
                    ),
                )
            else:
                inputs = (record.resource_version, problem)
                if self._judged.get(key) == inputs:
                    continue
                status_model = (
                    wire.SplitStatus if isinstance(model, wire.Split) else wire.ServiceStatus
                )
                status = status_model(
                    phase="Failed" if problem else "Ready",
                    observed_generation=record.generation,
                    conditions=_conditions(
                        model.status.conditions if model.status else (),
                        {"Compiled": compiled_cond},
                        now,
                    ),
                )
            doc = _dump(status)
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
            self._records[key] = written
            # judging the record we just wrote gives the same document again: skip that
            self._judged[key] = (written.resource_version, *inputs[1:])
            self._models[key] = (written.resource_version, to_wire(written))
        self._awaiting_ack = awaiting
        if awaiting is not None and self._acks.all_acked(awaiting):
            self.kick()  # the ACKs came while we were writing: judge them now

    def _sandbox_status(
        self,
        sb: wire.Sandbox,
        compiled: Compiled,
        compiled_cond: tuple[bool, str, str],
        forks: list[wire.ForkStatus] | None,
        routed_now: bool,
        now: datetime,
    ) -> wire.SandboxStatus:
        old = sb.status
        generation = sb.metadata.generation
        ok = compiled_cond[0]
        reachable = ok and forks is not None and all(f.ready for f in forks)
        was_routed = (
            old is not None
            and old.observed_generation == generation
            and any(c.type == "Routed" and c.status == "True" for c in old.conditions)
        )
        routed = ok and (routed_now or was_routed)
        unreachable = [f for f in forks or () if not f.ready]
        conds = {
            "Compiled": compiled_cond,
            "Reachable": (
                (True, "ForksReachable", "")
                if reachable
                else (False, _unreachable_reason(unreachable),
                      "; ".join(f.message for f in unreachable))
            ),
            "Routed": (
                (True, "Acked", "every connected proxy runs the snapshot")
                if routed
                else (False, "WaitingForAck", "proxies have not acknowledged the snapshot yet")
            ),
        }
        ready = ok and reachable and routed
        conds["Ready"] = (ready, "Ready" if ready else "NotReady", "")
        phase = "Failed" if not ok else ("Ready" if ready else "Pending")
        return wire.SandboxStatus(
            phase=phase,
            routing_key=compiled.signed_keys.get(("sandboxes", sb.metadata.name))
            or compiled.routing_keys.get(("sandboxes", sb.metadata.name)),
            observed_generation=generation,
            expires_at=expires_at(sb),
            forks=forks or [],
            conditions=_conditions(old.conditions if old else (), conds, now),
        )
