"""Kafka: header encoding and the consumer's logic, against aiokafka's own types.

No Kafka broker runs on the machines forklane is tested on: the headers go through aiokafka's
real record-batch encoder and decoder (the bytes a broker stores), and the consumer wrapper
reads aiokafka `ConsumerRecord`s from an async iterator that stands in for the broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord

from forklane.messaging import DeliveryCounts, RoutesView, RunsAs, StaticRoutes
from forklane.messaging.kafka import KafkaConsumer, group_id, headers_of, record_headers
from forklane.propagation import current_routing_key, routing_context

ROUTES = StaticRoutes(RoutesView("billing", {"alice": "alice-sb"}, version="7"))


def _through_the_wire(offset: int, headers: list[tuple[str, bytes]]) -> ConsumerRecord[Any, Any]:
    """Encode a record as a producer's batch does, decode it as a consumer does."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)  # fmt: skip
    builder.append(offset, timestamp=1_700_000_000_000, key=None, value=b"v", headers=headers)
    (record,) = list(DefaultRecordBatch(bytes(builder.build())))
    return ConsumerRecord("orders", 0, offset, record.timestamp, 0, None, record.value, None,
                          0, 1, list(record.headers))  # fmt: skip


def test_record_headers_carry_the_current_key_through_the_record_encoding() -> None:
    with routing_context("alice"):
        headers = record_headers([("trace", b"t1"), ("baggage", b"team=x")])
    record = _through_the_wire(0, headers)
    assert headers_of(record)["x-forklane-routing-key"] == "alice"
    assert headers_of(record)["baggage"] == "forklane-routing-key=alice,team=x"
    assert headers_of(record)["trace"] == "t1"
    assert record_headers([("trace", b"t1")]) == [("trace", b"t1")]  # no key: untouched


def test_group_ids_keep_the_baseline_group_and_give_each_fork_its_own() -> None:
    assert group_id("billing", RunsAs("billing")) == "billing"
    assert group_id("billing", RunsAs("billing", "alice-sb")) == "billing.forklane.alice-sb"


class Consumer:
    """The part of `AIOKafkaConsumer` the wrapper uses: iteration and commit."""

    def __init__(self, records: list[ConsumerRecord[Any, Any]]) -> None:
        self.records = records
        self.commits = 0

    def __aiter__(self) -> AsyncIterator[ConsumerRecord[Any, Any]]:
        async def gen() -> AsyncIterator[ConsumerRecord[Any, Any]]:
            for r in self.records:
                yield r
        return gen()

    async def commit(self) -> None:
        self.commits += 1


async def test_each_side_takes_only_its_records_and_commits_every_one() -> None:
    records = []
    for offset, key in enumerate(["alice", None, "bob", "alice"]):
        if key is None:
            records.append(_through_the_wire(offset, []))
        else:
            with routing_context(key):
                records.append(_through_the_wire(offset, record_headers()))
    taken: dict[str, list[tuple[int, str | None]]] = {"baseline": [], "alice-sb": []}
    for side in (None, "alice-sb"):
        name = side or "baseline"

        async def handle(record: Any, name: str = name) -> None:
            taken[name].append((record.offset, current_routing_key()))

        counts = DeliveryCounts()
        source = Consumer(records)
        consumer = KafkaConsumer(source, RunsAs("billing", side), ROUTES, handle,  # type: ignore[arg-type]
                                 reporters=[counts])  # fmt: skip
        await consumer.run()
        assert source.commits == 4  # skipped records are acknowledged too
        assert counts.total("taken") + counts.total("skipped") == 4
    assert taken["alice-sb"] == [(0, "alice"), (3, "alice")]
    assert taken["baseline"] == [(1, None), (2, "bob")]  # bob's key goes on with the handler


async def test_a_record_with_headers_that_are_not_text_is_the_baselines() -> None:
    record = _through_the_wire(0, [("x-forklane-routing-key", b"\xff\xfe")])
    consumer = KafkaConsumer(Consumer([]), RunsAs("billing"), ROUTES, _never)  # type: ignore[arg-type]
    handled = KafkaConsumer(Consumer([]), RunsAs("billing", "alice-sb"), ROUTES, _never)  # type: ignore[arg-type]
    assert (await handled.process(record)).take is False
    assert (consumer.judge.judge(headers_of(record))).reason == "no-key"


async def _never(record: Any) -> None:
    raise AssertionError("must not be handled")


class MutableRoutes:
    def __init__(self, view: RoutesView) -> None:
        self.view = view


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_after_deletion_a_take_or_skip_fork_keeps_its_keys_for_the_grace_period() -> None:
    from forklane.messaging._consumer import Judge

    routes = MutableRoutes(RoutesView("billing", {"alice": "alice-sb", "bob": "bob-sb"}))
    clock = Clock()
    fork = Judge(RunsAs("billing", "alice-sb"), routes, "kafka", grace=60, clock=clock)
    alice = {"x-forklane-routing-key": "alice"}
    assert fork.judge(alice).reason == "forked"
    routes.view = RoutesView("billing", {"bob": "bob-sb"})  # alice's sandbox is deleted
    late = fork.judge(alice)  # grace counts from when the fork first judges with the new view
    assert (late.take, late.reason) == (True, "grace")
    assert fork.judge({"x-forklane-routing-key": "bob"}).take is False  # never alice's
    assert fork.judge({}).take is False
    clock.now += 59
    assert fork.judge(alice).reason == "grace"
    clock.now += 2
    assert fork.judge(alice).take is False  # grace over: the baseline's now
    baseline = Judge(RunsAs("billing"), routes, "kafka", grace=60, clock=clock)
    assert baseline.judge(alice).take is True
