"""Active health state: what the probes of each endpoint said, and which endpoints the
balancer must skip because of it. Pure bookkeeping; the prober (`proxy.prober`) does the I/O
and the clock is passed in.

Invariants:
- one `ProbeState` per probe target, a (`HealthPolicy`, endpoint address) pair: endpoints
  shared by destinations with the same check are probed once;
- an endpoint starts healthy, turns unhealthy after `unhealthy_threshold` failed probes in a
  row and healthy again after `healthy_threshold` passed ones in a row (Envoy's rule);
- `down[policy]` is exactly the set of addresses whose state under `policy` is unhealthy,
  updated when a state flips, so the balancer reads one set per pick and never a state;
- `update(targets)` keeps the state of targets that stay (a table swap forgets nothing about
  them) and drops the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from forklane.proxy.table import Endpoint, HealthPolicy, Route, RoutingTable

__all__ = ["HealthBook", "ProbeState", "Target", "observe", "targets"]

Target = tuple[HealthPolicy, str]  # (the check, the endpoint's address)


@dataclass(slots=True)
class ProbeState:
    healthy: bool = True
    successes: int = 0  # passed probes in a row
    failures: int = 0  # failed probes in a row
    checks: int = 0
    failed_checks: int = 0
    last: str = ""  # what the last probe saw: "ok", "status 503", "timeout", ...
    changed_at: float = 0.0  # when `healthy` last flipped (0: never)
    flips: int = 0


def observe(state: ProbeState, passed: bool, policy: HealthPolicy, detail: str,
            now: float) -> bool:
    """Book one probe's result; True when it flips the endpoint's health."""
    state.checks += 1
    state.last = detail
    if passed:
        state.successes += 1
        state.failures = 0
        flip = not state.healthy and state.successes >= policy.healthy_threshold
    else:
        state.failed_checks += 1
        state.failures += 1
        state.successes = 0
        flip = state.healthy and state.failures >= policy.unhealthy_threshold
    if flip:
        state.healthy = not state.healthy
        state.changed_at = now
        state.flips += 1
    return flip


def _routes(table: RoutingTable) -> Iterable[Route]:
    for svc in (*table.services.values(), *table.authorities.values()):
        yield svc.baseline
        yield from svc.forks.values()
        for split in svc.splits:
            yield from split.routes


def targets(table: RoutingTable) -> dict[Target, Endpoint]:
    """Every (check, address) the table asks to probe; empty when nothing configures one."""
    out: dict[Target, Endpoint] = {}
    for route in _routes(table):
        dest = route.destination
        if dest is not None and dest.health is not None:
            for endpoint in dest.endpoints:
                out.setdefault((dest.health, endpoint.address), endpoint)
    return out


class HealthBook:
    """Every probe target's state and, per check, the addresses it found unhealthy."""

    def __init__(self) -> None:
        self.states: dict[Target, ProbeState] = {}
        self.down: dict[HealthPolicy, frozenset[str]] = {}

    def update(self, wanted: Iterable[Target]) -> tuple[list[Target], list[Target]]:
        """Make the targets exactly `wanted`; returns (added, removed)."""
        keep = set(wanted)
        removed = [t for t in self.states if t not in keep]
        added = [t for t in keep if t not in self.states]
        for target in removed:
            del self.states[target]
        for target in added:
            self.states[target] = ProbeState()
        if removed:
            self._recount()
        return added, removed

    def record(self, target: Target, passed: bool, detail: str, now: float) -> bool:
        """Book a probe of `target` (ignored once the target is gone); True on a flip."""
        state = self.states.get(target)
        if state is None:
            return False
        flipped = observe(state, passed, target[0], detail, now)
        if flipped:
            self._recount()
        return flipped

    def healthy(self, policy: HealthPolicy, address: str) -> bool:
        return address not in self.down.get(policy, frozenset())

    def _recount(self) -> None:
        down: dict[HealthPolicy, set[str]] = {}
        for (policy, address), state in self.states.items():
            if not state.healthy:
                down.setdefault(policy, set()).add(address)
        self.down = {policy: frozenset(addresses) for policy, addresses in down.items()}

    def report(self, now: float) -> list[dict[str, Any]]:
        """Plain data for /config and /metrics: one row per probed endpoint."""
        return [
            {
                "endpoint": address,
                "check": policy.label,
                "healthy": state.healthy,
                "successes": state.successes,
                "failures": state.failures,
                "checks": state.checks,
                "failed_checks": state.failed_checks,
                "last": state.last,
                "seconds_since_change": round(now - state.changed_at, 3)
                if state.changed_at else None,
            }
            for (policy, address), state in sorted(
                self.states.items(), key=lambda item: (item[0][1], item[0][0].label)
            )
        ]
