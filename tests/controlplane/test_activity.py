"""Activity TTL arithmetic (pure): when a `since: lastActivity` sandbox ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from forklane.controlplane import wire
from forklane.controlplane.activity import ActivityLog
from forklane.controlplane.judging import expires_at, last_activity

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def sandbox(since: str = "lastActivity", recorded: datetime | None = None) -> wire.Sandbox:
    return wire.Sandbox.model_validate({
        "metadata": {"name": "s", "creationTimestamp": T0.isoformat()},
        "spec": {"routingKey": "k1", "forks": [{"service": "web", "endpoints": ["h:1"]}],
                 "ttl": {"seconds": 100, "since": since}},
        "status": {"lastActivity": recorded.isoformat()} if recorded else None,
    })


def test_never_seen_ends_ttl_after_creation() -> None:
    assert expires_at(sandbox()) == T0 + timedelta(seconds=100)


def test_the_latest_of_recorded_and_seen_counts() -> None:
    recorded = T0 + timedelta(seconds=50)
    sb = sandbox(recorded=recorded)
    assert expires_at(sb) == recorded + timedelta(seconds=100)
    assert expires_at(sb, T0 + timedelta(seconds=70)) == T0 + timedelta(seconds=170)
    assert expires_at(sb, T0) == recorded + timedelta(seconds=100)  # an older report


def test_activity_is_recorded_once_per_tenth_of_the_ttl() -> None:
    recorded = T0 + timedelta(seconds=50)
    sb = sandbox(recorded=recorded)
    assert last_activity(sb, T0 + timedelta(seconds=55)) == recorded  # under 10 s: no write
    assert last_activity(sb, T0 + timedelta(seconds=61)) == T0 + timedelta(seconds=61)
    assert last_activity(sandbox("creation"), T0 + timedelta(seconds=61)) is None


def test_other_ttls_ignore_activity() -> None:
    assert expires_at(sandbox("creation"), T0 + timedelta(days=1)) == T0 + timedelta(seconds=100)


def test_the_log_is_bounded_and_keeps_the_newest() -> None:
    now = [T0]
    log = ActivityLog(lambda: now[0], size=2)
    log.saw(["a", "b"])
    now[0] = T0 + timedelta(seconds=1)
    log.saw(["a", "c"])
    assert log.last("a") == now[0] and log.last("b") is None and log.last("c") == now[0]
