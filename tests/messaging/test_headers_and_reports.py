"""Producer headers, the handler's restored context, delivery reports, and import costs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from forklane.messaging import (
    Delivery,
    DeliveryFeed,
    RoutesView,
    RunsAs,
    StaticRoutes,
    context_for_message,
    producer_headers,
)
from forklane.messaging._consumer import Judge
from forklane.messaging.rabbitmq import message_headers
from forklane.messaging.routes import load_view, save_view
from forklane.propagation import RoutingContext, context_from_headers, routing_context


def test_producer_headers_are_the_http_carriers_and_keep_foreign_baggage() -> None:
    incoming = context_from_headers({"x-forklane-routing-key": "alice",
                                     "baggage": "team=pay;p=1, forklane-routing-key=alice",
                                     "uberctx-sd-routing-key": "alice"})  # fmt: skip
    with routing_context(incoming):
        out = producer_headers(present={"Baggage": "user=7"})
    assert out["x-forklane-routing-key"] == "alice"
    assert out["baggage"] == "forklane-routing-key=alice,user=7"
    assert out["uberctx-sd-routing-key"] == "alice"
    assert producer_headers() == {}  # no current request: nothing is added
    with routing_context("bob"):
        own = message_headers({"x-forklane-routing-key": "explicit", "n": 1})
    assert own["x-forklane-routing-key"] == "explicit" and own["n"] == 1  # the app's choice wins


def test_the_handler_context_forwards_the_key_read_by_the_verdict() -> None:
    ctx = context_for_message({"baggage": "forklane-routing-key=alice"}, "alice")
    assert ctx.key == "alice" and ctx.headers["x-forklane-routing-key"] == "alice"
    none = context_for_message({"x-forklane-routing-key": "a", "baggage": "forklane-routing-key=b"},
                               None)  # fmt: skip
    assert none.key is None and "x-forklane-routing-key" not in none.headers
    assert isinstance(none, RoutingContext)


def _delivery(i: int) -> Delivery:
    return Delivery(float(i), "rabbitmq", "q", "billing", "baseline", "taken", "baseline",
                    None, None, "no-key", "3", str(i))  # fmt: skip


def test_prometheus_counts_takes_and_skips_by_side_and_reason() -> None:
    from forklane.messaging import prometheus_reporter

    registry = CollectorRegistry()
    judge = Judge(RunsAs("billing", "alice-sb"), StaticRoutes(RoutesView("billing", {"k": "alice-sb"})),
                  "jetstream", [prometheus_reporter(registry)])  # fmt: skip
    for headers in ({"x-forklane-routing-key": "k"}, {}, {}):
        verdict = judge.judge(headers)
        judge.report(verdict, "taken" if verdict.take else "handed-on", "orders.created")
    text = generate_latest(registry).decode()
    assert ('forklane_messages_total{broker="jetstream",outcome="taken",reason="forked",'
            'service="billing",side="alice-sb"} 1.0') in text
    assert ('forklane_messages_total{broker="jetstream",outcome="handed-on",reason="no-key",'
            'service="billing",side="alice-sb"} 2.0') in text


def test_a_slow_feed_reader_loses_the_oldest_entries_counted_never_blocking() -> None:
    feed = DeliveryFeed(size=3, queue_size=2)
    queue = feed.subscribe()
    for i in range(5):
        feed(_delivery(i))
    assert [d.message_id for d in feed.recent] == ["2", "3", "4"]
    assert feed.dropped == 3
    assert [queue.get_nowait().message_id for _ in range(2)] == ["3", "4"]
    assert json.loads(json.dumps(feed.recent[0].as_json()))["reason"] == "no-key"


def test_a_reporter_that_raises_does_not_stop_consumption() -> None:
    def broken(_d: Delivery) -> None:
        raise RuntimeError("boom")

    judge = Judge(RunsAs("billing"), StaticRoutes(RoutesView("billing")), "nats", [broken])
    judge.report(judge.judge({}), "taken", "s")  # logged, not raised


def test_the_cached_view_survives_a_restart_and_a_bad_cache_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "billing.json"
    view = RoutesView("billing", {"k": "alice-sb"}, version="12")
    save_view(path, view)
    assert load_view(path, "billing") == view
    assert load_view(path, "orders") is None  # another service's cache is not this one's
    path.write_text("{not json")
    assert load_view(path, "billing") is None
    assert [p.name for p in path.parent.iterdir()] == ["billing.json"]  # no temporary left


def test_importing_forklane_messaging_loads_no_broker_client() -> None:
    code = ("import sys, forklane.messaging; print(sorted(m for m in sys.modules if "
            "m.split('.')[0] in ('nats', 'aio_pika', 'aiormq', 'aiokafka', 'prometheus_client')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
