"""Messages keep the routing key, and a sandbox's consumer gets its own messages.

Producers put the current request's key into message headers (the carriers of HTTP);
consumers restore it for their handler and take only the messages that belong to them, by the
data plane's rule: a key that forks the consuming service belongs to that fork's consumer,
everything else to the baseline's. The control plane's routes view says which keys fork
which service (`RoutesWatcher` keeps it current and cached).

This package imports no broker client: `forklane.messaging.nats` (extra `forklane[nats]`),
`.rabbitmq` (`forklane[rabbitmq]`) and `.kafka` (`forklane[kafka]`) do, when used.
"""

from forklane.messaging._consumer import StaticRoutes, ViewSource
from forklane.messaging.carriers import DEFAULT_CARRIERS, Carrier, KeyReading, read_routing_key
from forklane.messaging.headers import context_for_message, producer_headers
from forklane.messaging.report import (
    Delivery,
    DeliveryCounts,
    DeliveryFeed,
    Reporter,
    prometheus_reporter,
)
from forklane.messaging.routes import RoutesWatcher
from forklane.messaging.rule import BASELINE, RoutesView, RunsAs, Verdict, decide

__all__ = [
    "BASELINE",
    "DEFAULT_CARRIERS",
    "Carrier",
    "Delivery",
    "DeliveryCounts",
    "DeliveryFeed",
    "KeyReading",
    "Reporter",
    "RoutesView",
    "RoutesWatcher",
    "RunsAs",
    "StaticRoutes",
    "Verdict",
    "ViewSource",
    "context_for_message",
    "decide",
    "producer_headers",
    "prometheus_reporter",
    "read_routing_key",
]
