"""Messaging: the consumer filter's cost per message, and how soon a new sandbox's consumer
gets its first message.

    .venv/bin/python bench/messaging_bench.py            # both parts, 5 sandbox runs per broker
    RUNS=10 RATE=500 .venv/bin/python bench/messaging_bench.py

1. Filter cost: `Judge.judge()` on the headers as a broker delivers them (normalise names,
   read the carriers, apply the rule), per message, for four typical header sets; the best of
   five timing rounds of 200,000 calls each.
2. Delay: an in-process control plane, the machine's RabbitMQ and NATS JetStream, a baseline
   and a fork consumer of one service already running, and a publisher sending messages with
   the sandbox's key at RATE per second. The clock starts just before the sandbox is created
   (`POST /api/v1/sandboxes`) and stops when the fork's handler runs for the first time; the
   time until the fork's routes view holds the key is shown too.

Not part of the test suite. Needs the brokers on 127.0.0.1:5672 (guest/guest) and :4222 (-js).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forklane import AsyncClient  # noqa: E402
from forklane.controlplane.server import ControlPlane  # noqa: E402
from forklane.controlplane.settings import Settings  # noqa: E402
from forklane.messaging import RoutesView, RoutesWatcher, RunsAs, StaticRoutes  # noqa: E402
from forklane.messaging._consumer import Judge, text_headers  # noqa: E402
from forklane.propagation import routing_context  # noqa: E402

RUNS = int(os.environ.get("RUNS", "5"))
RATE = float(os.environ.get("RATE", "200"))
ADMIN = "admin-token-for-the-messaging-bench-01"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def filter_cost() -> None:
    view = RoutesView("billing", {f"key{i}": f"sb{i}" for i in range(200)}, version="9")
    judge = Judge(RunsAs("billing"), StaticRoutes(view), "bench")
    cases = {
        "no carrier (keyless)": {"content-type": b"application/json", "message-id": b"m-1"},
        "x-forklane-routing-key, forked": {"content-type": b"application/json",
                                           "x-forklane-routing-key": b"key7"},
        "key in 4-member baggage": {"baggage": b"team=pay,user=7;p=1,forklane-routing-key=key7,"
                                               b"tenant=acme", "traceparent": TRACEPARENT.encode()},
        "both carriers + trace headers": {"x-forklane-routing-key": b"key7",
                                          "baggage": b"forklane-routing-key=key7",
                                          "traceparent": TRACEPARENT.encode(),
                                          "tracestate": b"vendor=1"},
    }  # fmt: skip
    print("1. consumer filter cost per message (normalise headers + read carriers + rule)")
    n = 200_000
    for name, raw in cases.items():
        items = list(raw.items())

        def once(items: list[tuple[str, bytes]] = items) -> None:
            judge.judge(text_headers(items))

        best = min(timeit.repeat(once, number=n, repeat=5)) / n
        print(f"   {name:34s} {best * 1e6:6.2f} µs")


async def _plane(tmp: Path) -> tuple[ControlPlane, AsyncClient, str]:
    settings = Settings(listen="127.0.0.1:0", store="sqlite", data_dir=tmp, admin_token=ADMIN,
                        reconcile_interval=2.0, probe_timeout=0.2, replica="bench")  # fmt: skip
    cp = ControlPlane(settings, with_push=False)
    await cp.start()
    assert cp.api_address is not None
    url = f"http://127.0.0.1:{cp.api_address[1]}"
    return cp, AsyncClient(url, ADMIN), url


async def _rabbit(tag: str, service: str, stack: contextlib.AsyncExitStack) -> tuple[Any, Any]:
    import aio_pika

    from forklane.messaging import rabbitmq

    conn = await aio_pika.connect_robust("amqp://guest:guest@127.0.0.1:5672/")
    stack.push_async_callback(conn.close)
    ch = await conn.channel()
    ex = await ch.declare_exchange(f"bench-{tag}", aio_pika.ExchangeType.DIRECT)
    q = await ch.declare_queue(f"{service}-{tag}", durable=True)
    await q.bind(ex, "k")

    async def cleanup() -> None:
        for name in (q.name, rabbitmq.fork_queue_name(q.name, f"sb-{tag}")):
            with contextlib.suppress(Exception):
                await ch.queue_delete(name)
        with contextlib.suppress(Exception):
            await ex.delete()

    stack.push_async_callback(cleanup)

    async def publish() -> None:
        await rabbitmq.publish(ex, b"x", "k")

    async def consumer(runs_as: RunsAs, routes: Any, handler: Any) -> Any:
        c = rabbitmq.RabbitConsumer(await conn.channel(), q.name, runs_as, routes, handler)
        await c.start()
        stack.push_async_callback(c.aclose)
        return c

    return publish, consumer


async def _jet(tag: str, service: str, stack: contextlib.AsyncExitStack) -> tuple[Any, Any]:
    import nats

    from forklane.messaging import nats as fl_nats

    nc = await nats.connect("nats://127.0.0.1:4222")
    stack.push_async_callback(nc.close)
    js = nc.jetstream()
    stream, subject, durable = f"BENCH_{tag}", f"bench{tag}.x", f"bench_{tag}"
    await js.add_stream(name=stream, subjects=[subject])

    async def cleanup() -> None:
        for side in ("baseline", f"sb-{tag}"):
            with contextlib.suppress(Exception):
                await js.delete_consumer(fl_nats.ROUTES_STREAM, f"{durable}_forklane_{side}")
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)

    stack.push_async_callback(cleanup)

    async def publish() -> None:
        await fl_nats.publish(js, subject, b"x")

    async def consumer(runs_as: RunsAs, routes: Any, handler: Any) -> Any:
        c = fl_nats.JetStreamConsumer(js, stream, subject, durable, runs_as, routes, handler,
                                      fetch_timeout=0.2)  # fmt: skip
        await c.start()
        stack.push_async_callback(c.aclose)
        return c

    return publish, consumer


async def one_run(broker: str, tmp: Path) -> tuple[float, float]:
    tag = uuid.uuid4().hex[:8]
    service, sandbox, key = f"billing-{tag}", f"sb-{tag}", f"key{tag}"
    cp, admin, url = await _plane(tmp / tag)
    first = asyncio.get_running_loop().create_future()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(cp.aclose)
        stack.push_async_callback(admin.aclose)
        await admin.services.create({"metadata": {"name": service},
                                     "spec": {"endpoints": ["127.0.0.1:9"]}})  # fmt: skip
        token = (await admin.call("POST", "/api/v1/tokens",
                                  {"subject": "w", "role": "consumer"}))["token"]  # fmt: skip
        client = AsyncClient(url, token)
        stack.push_async_callback(client.aclose)
        publish, consumer = await (_rabbit if broker == "rabbitmq" else _jet)(tag, service, stack)
        watchers = []
        has_key = asyncio.Event()
        for side in (None, sandbox):
            routes = RoutesWatcher(service, client, on_change=(
                (lambda v: has_key.set() if key in v.forks else None) if side else None))
            await routes.start()
            stack.push_async_callback(routes.aclose)
            await routes.wait_answered()
            watchers.append(routes)

            async def handle(_msg: Any, side: str | None = side) -> None:
                if side is not None and not first.done():
                    first.set_result(time.monotonic())

            await consumer(RunsAs(service, side), routes, handle)
        stop = asyncio.Event()

        async def publisher() -> None:
            with routing_context(key):
                while not stop.is_set():
                    await publish()
                    await asyncio.sleep(1 / RATE)  # the publish rate, not synchronisation

        flowing = asyncio.create_task(publisher())
        await asyncio.sleep(0.3)  # traffic is flowing (baseline takes it) before the create
        t0 = time.monotonic()
        await admin.sandboxes.create({"metadata": {"name": sandbox}, "spec": {
            "routingKey": key, "forks": [{"service": service, "endpoints": ["127.0.0.1:9"]}]}})
        await asyncio.wait_for(has_key.wait(), 30)
        seen = time.monotonic() - t0
        got = await asyncio.wait_for(first, 30) - t0
        stop.set()
        await flowing
    return seen, got


async def delays() -> None:
    print(f"2. sandbox created -> its consumer's first message ({RUNS} runs, {RATE:.0f} msg/s)")
    with tempfile.TemporaryDirectory() as tmp:
        for broker in ("rabbitmq", "jetstream"):
            runs = [await one_run(broker, Path(tmp)) for _ in range(RUNS)]
            views = [v * 1000 for v, _ in runs]
            firsts = [f * 1000 for _, f in runs]
            print(f"   {broker:9s} view has the key: median {statistics.median(views):6.1f} ms"
                  f" (max {max(views):6.1f});  first message: median"
                  f" {statistics.median(firsts):6.1f} ms (max {max(firsts):6.1f})")


if __name__ == "__main__":
    logging.getLogger("forklane").setLevel(logging.ERROR)  # forks at 127.0.0.1:9 never answer
    filter_cost()
    asyncio.run(delays())
