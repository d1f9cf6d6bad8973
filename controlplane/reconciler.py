"""Reconciler: keeps the pushed snapshot and every resource's status in line with the store.

One pass: read everything at one revision; delete expired sandboxes (their routes are
withdrawn by the snapshot compiled right after); compile; publish when the routing content
changed; probe fork endpoints; write each status that differs from what is stored.

Invariants:
- a pass runs promptly after any write (the store's change listener wakes it, including
  writes made by other replicas through PostgreSQL LISTEN/NOTIFY) and at least every
  `interval` seconds; while a sandbox is Pending it re-checks every `fast_interval`;
- a snapshot is published only when its routing content differs from the last published
  one, so status writes (which bump the revision) never cause pushes;
- status writes never change `generation`; `observedGeneration` is the generation judged;
  writes use the resourceVersion read in the pass, so a concurrent user write wins;
- `Routed` is true once every connected proxy of this replica ACKed a snapshot holding the
  sandbox's current generation, and then stays true for that generation (replicas never
  flip it back and forth);
- the clock and the probe are injected, so tests decide what time it is and what answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from controlplane import wire
from controlplane.compiler import Compiled, Inputs, compile_snapshot
from controlplane.publisher import SnapshotPublisher
from controlplane.resources import to_wire
from controlplane.store.base import AuditEntry, Conflict, NotFound, Record, Store, StoreError
from proxy.schema import Carrier, RoutingSnapshot, parse_endpoint

__all__ = ["AckView", "Clock", "Probe", "Reconciler", "tcp_probe", "utcnow"]

log = logging.getLogger("forklane.controlplane.reconciler")

Clock = Callable[[], datetime]
Probe = Callable[[str, float], Awaitable[str | None]]
SYSTEM = "system:reconciler"


class AckView(Protocol):
    def all_acked(self, version: int) -> bool: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


async def tcp_probe(endpoint: str, within: float) -> str | None:
    """None when `endpoint` accepts a TCP connection `within` seconds, else the reason."""
    try:
        host, port = parse_endpoint(endpoint)
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"{endpoint}: no answer within {within:g}s"
    except (OSError, ValueError) as exc:
        return f"{endpoint}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


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
        carriers: tuple[Carrier, ...] | None = None,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._acks = acks
        self._clock = clock
        self._probe = probe
        self._probe_timeout = probe_timeout
        self._interval = interval
        self._fast = min(fast_interval, interval)
        self._carriers = carriers
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._published: RoutingSnapshot | None = None
        self._published_content: dict[str, Any] | None = None
        self._compiled: Compiled | None = None
        self._passes = 0
        self._pass_done = asyncio.Condition()

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._store.add_listener(self._on_change)
        self._task = asyncio.create_task(self._run(), name="forklane-reconciler")

    async def aclose(self) -> None:
        self._store.remove_listener(self._on_change)
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_change(self, revision: int) -> None:
        self._wake.set()

    def kick(self) -> None:
        """Run a pass soon (after a write, or when a proxy ACKed)."""
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
        while True:
            self._wake.clear()
            delay = self._interval
            try:
                delay = await self.run_once()
            except StoreError as exc:
                log.warning("reconcile pass failed: %s", exc)
                delay = min(self._interval, 1.0)
            except Exception:
                log.exception("reconcile pass failed")
                delay = min(self._interval, 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    # -- one pass ---------------------------------------------------------------------------
    async def run_once(self) -> float:
        """One full pass; returns how soon the next one is wanted (seconds)."""
        revision, records = await self._store.list_all()
        now = self._clock()
        if await self._expire(records, now):
            revision, records = await self._store.list_all()
        models = {(r.kind, r.name): (r, to_wire(r)) for r in records}
        by_kind: dict[str, list[Any]] = {"services": [], "sandboxes": [], "routegroups": [], "splits": []}
        for (kind, _), (_, model) in models.items():
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
        )
        self._compiled = compiled
        content = compiled.snapshot.model_dump(mode="json", exclude={"version"})
        if content != self._published_content:
            await self._publisher.publish(compiled.snapshot)
            self._published = compiled.snapshot
            self._published_content = content
        assert self._published is not None
        routed = self._acks.all_acked(int(self._published.version))
        pending = await self._write_statuses(models, compiled, routed, now)
        delay = self._fast if pending else self._interval
        next_expiry = min(
            (e for _, m in models.values() if isinstance(m, wire.Sandbox) and (e := expires_at(m))),
            default=None,
        )
        if next_expiry is not None:
            delay = max(0.0, min(delay, (next_expiry - now).total_seconds()))
        async with self._pass_done:
            self._passes += 1
            self._pass_done.notify_all()
        return delay

    async def _expire(self, records: Iterable[Record], now: datetime) -> bool:
        expired = False
        for record in records:
            if record.kind != "sandboxes":
                continue
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

    async def _write_statuses(
        self,
        models: Mapping[tuple[str, str], tuple[Record, Any]],
        compiled: Compiled,
        routed: bool,
        now: datetime,
    ) -> bool:
        """Write changed statuses; True when some sandbox is still Pending."""
        sandboxes = [
            (rec, m) for rec, m in models.values() if isinstance(m, wire.Sandbox)
        ]
        probes = await asyncio.gather(
            *(self._probe_forks(m) for rec, m in sandboxes if (rec.kind, rec.name) not in compiled.problems)
        )
        probe_results = dict(
            zip(
                [rec.name for rec, _ in sandboxes if (rec.kind, rec.name) not in compiled.problems],
                probes,
                strict=True,
            )
        )
        pending = False
        for (kind, name), (record, model) in sorted(models.items()):
            problem = compiled.problems.get((kind, name))
            compiled_cond = (
                (False, "CompileFailed", problem) if problem else (True, "Compiled", "")
            )
            status: Any
            if isinstance(model, wire.Sandbox):
                status = self._sandbox_status(
                    model, compiled, compiled_cond, probe_results.get(name), routed, now
                )
                pending = pending or status.phase == "Pending"
            elif isinstance(model, wire.RouteGroup):
                members = compiled.group_members.get(name, ())
                phase = "Failed" if problem else ("Ready" if members else "Pending")
                status = wire.RouteGroupStatus(
                    phase=phase,
                    routing_key=compiled.routing_keys.get((kind, name)),
                    observed_generation=record.generation,
                    sandboxes=list(members),
                    conditions=_conditions(
                        model.status.conditions if model.status else (),
                        {"Compiled": compiled_cond},
                        now,
                    ),
                )
            else:
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
                continue
            try:
                await self._store.update_status(
                    kind, name, status=doc, expected_version=record.resource_version
                )
            except (Conflict, NotFound):
                self.kick()
        return pending

    async def _probe_forks(self, sb: wire.Sandbox) -> list[wire.ForkStatus]:
        async def one(fork: wire.ForkSpec) -> wire.ForkStatus:
            errors = [
                e
                for e in await asyncio.gather(
                    *(self._probe(ep, self._probe_timeout) for ep in fork.endpoints)
                )
                if e is not None
            ]
            return wire.ForkStatus(
                service=fork.service, ready=not errors, message="; ".join(errors)
            )

        return list(await asyncio.gather(*(one(f) for f in sb.spec.forks)))

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
                else (False, "ForkUnreachable", "; ".join(f.message for f in unreachable))
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
            routing_key=compiled.routing_keys.get(("sandboxes", sb.metadata.name)),
            observed_generation=generation,
            expires_at=expires_at(sb),
            forks=forks or [],
            conditions=_conditions(old.conditions if old else (), conds, now),
        )
