"""Core NATS: each side in its own queue group gets every message and takes only its own."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest

from forklane.messaging import DeliveryCounts, RoutesView, RunsAs, StaticRoutes
from forklane.messaging import nats as fl_nats
from forklane.propagation import current_routing_key, routing_context
from tests.messaging.conftest import NATS_URL, _answers
from tests.support.polling import eventually


async def test_core_nats_take_or_skip_by_the_routes_view() -> None:
    if not _answers(4222):
        pytest.skip("NATS is not reachable on 127.0.0.1:4222")
    import nats

    subject = f"orders{uuid.uuid4().hex[:8]}.created"
    routes = StaticRoutes(RoutesView("billing", {"alice": "alice-sb"}))
    taken: list[tuple[str, str, str | None]] = []
    counts = {"baseline": DeliveryCounts(), "alice-sb": DeliveryCounts()}
    nc = await nats.connect(NATS_URL)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(nc.close)
        for side in (None, "alice-sb"):
            name = side or "baseline"

            async def handle(msg: Any, name: str = name) -> None:
                taken.append((name, msg.data.decode(), current_routing_key()))

            for _replica in range(2):  # two replicas of each side share its queue group
                consumer = fl_nats.NatsCoreConsumer(nc, subject, "billing",
                                                    RunsAs("billing", side), routes, handle,
                                                    reporters=[counts[name]])  # fmt: skip
                await consumer.start()
                stack.push_async_callback(consumer.aclose)
        await nc.flush()
        for n in range(10):
            if n % 2:
                await fl_nats.publish_core(nc, subject, f"c{n}".encode())
            else:
                with routing_context("alice"):
                    await fl_nats.publish_core(nc, subject, f"c{n}".encode())
        await nc.flush()
        await eventually(lambda: len(taken) == 10 and counts["baseline"].total("skipped") == 5
                         and counts["alice-sb"].total("skipped") == 5, what="ten taken")
    assert sorted(taken) == sorted(
        [("alice-sb", f"c{n}", "alice") for n in range(0, 10, 2)]
        + [("baseline", f"c{n}", None) for n in range(1, 10, 2)])  # fmt: skip
