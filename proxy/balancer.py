"""Endpoint choice: round robin or least-request (power of two choices), with passive outlier
ejection, and each destination's circuit breakers. Pure bookkeeping over plain objects; the
clock and the random draw are injected.

Invariants:
- an endpoint with as many 5xx (or gateway errors: 502/503/504, connect failures, resets) in
  a row as its destination's `OutlierPolicy` allows is skipped until `ejected_until`; each
  ejection lasts `base_ejection` times the number of times it was ejected (at most
  `max_ejection`), and a calm period of `base_ejection` after it came back takes one off;
- no more than `max_ejection_percent` of a destination's endpoints are ejected at once, but
  the first one always may be (Envoy's rule);
- an endpoint is a candidate only when both kinds of health agree: not ejected (passive) and
  not found unhealthy by its destination's active check (`HealthBook.down`);
- when no endpoint of a destination is a candidate, all are tried anyway (Envoy's "panic"
  mode): ejecting the last endpoint would turn a flaky upstream into a certain outage;
- a `Circuit` counts, per destination name (so the counts survive a table swap), the
  requests in flight, those waiting for a new connection and those retrying; each count
  goes up and down exactly once per request, and a request over a limit is refused and
  counted in `overflows` under the limit's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from forklane.proxy.health import HealthBook
from forklane.proxy.table import CircuitLimits, Destination, Endpoint, OutlierPolicy

__all__ = ["NO_LEASE", "Balancer", "Circuit", "EndpointHealth", "Lease"]

_GATEWAY = (0, 502, 503, 504)
_MAX_CIRCUITS = 10_000  # 0: connect failure, reset or timeout (no status)


@dataclass(slots=True)
class EndpointHealth:
    active: int = 0  # requests in flight
    consecutive_failures: int = 0  # 5xx in a row
    consecutive_gateway: int = 0  # gateway errors in a row
    ejected_until: float = 0.0
    ejections: int = 0  # the backoff multiplier
    settled: float = 0.0  # when the multiplier last came down


class Circuit:
    """One destination's counts against its limits (see the module doc)."""

    __slots__ = ("limits", "name", "overflows", "pending", "requests", "retries")

    def __init__(self, name: str, limits: CircuitLimits) -> None:
        self.name = name
        self.limits = limits
        self.requests = 0
        self.pending = 0
        self.retries = 0
        self.overflows: dict[str, int] = {}

    def overflow(self, limit: str) -> None:
        self.overflows[limit] = self.overflows.get(limit, 0) + 1

    def enter(self) -> bool:
        """Count one more request in flight, or refuse it (max_requests)."""
        if self.requests >= self.limits.max_requests:
            self.overflow("max_requests")
            return False
        self.requests += 1
        return True

    def may_connect(self, connections: int) -> bool:
        """Whether a request may wait for a new connection, with `connections` open now."""
        if connections >= self.limits.max_connections:
            self.overflow("max_connections")
            return False
        if self.pending >= self.limits.max_pending:
            self.overflow("max_pending_requests")
            return False
        return True

    def may_retry(self, budget: int | None = None) -> bool:
        """Take a retry slot; `budget`: the retry budget's bound as well (see
        `forward.attempts.retry_budget`)."""
        if self.retries >= self.limits.max_retries:
            self.overflow("max_retries")
            return False
        if budget is not None and self.retries >= budget:
            self.overflow("retry_budget")
            return False
        self.retries += 1
        return True

    def leave(self, retrying: bool) -> None:
        self.requests -= 1
        if retrying:
            self.retries -= 1

    def tripped(self) -> bool:
        """A limit is reached: the next request of that kind would be refused."""
        limits = self.limits
        return (self.requests >= limits.max_requests or self.pending >= limits.max_pending
                or self.retries >= limits.max_retries)


class Lease:
    """One request's hold on an endpoint: counted in `active` (least-request reads it) from
    `Balancer.lease` until `release()`, which takes effect exactly once however many paths
    of an exchange's end call it."""

    __slots__ = ("health",)

    def __init__(self, health: EndpointHealth | None) -> None:
        self.health = health
        if health is not None:
            health.active += 1

    def release(self) -> None:
        health = self.health
        if health is not None:
            self.health = None
            health.active -= 1


NO_LEASE = Lease(None)  # single-endpoint destinations keep no bookkeeping; shared, inert


class Balancer:
    def __init__(
        self,
        clock: Callable[[], float],
        draw: Callable[[], float],
        failure_threshold: int = 5,
        ejection_seconds: float = 10.0,
        probes: HealthBook | None = None,
    ) -> None:
        self._clock = clock
        self._draw = draw
        self.probes = probes if probes is not None else HealthBook()  # active health
        # Destinations whose snapshot says nothing: the proxy's settings (no gateway rule,
        # no cap on the share ejected; the backoff as configured ones have it).
        self.default_outlier = OutlierPolicy(failure_threshold, 0, ejection_seconds,
                                             max(300.0, ejection_seconds), 100)
        self.health: dict[str, EndpointHealth] = {}
        self.circuits: dict[str, Circuit] = {}  # destination name -> its counts
        self.ejections_total = 0
        self._next: dict[str, int] = {}  # destination name -> round-robin cursor

    def circuit(self, dest: Destination) -> Circuit:
        """The counts of `dest` (by name: they outlive a table swap; new limits apply at
        once)."""
        c = self.circuits.get(dest.name)
        if c is None:
            if len(self.circuits) >= _MAX_CIRCUITS:  # passthrough destinations come and go
                self.forget_circuits(set())
            c = self.circuits[dest.name] = Circuit(dest.name, dest.circuit)
        elif c.limits is not dest.circuit:
            c.limits = dest.circuit
        return c

    def forget_circuits(self, live: set[str]) -> None:
        """Drop idle counts of destinations no table names any more (bounded memory)."""
        for name in [n for n, c in self.circuits.items()
                     if n not in live and not (c.requests or c.pending or c.retries)]:
            del self.circuits[name]

    def report(self) -> dict[str, Any]:
        """Plain data for /config and /metrics: every destination's breaker counts and the
        endpoints ejected now."""
        now = self._clock()
        return {
            "circuits": {
                name: {
                    "limits": asdict(c.limits),
                    "requests": c.requests,
                    "pending": c.pending,
                    "retries": c.retries,
                    "open": c.tripped(),
                    "overflows": dict(c.overflows),
                }
                for name, c in sorted(self.circuits.items())
            },
            "ejected": {
                address: {"seconds_left": round(h.ejected_until - now, 3),
                          "ejections": h.ejections}
                for address, h in sorted(self.health.items())
                if h.ejected_until > now
            },
            "ejections_total": self.ejections_total,
            "health": self.probes.report(now),
        }

    def ejected(self, endpoint: Endpoint) -> bool:
        h = self.health.get(endpoint.address)
        return h is not None and h.ejected_until > self._clock()

    def endpoint_health(self, endpoint: Endpoint) -> EndpointHealth:
        h = self.health.get(endpoint.address)
        if h is None:
            h = self.health[endpoint.address] = EndpointHealth()
        return h

    def pick(self, dest: Destination, exclude: Endpoint | None = None) -> Endpoint:
        endpoints = dest.endpoints
        if len(endpoints) == 1:
            return endpoints[0]
        now = self._clock()
        down = self.probes.down.get(dest.health) if dest.health is not None else None
        if down:
            candidates = [
                e
                for e in endpoints
                if e is not exclude and e.address not in down
                and self.endpoint_health(e).ejected_until <= now
            ]
        else:
            candidates = [
                e
                for e in endpoints
                if e is not exclude and self.endpoint_health(e).ejected_until <= now
            ]
        if not candidates:
            candidates = [e for e in endpoints if e is not exclude] or list(endpoints)
        if dest.lb == "least_request" and len(candidates) > 1:
            # Two *different* candidates: with replacement the busier one would still win a
            # quarter of the picks between two endpoints.
            n = len(candidates)
            i = int(self._draw() * n) % n
            j = int(self._draw() * (n - 1)) % (n - 1)
            if j >= i:
                j += 1
            a, b = candidates[i], candidates[j]
            return a if self.endpoint_health(a).active <= self.endpoint_health(b).active else b
        cursor = self._next.get(dest.name, 0)
        self._next[dest.name] = cursor + 1
        return candidates[cursor % len(candidates)]

    def lease(self, dest: Destination, endpoint: Endpoint) -> Lease:
        """Hold `endpoint` for one request. Destinations with one endpoint need no count
        (nothing to choose between), so they get the shared inert lease."""
        if len(dest.endpoints) < 2:
            return NO_LEASE
        return Lease(self.endpoint_health(endpoint))

    def succeeded(self, endpoint: Endpoint, dest: Destination | None = None) -> None:
        h = self.health.get(endpoint.address)
        if h is None:
            return
        if h.consecutive_failures or h.consecutive_gateway:
            h.consecutive_failures = 0
            h.consecutive_gateway = 0
        if h.ejections:
            policy = (dest.outlier if dest is not None else None) or self.default_outlier
            now = self._clock()
            if now - max(h.ejected_until, h.settled) >= policy.base_ejection:
                h.ejections -= 1
                h.settled = now

    def failed(self, endpoint: Endpoint, dest: Destination | None = None,
               status: int = 0) -> None:
        """Count a failure of `endpoint`: a 5xx `status`, or 0 for a connect failure, a reset
        or a timeout (a gateway error with no status)."""
        h = self.endpoint_health(endpoint)
        policy = (dest.outlier if dest is not None else None) or self.default_outlier
        h.consecutive_failures += 1
        if status in _GATEWAY:
            h.consecutive_gateway += 1
        else:
            h.consecutive_gateway = 0
        now = self._clock()
        if h.ejected_until > now:
            return
        five = policy.consecutive_5xx
        gateway = policy.consecutive_gateway
        if not ((five and h.consecutive_failures >= five)
                or (gateway and h.consecutive_gateway >= gateway)):
            return
        if dest is not None and len(dest.endpoints) > 1:
            out = sum(1 for e in dest.endpoints if e is not endpoint and self.ejected(e))
            if out * 100 >= policy.max_ejection_percent * len(dest.endpoints) and (
                out or not policy.max_ejection_percent
            ):
                return
        h.ejections += 1
        h.ejected_until = now + min(policy.base_ejection * h.ejections, policy.max_ejection)
        h.consecutive_failures = 0
        h.consecutive_gateway = 0
        self.ejections_total += 1
