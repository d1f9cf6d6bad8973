"""What consumers tell about each message: taken, handed on to its owner, or skipped.

Every verdict becomes one `Delivery` value, handed to the reporters the consumer was given.
Three come with the SDK:

- `DeliveryCounts`: plain in-process counters (always available, no dependency);
- `prometheus_reporter()`: `forklane_messages_total{service,side,broker,outcome,reason}`;
  prometheus-client is imported only when this is called, so a service without it is not
  forced to install it (pass any callable instead);
- `DeliveryFeed`: a bounded ring of recent deliveries plus bounded subscriber queues, the
  shape a live tap reads (a slow reader loses the oldest entries and the loss is counted; the
  consumer never waits for a reader).

A `Delivery` has the fields a tap line shows beside requests: time, broker, source (subject,
queue or topic), service, side, outcome, owner, routing key, carrier, rule, view version.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "Delivery",
    "DeliveryCounts",
    "DeliveryFeed",
    "Outcome",
    "Reporter",
    "prometheus_reporter",
]

Outcome = Literal["taken", "handed-on", "skipped"]


@dataclass(frozen=True, slots=True)
class Delivery:
    time: float  # seconds since the epoch, when the verdict was made
    broker: str  # "nats" | "jetstream" | "rabbitmq" | "kafka"
    source: str  # the subject, queue or topic the message came from
    service: str
    side: str  # "baseline" or the sandbox this consumer runs as
    outcome: Outcome
    owner: str  # the side the message belongs to
    routing_key: str | None
    carrier: str | None
    reason: str  # the rule: forked | not-forked | no-key | conflict | hop-limit
    view_version: str
    message_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


Reporter = Callable[[Delivery], None]


class DeliveryCounts:
    """Counts by (outcome, reason); `taken`, `handed_on` and `skipped` totals."""

    def __init__(self) -> None:
        self.by: collections.Counter[tuple[str, str]] = collections.Counter()

    def __call__(self, delivery: Delivery) -> None:
        self.by[(delivery.outcome, delivery.reason)] += 1

    def total(self, outcome: Outcome) -> int:
        return sum(n for (o, _), n in self.by.items() if o == outcome)


def prometheus_reporter(registry: Any = None) -> Reporter:
    """A reporter counting into prometheus-client (`registry` default: the global one)."""
    from prometheus_client import REGISTRY, Counter

    counter = Counter(
        "forklane_messages",
        "Messages judged by forklane consumers: taken, handed on to their owner, or skipped.",
        ["service", "side", "broker", "outcome", "reason"],
        registry=registry if registry is not None else REGISTRY,
    )

    def report(d: Delivery) -> None:
        counter.labels(d.service, d.side, d.broker, d.outcome, d.reason).inc()

    return report


class DeliveryFeed:
    """Recent deliveries for a live view: `recent` (a ring of `size`) and `subscribe()`.

    Subscribers get a bounded `asyncio.Queue`; when it is full the oldest entry is dropped and
    `dropped` counts it, so a slow reader never slows the consumer.
    """

    def __init__(self, size: int = 1000, queue_size: int = 1000) -> None:
        self.recent: collections.deque[Delivery] = collections.deque(maxlen=size)
        self._queues: list[asyncio.Queue[Delivery]] = []
        self._queue_size = queue_size
        self.dropped = 0

    def __call__(self, delivery: Delivery) -> None:
        self.recent.append(delivery)
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(delivery)

    def subscribe(self) -> asyncio.Queue[Delivery]:
        queue: asyncio.Queue[Delivery] = asyncio.Queue(self._queue_size)
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Delivery]) -> None:
        if queue in self._queues:
            self._queues.remove(queue)
