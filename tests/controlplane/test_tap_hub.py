"""The control plane's tap fan-in: filters for the push streams, lines for the viewers."""

from __future__ import annotations

from typing import Any

import pytest

from forklane.controlplane.tap import TapHub, TapsFull
from forklane.proxy.push_messages import TapFilterSpec


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


async def test_filter_ids_are_unique_across_replicas() -> None:
    a, b = TapHub(), TapHub()
    assert a.open().spec.id != b.open().spec.id


async def test_other_replicas_filters_are_pushed_and_their_records_forwarded() -> None:
    hub = TapHub(hub_id="here")
    forwarded: list[tuple[str, dict[str, Any]]] = []
    hub.forward = lambda owner, item: forwarded.append((owner, item))
    mine = hub.open(["k1"])
    seen = hub.version
    theirs = TapFilterSpec(id="t1.there", keys=("k1",))
    hub.set_remote({theirs.id: (theirs, "there")})
    assert await hub.wait_changed(seen) > seen
    assert [f.id for f in hub.filters()] == [mine.spec.id, "t1.there"]
    assert [f.id for f in hub.local_filters()] == [mine.spec.id]
    hub.received("p1", [line("k1", [mine.spec.id, "t1.there"]), line("k1", ["t1.there"])],
                 {"t1.there": 3})
    assert mine.queue.qsize() == 1
    assert [(o, i["proxy"], [r["taps"] for r in i["records"]], i["dropped"])
            for o, i in forwarded] == [
        ("there", "p1", [["t1.there"], ["t1.there"]], {"t1.there": 3})]
    forwarded.clear()
    delivery = {"routing_key": "k1", "service": "orders", "outcome": "taken", "broker": "nats"}
    assert hub.deliveries("consumer", [delivery]) == 1
    assert forwarded == [("there", {"reporter": "consumer", "deliveries": [delivery]})]
    assert hub.deliveries("consumer", [delivery], relay=False) == 1  # relayed: not again
    assert len(forwarded) == 1
    version = hub.version
    hub.set_remote({theirs.id: (theirs, "there")})  # the same set again: no push
    assert hub.version == version


async def test_captures_reach_only_viewers_that_asked_and_are_not_kept() -> None:
    hub = TapHub(redact=["X-Api-Key"])
    plain = hub.open(["k1"])
    capturing = hub.open(["k1"], headers=True, body=64)
    assert capturing.spec.redact == ("x-api-key",) and plain.spec.redact == ()
    record = {**line("k1", [plain.spec.id, capturing.spec.id]),
              "capture": {"request": {"headers": [["a", "b"]]}, "response": {}}}
    hub.received("p1", [record], {})
    assert "capture" not in plain.queue.get_nowait()
    got = capturing.queue.get_nowait()
    assert got["capture"]["request"]["headers"] == [["a", "b"]]
    shown, _ = hub.recent(str(got["id"])) or ({}, frozenset())
    assert shown and "capture" not in shown


async def test_no_more_taps_than_a_push_message_carries() -> None:
    hub = TapHub()
    theirs = {f"t{i}.there": (TapFilterSpec(id=f"t{i}.there"), "there") for i in range(60)}
    hub.set_remote(theirs)
    for _ in range(4):
        hub.open()
    with pytest.raises(TapsFull, match="64 taps"):
        hub.open()
    assert len(hub.filters()) == 64
