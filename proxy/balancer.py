"""Endpoint choice: round robin or least-request (power of two choices), with passive outlier
ejection. Pure bookkeeping over plain objects; the clock and the random draw are injected.

Invariants:
- an endpoint with `consecutive_failures >= threshold` is skipped until `ejected_until`;
- when every endpoint of a destination is ejected, all are tried anyway (Envoy's "panic"
  mode): ejecting the last endpoint would turn a flaky upstream into a certain outage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from forklane.proxy.table import Destination, Endpoint

__all__ = ["NO_LEASE", "Balancer", "EndpointHealth", "Lease"]


@dataclass(slots=True)
class EndpointHealth:
    active: int = 0  # requests in flight
    consecutive_failures: int = 0
    ejected_until: float = 0.0


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
    ) -> None:
        self._clock = clock
        self._draw = draw
        self._threshold = failure_threshold
        self._ejection = ejection_seconds
        self.health: dict[str, EndpointHealth] = {}
        self._next: dict[str, int] = {}  # destination name -> round-robin cursor

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

    def succeeded(self, endpoint: Endpoint) -> None:
        h = self.health.get(endpoint.address)
        if h is not None and h.consecutive_failures:
            h.consecutive_failures = 0

    def failed(self, endpoint: Endpoint) -> None:
        h = self.endpoint_health(endpoint)
        h.consecutive_failures += 1
        if h.consecutive_failures >= self._threshold:
            h.ejected_until = self._clock() + self._ejection
