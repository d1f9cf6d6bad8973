"""Trace-id -> routing key memory: bounded, expiring, newest write wins."""

from __future__ import annotations

import pytest

from forklane.proxy.context.repair import TraceKeyMemory


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_remembers_until_ttl(clock: FakeClock) -> None:
    memory = TraceKeyMemory(max_entries=10, ttl=30, clock=clock)
    memory.put("t1", "abc")
    clock.now += 29.9
    assert memory.get("t1") == "abc"
    clock.now += 0.1
    assert memory.get("t1") is None
    assert len(memory) == 0  # expired on read


def test_unknown_trace(clock: FakeClock) -> None:
    assert TraceKeyMemory(max_entries=1, ttl=1, clock=clock).get("nope") is None


def test_rewrite_refreshes_and_replaces(clock: FakeClock) -> None:
    memory = TraceKeyMemory(max_entries=10, ttl=10, clock=clock)
    memory.put("t1", "abc")
    clock.now += 8
    memory.put("t1", "xyz")
    clock.now += 8
    assert memory.get("t1") == "xyz"


def test_bounded_forgets_least_recently_written(clock: FakeClock) -> None:
    memory = TraceKeyMemory(max_entries=3, ttl=60, clock=clock)
    for i in range(3):
        memory.put(f"t{i}", f"k{i}")
    memory.put("t0", "k0")  # t0 is now the newest write
    memory.put("t3", "k3")
    assert memory.get("t1") is None
    assert [memory.get(t) for t in ("t0", "t2", "t3")] == ["k0", "k2", "k3"]
    assert len(memory) == 3


def test_expired_entries_are_purged_on_write(clock: FakeClock) -> None:
    memory = TraceKeyMemory(max_entries=1000, ttl=5, clock=clock)
    for i in range(500):
        memory.put(f"t{i}", "k")
    clock.now += 6
    memory.put("fresh", "k")
    assert len(memory) == 1


@pytest.mark.parametrize(("max_entries", "ttl"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_rejects_bad_bounds(clock: FakeClock, max_entries: int, ttl: float) -> None:
    with pytest.raises(ValueError):
        TraceKeyMemory(max_entries=max_entries, ttl=ttl, clock=clock)
