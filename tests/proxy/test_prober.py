"""The prober's ownership of its tasks across table swaps, with a check function standing in
for the network (the HTTP and TCP probes themselves meet real upstreams in
`tests/resilience/test_health_checks.py`): no task without a check, one per target, a swap
keeps the running ones and cancels the removed, concurrency is bounded."""

from __future__ import annotations

import asyncio
from typing import Any

from forklane.proxy import schema
from forklane.proxy.health import HealthBook
from forklane.proxy.prober import Prober
from forklane.proxy.table import Endpoint, HealthPolicy, RoutingTable, build_table
from tests.support.polling import eventually


def table(version: str, endpoints: list[str], check: bool = True) -> RoutingTable:
    svc: dict[str, Any] = {"name": "svc", "endpoints": endpoints}
    if check:
        svc["health_check"] = {"path": "/healthz", "interval_seconds": 0.05,
                               "unhealthy_threshold": 1, "healthy_threshold": 1}
    return build_table(schema.RoutingSnapshot.model_validate(
        {"version": version, "services": [svc]}))


class Checks:
    """Answers probes from `sick`; counts them, and how many ran at once."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.sick: set[str] = set()
        self.seen: dict[str, int] = {}
        self.running = 0
        self.most = 0
        self.hold = hold

    async def __call__(self, policy: HealthPolicy, endpoint: Endpoint) -> tuple[bool, str]:
        self.seen[endpoint.address] = self.seen.get(endpoint.address, 0) + 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if self.hold is not None:
                await self.hold.wait()
            return (False, "status 503") if endpoint.address in self.sick else (True, "ok")
        finally:
            self.running -= 1


async def test_no_check_configured_means_no_task() -> None:
    prober = Prober(HealthBook(), asyncio.get_running_loop(), lambda: 0.5, check=Checks())
    prober.update(table("v1", ["10.0.0.1:80", "10.0.0.2:80"], check=False))
    assert prober.tasks == {}


async def test_a_swap_keeps_running_probes_and_cancels_removed_ones() -> None:
    book = HealthBook()
    checks = Checks()
    checks.sick.add("10.0.0.2:80")
    prober = Prober(book, asyncio.get_running_loop(), lambda: 0.5, check=checks)
    try:
        prober.update(table("v1", ["10.0.0.1:80", "10.0.0.2:80"]))
        await eventually(lambda: bool(book.down), within=5, what="10.0.0.2 found unhealthy")
        kept = {target[1]: task for target, task in prober.tasks.items()}
        prober.update(table("v2", ["10.0.0.2:80", "10.0.0.3:80"]))
        now = {target[1]: task for target, task in prober.tasks.items()}
        assert now["10.0.0.2:80"] is kept["10.0.0.2:80"]  # not restarted by the swap
        assert set(now) == {"10.0.0.2:80", "10.0.0.3:80"}
        removed = kept["10.0.0.1:80"]
        await asyncio.wait({removed}, timeout=5)
        assert removed.cancelled()
        assert list(book.down.values()) == [frozenset({"10.0.0.2:80"})]  # state kept
    finally:
        await prober.aclose()
    assert prober.tasks == {}


async def test_probes_in_flight_are_bounded() -> None:
    hold = asyncio.Event()
    checks = Checks(hold)
    prober = Prober(HealthBook(), asyncio.get_running_loop(), lambda: 0.5, concurrency=3,
                    check=checks)
    try:
        prober.update(table("v1", [f"10.0.0.{i}:80" for i in range(1, 11)]))
        await eventually(lambda: checks.running == 3, within=5, what="three probes running")
        assert prober.slots.locked()  # the other seven wait for a slot
        hold.set()
        await eventually(lambda: len(checks.seen) == 10, within=5, what="every endpoint probed")
        assert checks.most == 3
    finally:
        await prober.aclose()
