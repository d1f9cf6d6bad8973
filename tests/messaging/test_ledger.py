"""The routing key crosses the broker and each side's consumer gets exactly its messages.

Run against the real brokers of the machine (RabbitMQ and NATS JetStream, each test once per
broker) and a real control plane; every message id is accounted for in a ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from forklane.messaging import DeliveryCounts, RoutesWatcher, RunsAs
from forklane.propagation.aiohttp import server_middleware
from forklane.propagation.httpx import async_event_hooks
from tests.messaging.conftest import Broker, Ledger, Plane, publish_with_key, watcher
from tests.support.polling import eventually


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"sb-{tag}", f"key{tag}"


async def _sees(routes: RoutesWatcher, key: str, present: bool) -> None:
    await eventually(lambda: (key in routes.view.forks) is present, within=15,
                     what=f"routes view {'with' if present else 'without'} {key}")  # fmt: skip


async def _forked(plane: Plane, broker: Broker,
                  stack: contextlib.AsyncExitStack) -> tuple[str, str, RoutesWatcher]:
    """A sandbox forking the broker's service, and a routes watcher that sees it."""
    sandbox, key = _names()
    await plane.service(broker.service)
    await plane.sandbox(sandbox, key, broker.service)
    routes = await watcher(plane, broker.service)
    stack.push_async_callback(routes.aclose)
    await _sees(routes, key, True)
    return sandbox, key, routes


async def test_a_keyed_request_reaches_the_forks_consumer_and_its_calls_carry_the_key(
    broker: Broker, plane: Plane
) -> None:
    sandbox, key = _names()
    await plane.service(broker.service)
    await plane.sandbox(sandbox, key, broker.service)
    seen: dict[str, dict[str, str]] = {}

    async def downstream(request: web.Request) -> web.Response:
        seen[request.match_info["id"]] = dict(request.headers)
        return web.Response(text="ok")

    async def service_a(request: web.Request) -> web.Response:
        await broker.publish(request.match_info["id"])  # publish() reads the routing context
        return web.Response(status=202)

    app_c = web.Application()
    app_c.router.add_get("/seen/{id}", downstream)
    app_a = web.Application(middlewares=[server_middleware()])
    app_a.router.add_post("/orders/{id}", service_a)
    ledger = Ledger()
    async with contextlib.AsyncExitStack() as stack:
        c_url = await stack.enter_async_context(serving(app_c))
        a_url = await stack.enter_async_context(serving(app_a))
        http = await stack.enter_async_context(
            httpx.AsyncClient(event_hooks=async_event_hooks()))  # type: ignore[arg-type]

        def handler_for(side: str) -> Any:
            async def handle(msg_id: str, _msg: Any) -> None:
                ledger.record(side, msg_id)
                await http.get(f"{c_url}/seen/{msg_id}")  # the handler's own outbound call
            return handle

        for side in (None, sandbox):
            routes = await watcher(plane, broker.service)
            stack.push_async_callback(routes.aclose)
            await _sees(routes, key, True)
            consumer = await broker.consumer(RunsAs(broker.service, side), routes,
                                             handler_for(side or "baseline"))  # fmt: skip
            stack.push_async_callback(consumer.aclose)
        async with httpx.AsyncClient() as client:
            for msg_id, headers in (("m1", {"x-forklane-routing-key": key}), ("m2", {}),
                                    ("m3", {"baggage": f"team=x,forklane-routing-key={key}"}),
                                    ("m4", {"x-forklane-routing-key": "someone-else"})):
                reply = await client.post(f"{a_url}/orders/{msg_id}", headers=headers)
                assert reply.status_code == 202
        await eventually(lambda: ledger.ids() == {"m1", "m2", "m3", "m4"} and len(seen) == 4,
                         within=15, what="all four messages handled")  # fmt: skip
        await eventually(broker.drained, within=10, what="queues drained")
    assert ledger.sides("m1") == [sandbox]
    assert ledger.sides("m2") == ["baseline"]
    assert ledger.sides("m3") == [sandbox]
    assert ledger.sides("m4") == ["baseline"]  # a key that forks another service, not this one
    assert seen["m1"]["x-forklane-routing-key"] == key
    assert f"forklane-routing-key={key}" in seen["m3"]["baggage"]
    assert seen["m4"]["x-forklane-routing-key"] == "someone-else"  # kept for further hops
    assert "x-forklane-routing-key" not in seen["m2"]


async def test_creating_and_deleting_the_sandbox_while_messages_flow_loses_none(
    broker: Broker, plane: Plane
) -> None:
    """Ledger: every published id is consumed exactly once; keyless ones by the baseline;
    keyed ones published and consumed while both sides' views have the route by the fork,
    and those published and consumed before the sandbox or after its deletion (as both views
    show) by the baseline. A keyed message that crosses a change is judged by the view of the
    moment it is read: either side, still exactly once."""
    sandbox, key = _names()
    await plane.service(broker.service)
    ledger = Ledger()
    counts = {"baseline": DeliveryCounts(), sandbox: DeliveryCounts()}
    phase = "before"
    published: dict[str, tuple[str | None, str]] = {}  # id -> (key, phase at publish)
    consumed_in: dict[str, str] = {}  # id -> phase when it was handled
    stop = asyncio.Event()

    async def publisher() -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            msg_id = f"p{n}"
            with_key = key if n % 2 == 0 else None
            published[msg_id] = (with_key, phase)
            await publish_with_key(broker, msg_id, with_key)
            if n % 20 == 19:
                await asyncio.sleep(0)  # let consumers run between bursts

    async with contextlib.AsyncExitStack() as stack:
        watchers = []
        for side in (None, sandbox):
            routes = await watcher(plane, broker.service)
            stack.push_async_callback(routes.aclose)
            watchers.append(routes)
            name = side or "baseline"

            async def handle(msg_id: str, _msg: Any, name: str = name) -> None:
                ledger.record(name, msg_id)
                consumed_in[msg_id] = phase

            consumer = await broker.consumer(RunsAs(broker.service, side), routes, handle,
                                             (counts[name],))  # fmt: skip
            stack.push_async_callback(consumer.aclose)
        flowing = asyncio.create_task(publisher())
        await eventually(lambda: len(ledger.entries) >= 50, what="traffic before the sandbox")
        phase = "creating"
        await plane.sandbox(sandbox, key, broker.service)
        for routes in watchers:
            await _sees(routes, key, True)
        phase = "forked"
        mark = len(published)
        await eventually(lambda: len(published) >= mark + 200, what="traffic while forked")
        phase = "deleting"
        await plane.admin.sandboxes.delete(sandbox)
        for routes in watchers:
            await _sees(routes, key, False)
        phase = "after"
        mark = len(published)
        await eventually(lambda: len(published) >= mark + 100, what="traffic after deletion")
        stop.set()
        await flowing
        await eventually(lambda: ledger.ids() == set(published), within=30,
                         what="every published message consumed")  # fmt: skip
        await eventually(broker.drained, within=15, what="queues drained")
    duplicates = len(ledger.entries) - len(ledger.ids())
    assert duplicates == 0, f"{duplicates} duplicates"
    wrong = []
    for msg_id, (with_key, at) in published.items():
        (side,) = ledger.sides(msg_id)
        expected = {"before": "baseline", "forked": sandbox, "after": "baseline"}.get(at)
        if consumed_in[msg_id] != at:
            expected = None  # crossed a change: the view of the moment decides
        if with_key is None:
            expected = "baseline"
        if expected is not None and side != expected:
            wrong.append((msg_id, with_key, at, side))
    assert not wrong, wrong[:10]
    forked = [i for i, (k, at) in published.items() if k and at == consumed_in[i] == "forked"]
    assert len(forked) >= 50, len(forked)  # the fork really took its share
    assert counts[sandbox].total("taken") == sum(1 for s, _ in ledger.entries if s == sandbox)


async def test_with_the_control_plane_down_consumption_goes_on_with_the_last_view(
    broker: Broker, plane: Plane, tmp_path: Path
) -> None:
    sandbox, key = _names()
    await plane.service(broker.service)
    await plane.sandbox(sandbox, key, broker.service)
    ledger = Ledger()
    cache = tmp_path / "routes" / "billing.json"

    async def start(stack: contextlib.AsyncExitStack, side: str | None,
                    routes: RoutesWatcher) -> None:  # fmt: skip
        async def handle(msg_id: str, _msg: Any) -> None:
            ledger.record(side or "baseline", msg_id)

        consumer = await broker.consumer(RunsAs(broker.service, side), routes, handle)
        stack.push_async_callback(consumer.aclose)

    async with contextlib.AsyncExitStack() as stack:
        base_routes = await watcher(plane, broker.service)
        stack.push_async_callback(base_routes.aclose)
        fork_routes = await watcher(plane, broker.service, cache)
        await _sees(base_routes, key, True)
        await _sees(fork_routes, key, True)
        assert cache.exists()
        await start(stack, None, base_routes)
        later_client = await plane.consumer_client()
        await plane.plane.aclose()  # the control plane goes away
        await eventually(lambda: not base_routes.connected, what="the watcher notices")
        # a fork consumer restarted during the outage starts from its cache
        await fork_routes.aclose()
        restarted = RoutesWatcher(broker.service, later_client,
                                  cache_file=cache, backoff=(0.05, 0.2))  # fmt: skip
        await restarted.start()
        stack.push_async_callback(restarted.aclose)
        assert restarted.source == "cache" and key in restarted.view.forks
        await start(stack, sandbox, restarted)
        for n in range(20):
            await publish_with_key(broker, f"d{n}", key if n % 2 == 0 else None)
        await eventually(lambda: len(ledger.ids()) == 20, within=15, what="consumed while down")
        await eventually(broker.drained, within=10, what="queues drained")
    assert not restarted.connected
    for n in range(20):
        assert ledger.sides(f"d{n}") == [sandbox if n % 2 == 0 else "baseline"]


async def test_a_deleted_forks_backlog_goes_back_to_the_baseline(
    broker: Broker, plane: Plane
) -> None:
    """Messages handed to a fork whose consumer is not running wait for it; once the sandbox
    is deleted, the fork's consumer hands them back and the baseline takes each once."""
    ledger = Ledger()
    async with contextlib.AsyncExitStack() as stack:
        sandbox, key, routes = await _forked(plane, broker, stack)

        async def handle(msg_id: str, _msg: Any, side: str = "baseline") -> None:
            ledger.record(side, msg_id)

        handed = DeliveryCounts()
        base = await broker.consumer(RunsAs(broker.service), routes, handle, (handed,))
        stack.push_async_callback(base.aclose)
        fork = await broker.consumer(RunsAs(broker.service, sandbox), routes,
                                     lambda i, m: handle(i, m, sandbox))  # fmt: skip
        await fork.aclose()  # the fork's consumer is gone; its queue or durable stays
        for n in range(30):
            await publish_with_key(broker, f"b{n}", key)
        await eventually(lambda: handed.total("handed-on") == 30, what="handed to the fork")
        assert ledger.entries == []
        await plane.admin.sandboxes.delete(sandbox)
        await _sees(routes, key, False)
        fork = await broker.consumer(RunsAs(broker.service, sandbox), routes,
                                     lambda i, m: handle(i, m, sandbox))  # fmt: skip
        stack.push_async_callback(fork.aclose)
        await eventually(lambda: len(ledger.ids()) == 30, within=15, what="the backlog taken")
        await eventually(broker.drained, within=10, what="queues drained")
    assert sorted(ledger.entries) == sorted(("baseline", f"b{n}") for n in range(30))


@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
async def test_rabbitmq_fork_queue_backlog_expires_back_to_the_baseline(
    broker: Broker, plane: Plane
) -> None:
    """With no fork consumer at all, a deleted sandbox's messages come back to the baseline
    queue after `fork_backlog_ttl` (dead-lettered), and the baseline takes them."""
    ledger = Ledger()
    async with contextlib.AsyncExitStack() as stack:
        sandbox, key, routes = await _forked(plane, broker, stack)

        async def handle(msg_id: str, _msg: Any) -> None:
            ledger.record("baseline", msg_id)

        handed = DeliveryCounts()
        base = await broker.consumer(RunsAs(broker.service), routes, handle, (handed,),
                                     fork_backlog_ttl=1.0)  # type: ignore[call-arg]
        stack.push_async_callback(base.aclose)
        await plane.admin.sandboxes.delete(sandbox)
        for n in range(10):
            await publish_with_key(broker, f"t{n}", key)
        await _sees(routes, key, False)
        await eventually(lambda: len(ledger.ids()) == 10, within=20, what="expired back")
    assert sorted(ledger.entries) == sorted(("baseline", f"t{n}") for n in range(10))


async def test_each_side_handles_its_messages_in_publish_order(broker: Broker, plane: Plane) -> None:
    ledger = Ledger()
    async with contextlib.AsyncExitStack() as stack:
        sandbox, key, routes = await _forked(plane, broker, stack)
        for side in (None, sandbox):
            name = side or "baseline"

            async def handle(msg_id: str, _msg: Any, name: str = name) -> None:
                for _ in range(int(msg_id[1:]) % 7):  # handlers that await for longer or
                    await asyncio.sleep(0)  # shorter would overtake each other if run at once
                ledger.record(name, msg_id)

            consumer = await broker.consumer(RunsAs(broker.service, side), routes, handle)
            stack.push_async_callback(consumer.aclose)
        for n in range(100):
            await publish_with_key(broker, f"o{n:03d}", key if n % 3 else None)
        await eventually(lambda: len(ledger.ids()) == 100, within=15, what="all handled")
    for side in ("baseline", sandbox):
        mine = [i for s, i in ledger.entries if s == side]
        assert mine == sorted(mine) and mine, side
