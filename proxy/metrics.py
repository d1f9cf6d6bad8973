"""Counters the request path bumps, and their Prometheus exposition.

The request path only does `list[i] += 1` and dict look-ups on plain Python objects: no locks,
no label resolution, no allocation per request. A `prometheus_client` collector turns them
into metric families when `/metrics` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["LATENCY_BOUNDS", "Stats", "render_prometheus"]

# Seconds. Dense below 10 ms: a sidecar hop should cost well under a millisecond.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# The bucket of every latency up to 100 ms at 0.1 ms steps, precomputed: the request path
# indexes a tuple instead of bisecting. Every bound below 100 ms is a whole number of steps,
# so `ceil(seconds / step)` lands exactly in the bucket `le=bound` (Prometheus: value <= le).
_STEP = 10_000.0  # steps per second
_FAST_LIMIT = 1000  # steps (100 ms)
_BUCKET_OF_STEP: tuple[int, ...] = tuple(
    bisect_left(LATENCY_BOUNDS, k / _STEP - 1e-12) for k in range(_FAST_LIMIT + 1)
)


class Stats:
    """All counters of one proxy process."""

    def __init__(self) -> None:
        # listener -> (service, kind) -> [count by status class]; rows owned by each listener
        self.listener_rows: dict[str, dict[str, list[int]]] = {}  # rows keyed "service\x1fkind"
        self.latency_buckets: list[int] = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.connections_open = 0
        self.connections_total = 0
        self.rejected: defaultdict[str, int] = defaultdict(int)  # malformed input by reason
        self.upstream_errors: defaultdict[str, int] = defaultdict(int)
        self.retries: defaultdict[str, int] = defaultdict(int)  # retried answers by status
        # Client connections reset at accept, by "listener<US>reason" (listener.overload).
        self.connections_refused: defaultdict[str, int] = defaultdict(int)
        self.memory_over: Callable[[], int] = lambda: 0  # 1 while above the watermark
        self.fork_fallbacks = 0
        self.key_conflicts = 0
        self.underscore_headers_dropped = 0
        self.destroyed_with_active_request = 0
        # Traffic capture: connections relayed untouched, by "listener<US>reason"; their bytes
        # by listener as [from client, from upstream]; captured connections refused as loops.
        self.relay_connections: defaultdict[str, int] = defaultdict(int)
        self.relay_bytes: dict[str, list[int]] = {}
        self.relays_open = 0
        self.capture_loops = 0
        self.mirror: defaultdict[str, int] = defaultdict(int)  # sent / failed / dropped
        self.keys_restored: defaultdict[str, int] = defaultdict(int)
        # Signed routing keys that did not verify, by reason (unsigned/bad-signature/expired).
        self.keys_rejected: defaultdict[str, int] = defaultdict(int)
        self.propagation_gaps: defaultdict[str, int] = defaultdict(int)
        self.seen_keys: set[str] = set()  # routing keys routed since the last activity report
        self.taps: list[Any] = []  # TapSinks of live-tap readers (admin /tap, control plane)
        self.config_reloads = 0
        self.config_version = ""
        self.reload_failures: Callable[[], int] = lambda: 0
        self.controlplane_connected: Callable[[], int | None] = lambda: None
        # The balancer's report (circuit breakers, ejected endpoints): plain data.
        self.upstream_health: Callable[[], dict[str, Any]] = dict

    def observe_latency(self, seconds: float) -> None:
        scaled = seconds * _STEP
        step = int(scaled)
        if step < scaled:
            step += 1  # ceil
        if 0 <= step <= _FAST_LIMIT:
            self.latency_buckets[_BUCKET_OF_STEP[step]] += 1
        else:
            self.latency_buckets[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1


class _Collector:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        s = self.stats
        req = CounterMetricFamily(
            "forklane_requests",
            "Requests answered, by listener, service, destination kind and status class",
            labels=["listener", "service", "kind", "status_class"],
        )
        rows = [
            (listener, service, kind, row)
            for listener, by_route in s.listener_rows.items()
            for key, row in by_route.items()
            for service, kind in (key.split("\x1f", 1),)
        ]
        for listener, service, kind, row in sorted(rows, key=lambda r: r[:3]):
            for cls, count in enumerate(row):
                if count:
                    label = f"{cls}xx" if cls else "reset"
                    req.add_metric([listener, service, kind, label], count)
        yield req
        buckets, running = [], 0
        for bound, count in zip(LATENCY_BOUNDS, s.latency_buckets, strict=False):
            running += count
            buckets.append((repr(bound), running))
        buckets.append(("+Inf", s.latency_count))
        hist = HistogramMetricFamily(
            "forklane_request_duration_seconds",
            "Time from request headers to the end of the response",
        )
        hist.add_metric([], buckets, s.latency_sum)
        yield hist
        yield GaugeMetricFamily(
            "forklane_downstream_connections", "Open client connections", value=s.connections_open
        )
        yield CounterMetricFamily(
            "forklane_downstream_connections", "Client connections accepted",
            value=s.connections_total,
        )
        for name, doc, mapping, label in (
            ("forklane_rejected_requests", "Requests answered locally as malformed", s.rejected,
             "reason"),
            ("forklane_upstream_errors", "Upstream failures by reason", s.upstream_errors,
             "reason"),
            ("forklane_mirror_requests", "Mirrored copies by result", s.mirror, "result"),
            ("forklane_upstream_retries", "Answers retried instead of passed on, by status",
             s.retries, "status"),
            ("forklane_routing_keys_restored", "Keys restored from the trace memory",
             s.keys_restored, "service"),
            ("forklane_routing_keys_rejected",
             "Requests whose routing key failed signature checks (sent to the baseline)",
             s.keys_rejected, "reason"),
            ("forklane_propagation_gap", "Outbound requests of a keyed trace that lost the key",
             s.propagation_gaps, "service"),
        ):
            fam = CounterMetricFamily(name, doc, labels=[label])
            for key, value in sorted(mapping.items()):
                fam.add_metric([key], value)
            yield fam
        for name, doc, value in (
            ("forklane_fork_fallbacks", "Fork requests sent to baseline by fallback",
             s.fork_fallbacks),
            ("forklane_routing_key_conflicts", "Requests whose carriers disagreed on the key",
             s.key_conflicts),
            ("forklane_underscore_headers_dropped",
             "Headers like ours spelled with underscores, dropped", s.underscore_headers_dropped),
            ("forklane_downstream_destroyed_with_active_request",
             "Client connections closed while a request was in flight",
             s.destroyed_with_active_request),
            ("forklane_config_reloads", "Routing tables installed", s.config_reloads),
            ("forklane_config_reload_failures", "Routing configs rejected",
             s.reload_failures()),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield from _relay_families(s)
        yield from _upstream_families(s)
        yield from _overload_families(s)
        info = GaugeMetricFamily(
            "forklane_config_version", "The routing table in use (value 1)", labels=["version"]
        )
        info.add_metric([s.config_version], 1)
        yield info
        connected = s.controlplane_connected()
        if connected is not None:
            yield GaugeMetricFamily(
                "forklane_controlplane_connected",
                "1 while the control-plane stream is up",
                value=connected,
            )


def _overload_families(s: Stats) -> Iterator[object]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    refused = CounterMetricFamily(
        "forklane_downstream_connections_refused",
        "Client connections reset at accept, by listener and reason (listener-cap, total-cap, "
        "memory)", labels=["listener", "reason"],
    )
    for key, value in sorted(s.connections_refused.items()):
        listener, reason = key.split("\x1f", 1)
        refused.add_metric([listener, reason], value)
    yield refused
    yield GaugeMetricFamily("forklane_memory_overloaded",
                            "1 while resident memory is above the watermark",
                            value=s.memory_over())


def _upstream_families(s: Stats) -> Iterator[object]:
    """Circuit breakers per destination and passive health (the balancer's report)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    report = s.upstream_health()
    circuits: dict[str, dict[str, Any]] = report.get("circuits", {})
    gauges = {
        "requests": GaugeMetricFamily("forklane_circuit_requests_active",
                                      "Requests in flight per destination",
                                      labels=["destination"]),
        "pending": GaugeMetricFamily("forklane_circuit_requests_pending",
                                     "Requests waiting for a new upstream connection",
                                     labels=["destination"]),
        "retries": GaugeMetricFamily("forklane_circuit_retries_active",
                                     "Requests in flight that are retrying",
                                     labels=["destination"]),
    }
    tripped = GaugeMetricFamily("forklane_circuit_open",
                                "1 while a circuit breaker of the destination is at its limit",
                                labels=["destination"])
    overflows = CounterMetricFamily("forklane_circuit_overflows",
                                    "Requests refused (or retries not made) by a circuit breaker",
                                    labels=["destination", "limit"])
    for name, c in circuits.items():
        for key, family in gauges.items():
            family.add_metric([name], c[key])
        tripped.add_metric([name], 1 if c["open"] else 0)
        for limit, value in sorted(c["overflows"].items()):
            overflows.add_metric([name, limit], value)
    yield from gauges.values()
    yield tripped
    yield overflows
    ejected = GaugeMetricFamily("forklane_outlier_ejected",
                                "1 for each endpoint ejected by passive health now",
                                labels=["endpoint"])
    for address in report.get("ejected", {}):
        ejected.add_metric([address], 1)
    yield ejected
    yield CounterMetricFamily("forklane_outlier_ejections", "Endpoint ejections so far",
                              value=report.get("ejections_total", 0))
    rows: list[dict[str, Any]] = report.get("health", [])
    if not rows:
        return  # no active health check configured: no families either
    healthy = GaugeMetricFamily("forklane_upstream_health_healthy",
                                "1 while the endpoint passes its active health check",
                                labels=["endpoint", "check"])
    checks = CounterMetricFamily("forklane_upstream_health_checks",
                                 "Active health probes made, by result",
                                 labels=["endpoint", "check", "result"])
    for row in rows:
        labels = [row["endpoint"], row["check"]]
        healthy.add_metric(labels, 1 if row["healthy"] else 0)
        checks.add_metric([*labels, "passed"], row["checks"] - row["failed_checks"])
        checks.add_metric([*labels, "failed"], row["failed_checks"])
    yield healthy
    yield checks


def _relay_families(s: Stats) -> Iterator[object]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    conns = CounterMetricFamily(
        "forklane_relay_connections",
        "Captured connections passed through untouched, by listener and why they were not routed",
        labels=["listener", "reason"],
    )
    for key, value in sorted(s.relay_connections.items()):
        listener, reason = key.split("\x1f", 1)
        conns.add_metric([listener, reason], value)
    yield conns
    relayed = CounterMetricFamily(
        "forklane_relay_bytes", "Bytes passed through relays, by listener and direction",
        labels=["listener", "direction"],
    )
    for listener, (sent, received) in sorted(s.relay_bytes.items()):
        relayed.add_metric([listener, "upstream"], sent)
        relayed.add_metric([listener, "downstream"], received)
    yield relayed
    yield GaugeMetricFamily("forklane_relay_connections_open", "Relays in progress",
                            value=s.relays_open)
    yield CounterMetricFamily(
        "forklane_capture_loops_refused",
        "Captured connections refused because the sidecar itself opened them (wrong proxy UID)",
        value=s.capture_loops,
    )


def render_prometheus(stats: Stats) -> tuple[bytes, str]:
    """The text exposition of every counter and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
