"""The control plane's tap fan-in: filters for the push streams, lines for the viewers."""

from __future__ import annotations

from forklane.controlplane.tap import TapHub


def line(key: str | None, taps: list[str], status: int = 200) -> dict[str, object]:
    return {"routing_key": key, "service": "web", "status": status, "taps": taps}


async def test_records_go_to_the_viewers_they_name() -> None:
    hub = TapHub()
    a = hub.open(["k1"], subject="alice")
    b = hub.open(["k1"], status_class=5, subject="bob")
    assert [f.id for f in hub.filters()] == [a.spec.id, b.spec.id]
    hub.received("p1", [line("k1", [a.spec.id]), line("k1", [a.spec.id, b.spec.id], 503)], {})
    got_a = [a.queue.get_nowait() for _ in range(a.queue.qsize())]
    got_b = [b.queue.get_nowait() for _ in range(b.queue.qsize())]
    assert [d["status"] for d in got_a] == [200, 503] and [d["status"] for d in got_b] == [503]
    assert all(d["proxy"] == "p1" and d["type"] == "request" and "taps" not in d for d in got_a)
    shown, subjects = hub.recent(str(got_b[0]["id"])) or ({}, frozenset())
    assert shown["status"] == 503 and subjects == {"alice", "bob"}


async def test_a_viewer_that_does_not_read_only_loses_its_own_lines() -> None:
    hub = TapHub(queue_size=3)
    slow = hub.open(["k1"])
    fast = hub.open(["k1"])
    for _ in range(10):
        hub.received("p1", [line("k1", [slow.spec.id, fast.spec.id])], {slow.spec.id: 1})
        fast.queue.get_nowait()  # this one keeps up
    assert slow.queue.qsize() == 3 and slow.dropped == 7
    assert slow.proxy_dropped == {"p1": 10} and fast.dropped == 0


async def test_closing_a_viewer_changes_the_filter_set() -> None:
    hub = TapHub()
    seen = hub.version
    viewer = hub.open()
    assert await hub.wait_changed(seen) == seen + 1
    hub.close(viewer)
    assert hub.filters() == () and hub.version == seen + 2
    hub.received("p1", [line(None, [viewer.spec.id])], {})  # late records of a gone viewer
    assert viewer.queue.empty()


async def test_message_deliveries_match_key_and_service() -> None:
    hub = TapHub()
    mine = hub.open(["k1"], service="orders")
    errors = hub.open(["k1"], status_class=5)  # deliveries have no status: not shown there
    shown = hub.deliveries("consumer-a", [
        {"routing_key": "k1", "service": "orders", "outcome": "taken", "broker": "nats"},
        {"routing_key": None, "service": "orders", "outcome": "taken", "broker": "nats"},
        {"routing_key": "k1", "service": "billing", "outcome": "skipped", "broker": "nats"},
    ])
    assert shown == 1 and mine.queue.qsize() == 1 and errors.queue.empty()
    got = mine.queue.get_nowait()
    assert got["type"] == "delivery" and got["reporter"] == "consumer-a"
