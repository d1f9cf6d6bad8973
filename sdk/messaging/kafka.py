"""Kafka (aiokafka): the key in record headers; a consumer group per sandbox, take-or-skip.

Producers: `record_headers()` gives the `headers=` list for `AIOKafkaProducer.send()`
(`[(name, bytes)]`, UTF-8), with the current routing key in the same carriers as HTTP.

Consumers: `KafkaConsumer` wraps an `AIOKafkaConsumer` whose group is `group_id(base,
runs_as)`: the baseline keeps the application's group, each fork reads the same topics in
its own group `<base>.forklane.<sandbox>`, so every side sees every record and takes only its
own; offsets are committed for skipped records too (acknowledge-and-skip). Start a fork's group
with `auto_offset_reset="earliest"`: a routing key is new with its sandbox, so a fork reading
from the start of retention, once its view has the key, misses none of its records. After the
sandbox is deleted the fork keeps taking its key's records for `grace` seconds (default 60):
those the baseline skipped while its view still had the key. Records with that key read by both sides in that window are
taken twice (at-least-once; reported with reason `grace`).

No Kafka broker runs where forklane is tested: this module is tested against aiokafka's own
record and header types, not a live cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from forklane.messaging._consumer import Judge, ViewSource, text_headers
from forklane.messaging.headers import producer_headers
from forklane.messaging.report import Reporter
from forklane.messaging.rule import RunsAs, Verdict
from forklane.propagation import RoutingContext

__all__ = ["KafkaConsumer", "group_id", "headers_of", "record_headers"]

log = logging.getLogger("forklane.messaging.kafka")


Record: TypeAlias = ConsumerRecord  # aiokafka ships no type hints: Any to mypy
Handler = Callable[[Record], Awaitable[object]]


def group_id(base: str, runs_as: RunsAs) -> str:
    """The consumer group of this side: `base` for the baseline, `<base>.forklane.<sandbox>`."""
    return base if runs_as.sandbox is None else f"{base}.forklane.{runs_as.sandbox}"


def record_headers(
    headers: Iterable[tuple[str, bytes]] = (), ctx: RoutingContext | None = None
) -> list[tuple[str, bytes]]:
    """`headers` plus the routing carriers of `ctx` (default: the current context)."""
    own = list(headers)
    present = text_headers(own)
    added = producer_headers(ctx, present)
    kept = [(n, v) for n, v in own if not (n.lower() == "baggage" and "baggage" in added)]
    return kept + [(name, value.encode()) for name, value in added.items()]


def headers_of(record: Record) -> dict[str, str]:
    """A record's headers as lowercase text (repeated names joined; non-UTF-8 left out)."""
    return text_headers(record.headers or ())


class KafkaConsumer:
    """Judge each record of `consumer` as `runs_as`; run `handler` on the ones it takes."""

    def __init__(self, consumer: AIOKafkaConsumer, runs_as: RunsAs, routes: ViewSource,
                 handler: Handler, *, reporters: Iterable[Reporter] = (),
                 grace: float = 60.0) -> None:  # fmt: skip
        self._consumer = consumer
        self.judge = Judge(runs_as, routes, "kafka", reporters, grace=grace)
        self._handler = handler

    async def process(self, record: Record) -> Verdict:
        """Judge one record and handle it when it is this side's; returns the verdict."""
        headers = headers_of(record)
        verdict = self.judge.judge(headers)
        msg_id = f"{record.topic}/{record.partition}/{record.offset}"
        if not verdict.take:
            self.judge.report(verdict, "skipped", record.topic, msg_id)
            return verdict
        self.judge.report(verdict, "taken", record.topic, msg_id)
        await Judge.run(self._handler, record, headers, verdict)
        return verdict

    async def run(self) -> None:
        """Consume until cancelled, committing after each record (taken or skipped)."""
        async for record in self._consumer:
            try:
                await self.process(record)
            except Exception:
                log.exception("handler failed for %s/%s/%s", record.topic, record.partition,
                              record.offset)  # fmt: skip
            await self._consumer.commit()
