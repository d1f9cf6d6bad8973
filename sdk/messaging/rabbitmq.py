"""RabbitMQ (AMQP 0-9-1, aio-pika): the key in message headers, and a queue per sandbox.

Producers: `publish()` (or `message_headers()` for a message you build) puts the current
routing key into the AMQP headers table, in the same carriers as HTTP.

Consumers: `RabbitConsumer` runs as the baseline's consumer of a queue or as a sandbox's fork
of it. The baseline consumes the application's queue as before; each fork consumes its own
durable queue, `<queue>.forklane.<sandbox>`. Every message is judged once where it is read:
- a message that belongs to this side is handled and acknowledged;
- any other is *handed on*: published to its owner's queue (the baseline's queue, or that
  sandbox's queue) on the default exchange with publisher confirms, then acknowledged.
So a message the baseline does not take reaches the fork's queue, and a fork's queue hands
messages back to the baseline once the sandbox is gone. A message that keeps moving because
two consumers' views disagree is taken after `MAX_HOPS` moves (`x-death` counts as a move).

A fork's queue is declared with `x-dead-letter-exchange: ""`, `x-dead-letter-routing-key:
<queue>` and `x-message-ttl` (`fork_backlog_ttl`, default one hour): a message left in the
queue of a fork whose consumer is gone goes back to the baseline's queue after that time.
Every consumer of one queue must use the same `fork_backlog_ttl` (RabbitMQ refuses to
re-declare a queue with other arguments).

Guarantees: at-least-once (a crash between the hand-on's confirm and the acknowledgement
leaves a duplicate); order is kept per side for messages that do not change owner, because one
consumer handles one message at a time in delivery order (aio-pika would otherwise run a task
per prefetched message); `ordered=False` lets up to `prefetch` run at once. The application
declares its own queue and bindings, as before; forklane declares only the forks' queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    DeliveryMode,
)

from forklane.messaging._consumer import Judge, ViewSource, hops_of, text_headers
from forklane.messaging.headers import HOPS_HEADER, producer_headers
from forklane.messaging.report import Reporter
from forklane.messaging.rule import RunsAs
from forklane.propagation import RoutingContext

__all__ = ["RabbitConsumer", "fork_queue_name", "message_headers", "publish"]

log = logging.getLogger("forklane.messaging.rabbitmq")
Handler = Callable[[AbstractIncomingMessage], Awaitable[object]]


def fork_queue_name(queue: str, sandbox: str) -> str:
    """The durable queue a sandbox's fork consumes instead of `queue`."""
    return f"{queue}.forklane.{sandbox}"


def message_headers(
    headers: Mapping[str, Any] | None = None, ctx: RoutingContext | None = None
) -> dict[str, Any]:
    """`headers` plus the routing carriers of `ctx` (default: the current context)."""
    own = dict(headers or {})
    text = {k: v for k, v in own.items() if isinstance(v, str)}
    return {**own, **producer_headers(ctx, text)}


async def publish(
    exchange: AbstractExchange, body: bytes, routing_key: str, *,
    headers: Mapping[str, Any] | None = None, **message: Any,
) -> None:
    """Publish a persistent message carrying the current routing key."""
    message.setdefault("delivery_mode", DeliveryMode.PERSISTENT)
    await exchange.publish(aio_pika.Message(body, headers=message_headers(headers), **message),
                           routing_key=routing_key)  # fmt: skip


def _moves(message: AbstractIncomingMessage) -> int:
    """Dead-letterings count as moves (a TTL expiry took it back to the baseline)."""
    deaths = (message.headers or {}).get("x-death")
    if not isinstance(deaths, list):
        return 0
    total = 0
    for death in deaths:
        count = death.get("count", 1) if isinstance(death, dict) else 0
        total += count if isinstance(count, int) else 1
    return total


class RabbitConsumer:
    """Consume `queue` as `runs_as`; see the module docstring."""

    def __init__(
        self, channel: AbstractChannel, queue: str, runs_as: RunsAs, routes: ViewSource,
        handler: Handler, *, reporters: Iterable[Reporter] = (), prefetch: int = 32,
        fork_backlog_ttl: float | None = 3600.0, requeue_on_error: bool = False,
        ordered: bool = True,
    ) -> None:
        self._channel = channel
        self.queue = queue
        self.judge = Judge(runs_as, routes, "rabbitmq", reporters)
        self._handler = handler
        self._prefetch = prefetch
        self._ttl = fork_backlog_ttl
        self._requeue = requeue_on_error
        self._declared: set[str] = set()
        self._consuming: tuple[AbstractQueue, str] | None = None
        self._one_at_a_time: asyncio.Lock | None = asyncio.Lock() if ordered else None

    @property
    def queue_name(self) -> str:
        sandbox = self.judge.runs_as.sandbox
        return self.queue if sandbox is None else fork_queue_name(self.queue, sandbox)

    async def declare_fork_queue(self, sandbox: str) -> AbstractQueue:
        name = fork_queue_name(self.queue, sandbox)
        args: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.queue}
        if self._ttl is not None:
            args["x-message-ttl"] = int(self._ttl * 1000)
        declared = await self._channel.declare_queue(name, durable=True, arguments=args)
        self._declared.add(name)
        return declared

    async def start(self) -> None:
        await self._channel.set_qos(prefetch_count=self._prefetch)
        sandbox = self.judge.runs_as.sandbox
        if sandbox is None:
            queue = await self._channel.get_queue(self.queue, ensure=True)
        else:
            queue = await self.declare_fork_queue(sandbox)
        tag = await queue.consume(self._on_message)
        self._consuming = (queue, tag)

    async def aclose(self) -> None:
        if self._consuming is not None:
            queue, tag = self._consuming
            self._consuming = None
            await queue.cancel(tag)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # tasks start in delivery order and the lock is FIFO, so handling keeps that order
        async with self._one_at_a_time or contextlib.nullcontext():
            await self._judge_and_act(message)

    async def _judge_and_act(self, message: AbstractIncomingMessage) -> None:
        headers = text_headers((message.headers or {}).items())
        verdict = self.judge.judge(headers, _moves(message))
        source = message.routing_key or self.queue_name
        if verdict.take:
            self.judge.report(verdict, "taken", source, message.message_id)
            try:
                await Judge.run(self._handler, message, headers, verdict)
            except Exception:
                log.exception("handler failed for a message from %s", self.queue_name)
                await message.reject(requeue=self._requeue)
                return
            await message.ack()
            return
        target = self.queue if verdict.owner is None else fork_queue_name(self.queue, verdict.owner)
        if verdict.owner is not None and target not in self._declared:
            await self.declare_fork_queue(verdict.owner)
        moved = dict(message.headers or {})
        moved[HOPS_HEADER] = str(hops_of(headers) + 1)
        await self._channel.default_exchange.publish(
            aio_pika.Message(
                message.body, headers=moved, delivery_mode=DeliveryMode.PERSISTENT,
                content_type=message.content_type, content_encoding=message.content_encoding,
                message_id=message.message_id, correlation_id=message.correlation_id,
                timestamp=message.timestamp, type=message.type, app_id=message.app_id,
            ),
            routing_key=target,
        )
        await message.ack()
        self.judge.report(verdict, "handed-on", source, message.message_id)
