"""Judging: a resource's status from the facts observed about it. Pure: no store, no I/O.

The reconciler gathers `Facts` (the compile result, probe results, ACK state, and for forks of
Kubernetes workloads what the fork controller saw) and asks the judge of the resource's kind
for the status document. One judge per kind, looked up in `JUDGES`, so a new kind or a new
fact adds a function, not a branch in the loop.

Invariants:
- a judge depends on its arguments only (the clock is passed in): the same facts give the
  same status, so the reconciler can skip judging when the facts did not change;
- `lastTransitionTime` of a condition changes only when its status does;
- `Routed` stays True for a generation once it was True (replicas never flip it back);
  with `forkOf` forks it waits until every fork workload has ready endpoints to route to;
- a fork workload's conditions (`ForkCreated`, `ForkAvailable`) carry the reason the fork
  controller copied from the cluster (`BaselineNotFound`, `ImagePullBackOff`, …) and count
  only reports made for the sandbox's current generation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from forklane.controlplane import wire

if TYPE_CHECKING:
    from forklane.controlplane.resources import Resource

__all__ = [
    "JUDGES", "NO_SUCH_HOST", "Facts", "conditions", "expires_at", "judge", "last_activity", "routed_in",
]

Verdict = tuple[bool, str, str]  # (ok, reason, message)


@dataclass(frozen=True, slots=True)
class Facts:
    """What one pass observed about one resource; equal facts give an equal status."""

    generation: int
    problem: str | None = None  # why it does not compile, None when it does
    routing_key: str | None = None
    members: tuple[str, ...] = ()  # route groups: the sandboxes they join
    not_selected: int = 0  # route groups: matches of the tenant the creator may not use
    forks: tuple[wire.ForkStatus, ...] | None = None  # sandboxes: probe results, None: not yet
    routed_now: bool = False  # every connected proxy ACKed a snapshot holding this generation
    workload_forks: tuple[str, ...] = ()  # services forked from a cluster workload (forkOf)
    workloads: tuple[wire.WorkloadStatus, ...] = ()  # what the fork controller reported
    connections: tuple[wire.ConnectionStatus, ...] = ()  # what the tunnel endpoints wrote
    seen: datetime | None = None  # the key's last activity reported to this replica

    @property
    def compiled(self) -> Verdict:
        if self.problem:
            return (False, "CompileFailed", self.problem)
        return (True, "Compiled", "")


def expires_at(sb: wire.Sandbox, seen: datetime | None = None) -> datetime | None:
    """When the sandbox's TTL ends. For `since: lastActivity`, from the latest of its
    creation, the activity recorded in its status and `seen` (this replica's own report)."""
    ttl = sb.spec.ttl
    meta = sb.metadata
    if ttl is None or meta.creation_timestamp is None:
        return None
    since: datetime | None
    if ttl.since == "lastActivity":
        recorded = sb.status.last_activity if sb.status else None
        since = max(t for t in (meta.creation_timestamp, recorded, seen) if t is not None)
    else:
        since = meta.update_timestamp if ttl.since == "update" else meta.creation_timestamp
    return (since or meta.creation_timestamp) + timedelta(seconds=ttl.seconds)


def last_activity(sb: wire.Sandbox, seen: datetime | None) -> datetime | None:
    """The activity to record in the status: this replica's report when it moves the
    recorded one by a tenth of the TTL (at least a second), so an active sandbox costs a
    status write per tenth of its TTL, not one per report."""
    recorded = sb.status.last_activity if sb.status else None
    ttl = sb.spec.ttl
    if seen is None or ttl is None or ttl.since != "lastActivity":
        return recorded
    step = timedelta(seconds=max(1.0, ttl.seconds / 10))
    if recorded is None or seen - recorded >= step:
        return seen
    return recorded


def conditions(
    old: Iterable[wire.Condition], new: Mapping[str, Verdict], now: datetime
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


def routed_in(status: Mapping[str, Any] | None, generation: int) -> bool:
    """The stored status document already says Routed for this generation."""
    return (
        status is not None
        and status.get("observedGeneration") == generation
        and any(
            c.get("type") == "Routed" and c.get("status") == "True"
            for c in status.get("conditions", ())
        )
    )


NO_SUCH_HOST = "no such host"  # a probe's answer for a name the resolver says does not exist


def _unreachable_reason(unreachable: Iterable[wire.ForkStatus]) -> str:
    """`ForkUnresolvable` when some fork names a host that does not exist (waiting will not
    help: `forklane sandbox create --wait` stops on it), else `ForkUnreachable`."""
    if any(one.endswith(NO_SUCH_HOST) for f in unreachable for one in f.message.split("; ")):
        return "ForkUnresolvable"
    return "ForkUnreachable"


def _old_conditions(model: Resource) -> list[wire.Condition]:
    return list(model.status.conditions) if model.status is not None else []


FATAL_REASONS = frozenset({"BaselineNotFound", "InvalidCustomization", "NameTaken"})


def _workload_verdicts(facts: Facts) -> tuple[Verdict, Verdict, list[wire.ForkStatus]]:
    """ForkCreated, ForkAvailable, and one ForkStatus per workload fork."""
    by_service = {w.service: w for w in facts.workloads if w.generation == facts.generation}
    created: Verdict = (True, "Created", "")
    available: Verdict = (True, "Available", "")
    states: list[wire.ForkStatus] = []
    for service in facts.workload_forks:
        w = by_service.get(service)
        if w is None:
            message = f"{service}: waiting for the fork controller"
            verdict: Verdict = (False, "WaitingForController", message)
            created = created if not created[0] else verdict
            available = available if not available[0] else verdict
            states.append(wire.ForkStatus(service=service, ready=False, message=message))
            continue
        ready = w.available and bool(w.endpoints)
        message = f"{service}: {w.message or w.reason}" if not ready else ""
        if not w.created and created[0]:
            created = (False, w.reason or "NotCreated", message)
        if not ready and available[0]:
            available = (False, w.reason or "NotAvailable", message)
        states.append(wire.ForkStatus(service=service, ready=ready, message=message))
    return created, available, states


def judge_sandbox(sb: wire.Sandbox, facts: Facts, now: datetime) -> wire.SandboxStatus:
    old = sb.status
    generation = sb.metadata.generation
    compiled = facts.compiled
    ok = compiled[0]
    probed = list(facts.forks) if facts.forks is not None else None
    created, available, workload_states = _workload_verdicts(facts)
    forks = None if probed is None else probed + workload_states
    reachable = ok and probed is not None and all(f.ready for f in probed)
    was_routed = (
        old is not None
        and old.observed_generation == generation
        and any(c.type == "Routed" and c.status == "True" for c in old.conditions)
    )
    routable = all(f.ready for f in workload_states)
    routed = ok and routable and (facts.routed_now or was_routed)
    unreachable = [f for f in probed or () if not f.ready]
    conds: dict[str, Verdict] = {"Compiled": compiled}
    if facts.workload_forks:
        conds["ForkCreated"] = created
        conds["ForkAvailable"] = available
    conds["Reachable"] = (
        (True, "ForksReachable", "")
        if reachable
        else (False, _unreachable_reason(unreachable),
              "; ".join(f.message for f in unreachable))
    )
    if routed:
        conds["Routed"] = (True, "Acked", "every connected proxy runs the snapshot")
    elif not routable:
        conds["Routed"] = (False, "WaitingForFork", "no ready fork pod to route to yet")
    else:
        conds["Routed"] = (False, "WaitingForAck", "proxies have not acknowledged the snapshot yet")
    ready = ok and reachable and routed and created[0] and available[0]
    conds["Ready"] = (ready, "Ready" if ready else "NotReady", "")
    failed = not ok or (not created[0] and created[1] in FATAL_REASONS)
    phase = "Failed" if failed else ("Ready" if ready else "Pending")
    return wire.SandboxStatus(
        phase=phase,
        routing_key=facts.routing_key,
        observed_generation=generation,
        expires_at=expires_at(sb, facts.seen),
        last_activity=last_activity(sb, facts.seen),
        forks=forks or [],
        workloads=list(facts.workloads),
        connections=list(facts.connections) or None,
        conditions=conditions(old.conditions if old else (), conds, now),
    )


def judge_routegroup(group: wire.RouteGroup, facts: Facts, now: datetime) -> wire.RouteGroupStatus:
    phase = "Failed" if facts.problem else ("Ready" if facts.members else "Pending")
    return wire.RouteGroupStatus(
        phase=phase,
        routing_key=facts.routing_key,
        observed_generation=facts.generation,
        sandboxes=list(facts.members),
        not_selected=facts.not_selected or None,
        conditions=conditions(_old_conditions(group), {"Compiled": facts.compiled}, now),
    )


def judge_split(split: wire.Split, facts: Facts, now: datetime) -> wire.SplitStatus:
    return wire.SplitStatus(
        phase="Failed" if facts.problem else "Ready",
        observed_generation=facts.generation,
        conditions=conditions(_old_conditions(split), {"Compiled": facts.compiled}, now),
    )


def judge_service(svc: wire.ServiceResource, facts: Facts, now: datetime) -> wire.ServiceStatus:
    return wire.ServiceStatus(
        phase="Failed" if facts.problem else "Ready",
        observed_generation=facts.generation,
        conditions=conditions(_old_conditions(svc), {"Compiled": facts.compiled}, now),
    )


Judge = Callable[[Any, Facts, datetime], BaseModel]
JUDGES: Mapping[str, Judge] = {
    "sandboxes": judge_sandbox,
    "routegroups": judge_routegroup,
    "splits": judge_split,
    "services": judge_service,
}


def judge(kind: str, model: Resource, facts: Facts, now: datetime) -> dict[str, Any]:
    """The status document of `model` (a resource of plural `kind`) given `facts`. A
    sandbox being deleted stays Terminating, with its deletionTimestamp."""
    doc = wire.dump(JUDGES[kind](model, facts, now))
    deletion = model.metadata.deletion_timestamp
    if deletion is not None:
        doc["phase"] = "Terminating"
        doc["deletionTimestamp"] = deletion.isoformat().replace("+00:00", "Z")
    return doc
