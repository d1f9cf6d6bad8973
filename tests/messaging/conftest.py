"""Real brokers (NATS with JetStream, RabbitMQ) and a real control plane for the messaging tests.

Each test gets unique names (exchange, queue, stream, subject, service, sandbox) so runs never
see each other's messages, and removes what it made. A broker that does not answer on its
loopback port skips its tests with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from forklane import AsyncClient
from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from forklane.messaging import Reporter, RoutesWatcher, RunsAs, ViewSource
from forklane.propagation import routing_context

ADMIN = "admin-token-for-messaging-tests-0123"
NATS_URL = "nats://127.0.0.1:4222"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@dataclass
class Plane:
    """An in-process control plane (API and reconciler) and an admin SDK client."""

    plane: ControlPlane
    url: str
    admin: AsyncClient
    made: list[AsyncClient] = field(default_factory=list)

    async def service(self, name: str) -> None:
        await self.admin.services.create(
            {"metadata": {"name": name}, "spec": {"endpoints": ["127.0.0.1:9"]}})

    async def sandbox(self, name: str, key: str, service: str) -> None:
        await self.admin.sandboxes.create({"metadata": {"name": name}, "spec": {
            "routingKey": key, "forks": [{"service": service, "endpoints": ["127.0.0.1:9"]}]}})

    async def consumer_client(self) -> AsyncClient:
        doc = await self.admin.call("POST", "/api/v1/tokens",
                                    {"subject": "worker", "role": "consumer"})
        client = AsyncClient(self.url, doc["token"], timeout=5.0)
        self.made.append(client)
        return client


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    settings = Settings(listen="127.0.0.1:0", store="sqlite", data_dir=tmp_path / "cp",
                        admin_token=ADMIN, reconcile_interval=2.0, probe_timeout=0.2,
                        replica="test")  # fmt: skip
    cp = ControlPlane(settings, with_push=False)
    await cp.start()
    assert cp.api_address is not None
    url = f"http://127.0.0.1:{cp.api_address[1]}"
    admin = AsyncClient(url, ADMIN, timeout=5.0)
    made = Plane(cp, url, admin)
    try:
        yield made
    finally:
        for client in (admin, *made.made):
            await client.aclose()
        await cp.aclose()


class Started(Protocol):
    async def aclose(self) -> None: ...


Handler = Callable[[str, Any], Awaitable[None]]  # (message id, the broker's message)


class Broker(Protocol):
    """What a ledger test needs of a broker: publish one id, consume as a side, tell drained."""

    name: str
    service: str

    async def publish(self, msg_id: str) -> None: ...

    async def consumer(self, runs_as: RunsAs, routes: ViewSource, handler: Handler,
                       reporters: tuple[Reporter, ...] = ()) -> Started: ...

    async def drained(self) -> bool: ...


@dataclass
class Rabbit:
    name = "rabbitmq"
    service: str
    connection: Any
    exchange: Any
    queue: str
    channels: list[Any] = field(default_factory=list)
    queues: set[str] = field(default_factory=set)

    async def publish(self, msg_id: str) -> None:
        from forklane.messaging import rabbitmq

        await rabbitmq.publish(self.exchange, msg_id.encode(), "orders", message_id=msg_id)

    async def consumer(self, runs_as: RunsAs, routes: ViewSource, handler: Handler,
                       reporters: tuple[Reporter, ...] = (), **kw: Any) -> Started:
        from forklane.messaging import rabbitmq

        channel = await self.connection.channel()
        self.channels.append(channel)

        async def on_message(message: Any) -> None:
            await handler(message.body.decode(), message)

        consumer = rabbitmq.RabbitConsumer(channel, self.queue, runs_as, routes, on_message,
                                           reporters=reporters, **kw)  # fmt: skip
        await consumer.start()
        if runs_as.sandbox is not None:
            self.queues.add(consumer.queue_name)
        return consumer

    async def depth(self, name: str) -> int:
        channel = await self.connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            return int(queue.declaration_result.message_count)
        finally:
            await channel.close()

    async def drained(self) -> bool:
        for name in (self.queue, *self.queues):
            if await self.depth(name):
                return False
        return True


@pytest.fixture
async def rabbit() -> AsyncIterator[Rabbit]:
    if not _answers(5672):
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672 (guest/guest)")
    import aio_pika

    tag = uuid.uuid4().hex[:10]
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(f"orders-{tag}", aio_pika.ExchangeType.DIRECT,
                                              auto_delete=False)  # fmt: skip
    queue = await channel.declare_queue(f"billing-{tag}", durable=True)
    await queue.bind(exchange, "orders")
    broker = Rabbit(f"billing-{tag}", connection, exchange, queue.name)
    try:
        yield broker
    finally:
        for ch in broker.channels:
            with contextlib.suppress(Exception):
                await ch.close()
        for name in (queue.name, *broker.queues):
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        with contextlib.suppress(Exception):
            await exchange.delete()
        await connection.close()


@dataclass
class Jet:
    name = "jetstream"
    service: str
    nc: Any
    js: Any
    stream: str
    subject: str
    durable: str
    durables: set[tuple[str, str]] = field(default_factory=set)

    async def publish(self, msg_id: str) -> None:
        from forklane.messaging import nats

        await nats.publish(self.js, self.subject, msg_id.encode())

    async def consumer(self, runs_as: RunsAs, routes: ViewSource, handler: Handler,
                       reporters: tuple[Reporter, ...] = (), **kw: Any) -> Started:
        from forklane.messaging import nats

        async def on_message(msg: Any) -> None:
            await handler(msg.data.decode(), msg)

        consumer = nats.JetStreamConsumer(self.js, self.stream, self.subject, self.durable,
                                          runs_as, routes, on_message, reporters=reporters,
                                          fetch_timeout=0.2, **kw)  # fmt: skip
        await consumer.start()
        side = runs_as.sandbox or "baseline"
        self.durables.add((nats.ROUTES_STREAM, f"{self.durable}_forklane_{side}"))
        if runs_as.sandbox is None:
            self.durables.add((self.stream, self.durable))
        return consumer

    async def drained(self) -> bool:
        for stream, durable in self.durables:
            info = await self.js.consumer_info(stream, durable)
            if info.num_pending or info.num_ack_pending:
                return False
        return True


@pytest.fixture
async def jet() -> AsyncIterator[Jet]:
    if not _answers(4222):
        pytest.skip("NATS is not reachable on 127.0.0.1:4222")
    import nats as nats_client
    from nats.js.errors import NotFoundError

    tag = uuid.uuid4().hex[:10]
    nc = await nats_client.connect(NATS_URL)
    js = nc.jetstream()
    try:
        await js.account_info()
    except Exception:
        await nc.close()
        pytest.skip("NATS on 127.0.0.1:4222 runs without JetStream (start it with -js)")
    stream = f"ORDERS_{tag}"
    await js.add_stream(name=stream, subjects=[f"orders{tag}.>"])
    broker = Jet(f"billing-{tag}", nc, js, stream, f"orders{tag}.created", f"billing_{tag}")
    try:
        yield broker
    finally:
        for stream_name, durable in broker.durables:
            with contextlib.suppress(NotFoundError, Exception):
                await js.delete_consumer(stream_name, durable)
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.close()


@pytest.fixture(params=["rabbitmq", "jetstream"])
def broker(request: pytest.FixtureRequest) -> Broker:
    made: Broker = request.getfixturevalue("rabbit" if request.param == "rabbitmq" else "jet")
    return made


@dataclass
class Ledger:
    """Who consumed which message id, in order; duplicates are kept to be counted."""

    entries: list[tuple[str, str]] = field(default_factory=list)  # (side, id)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, side: str, msg_id: str) -> None:
        self.entries.append((side, msg_id))
        self.changed.set()

    def sides(self, msg_id: str) -> list[str]:
        return [s for s, i in self.entries if i == msg_id]

    def ids(self) -> set[str]:
        return {i for _, i in self.entries}


async def publish_with_key(broker: Broker, msg_id: str, key: str | None) -> None:
    if key is None:
        await broker.publish(msg_id)
        return
    with routing_context(key):
        await broker.publish(msg_id)


async def watcher(plane: Plane, service: str, cache: Path | None = None) -> RoutesWatcher:
    client = await plane.consumer_client()
    routes = RoutesWatcher(service, client, cache_file=cache, backoff=(0.05, 0.5))
    await routes.start()
    assert await routes.wait_answered(10), "the routes view did not answer"
    return routes
