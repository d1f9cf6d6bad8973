"""Per-request propagation hooks: trace repair, propagation-gap counting and tracing.

The data plane calls one hook right after `decide()` when `ListenerContext.hooks` is set;
with every feature off, `hooks` is None and the request path pays one attribute check.

What the hook does, by listener (one sidecar's inbound and outbound listeners share one
`PropagationState`, so what the inbound side learns the outbound side can use):
- inbound: a request with a routing key and a valid `traceparent` → remember
  trace-id → key (bounded, TTL'd memory, O(1));
- outbound: a request with a valid `traceparent`, no key (and no conflict) whose trace is
  remembered → with repair on, decide again with the key and forward it in every emitting
  carrier (`keys_restored[service]`); with repair off, count `propagation_gaps[service]`,
  where `service` is this sidecar's service: the hop whose app dropped the key;
- tracing: start the request's span (see `proxy.tracing`).

Invariants: a key already present is never overridden, and carriers that disagree are never
"repaired" (the conflict stands and the request goes to the baseline); a restored key is
reported with carrier `trace-memory` (explanation header, access log, span); this module does
no I/O on the request path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from forklane.proxy.context.carriers import KeyResult, extract_trace_id, inject_routing_key
from forklane.proxy.context.repair import TraceKeyMemory
from forklane.proxy.metrics import Stats
from forklane.proxy.routing import Decision, ListenerKind, RequestView, decide
from forklane.proxy.settings import ProxySettings
from forklane.proxy.table import RoutingTable

if TYPE_CHECKING:
    from forklane.proxy.tracing import ProxySpan, ProxyTracer

__all__ = ["RESTORED_CARRIER", "PropagationState", "RequestHooks"]

# How a restored key's origin is reported (explanation header, access log, span).
RESTORED_CARRIER = "trace-memory"
_TRACEPARENT = "traceparent"


class PropagationState:
    """What the listeners of one proxy process share: the trace memory and the tracer."""

    def __init__(
        self,
        settings: ProxySettings,
        stats: Stats,
        *,
        clock: Callable[[], float] = time.monotonic,
        tracer: ProxyTracer | None = None,
    ) -> None:
        self.repair = settings.trace_repair
        self.gaps = settings.trace_gaps
        self.service = settings.service or "-"
        self.stats = stats
        self.memory: TraceKeyMemory | None = None
        if self.repair or self.gaps:
            self.memory = TraceKeyMemory(
                max_entries=settings.trace_memory_size,
                ttl=settings.trace_memory_ttl,
                clock=clock,
            )
        if tracer is None and settings.tracing:
            from forklane.proxy.tracing import ProxyTracer

            tracer = ProxyTracer(settings.service)
        self.tracer = tracer

    def hooks_for(self, listener: ListenerKind) -> RequestHooks | None:
        """The listener's hook, or None when no feature is on (then nothing runs per request)."""
        if self.memory is None and self.tracer is None:
            return None
        return RequestHooks(listener, self)

    def shutdown(self) -> None:
        """Flush and stop the tracer (blocking: run it off the event loop)."""
        if self.tracer is not None:
            self.tracer.shutdown()


class RequestHooks:
    """The hook of one listener; `after_decide` runs once per routed request."""

    __slots__ = ("inbound", "listener", "memory", "repair", "service", "state", "stats",
                 "tracer")

    def __init__(self, listener: ListenerKind, state: PropagationState) -> None:
        self.listener: ListenerKind = listener
        self.inbound = listener == "inbound"
        self.state = state
        self.memory = state.memory
        self.repair = state.repair
        self.service = state.service
        self.stats = state.stats
        self.tracer = state.tracer

    def after_decide(
        self,
        view: RequestView,
        table: RoutingTable,
        decision: Decision,
        draw: Callable[[], float],
    ) -> tuple[Decision, ProxySpan | None]:
        """The decision to act on (maybe re-made with a restored key) and the request's span.

        `view.headers` is left as received, so injection on forwarding adds the restored key
        to every emitting carrier. The forwarding core puts the span's `traceparent` into the
        forwarded fields (`forward.core.apply_span`).
        """
        memory = self.memory
        if memory is not None and _TRACEPARENT in view.headers:
            key = decision.key
            if self.inbound:
                if key.key is not None:
                    trace_id = extract_trace_id(view.headers)
                    if trace_id is not None:
                        memory.put(trace_id, key.key)
            elif key.key is None and not key.conflict:
                trace_id = extract_trace_id(view.headers)
                remembered = None if trace_id is None else memory.get(trace_id)
                if remembered is not None:
                    if self.repair:
                        decision = self._restore(view, table, decision, draw, remembered)
                    else:
                        self.stats.propagation_gaps[self.service] += 1
        tracer = self.tracer
        if tracer is None:
            return decision, None
        return decision, tracer.start(self.listener, view, decision)

    def _restore(
        self,
        view: RequestView,
        table: RoutingTable,
        decision: Decision,
        draw: Callable[[], float],
        key: str,
    ) -> Decision:
        """Decide again as if the request had carried `key` in every emitting carrier."""
        updates = inject_routing_key(table.carriers, key, view.headers)
        if not updates:
            return decision  # the table emits no carrier: nothing can carry the key on
        headers = dict(view.headers)
        headers.update(updates)
        again = decide(
            RequestView(view.listener, view.method, view.path, view.authority, headers),
            table,
            draw,
        )
        if again.key.key != key:
            return decision
        self.stats.keys_restored[self.service] += 1
        restored = KeyResult(key, RESTORED_CARRIER, False)
        return Decision(again.route, restored, again.mirrors, again.rejected)
