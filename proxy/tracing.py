"""OpenTelemetry spans for proxied requests: one span per request, exported over OTLP/HTTP.

This module is imported only when tracing is switched on (`--tracing`); with it off, no
OpenTelemetry module is loaded and the request path never reaches this code.

Invariants:
- the span is a child of the request's own `traceparent` when that is valid (parsed by
  forklane's exact W3C parser, not OpenTelemetry's); without one, the span starts a trace;
- the forwarded request carries a `traceparent` naming the proxy's span (same trace-id,
  the span's id, the sampling decision), so the next hop's spans hang under this hop;
  `tracestate` is passed along unchanged, and dropped only when the incoming `traceparent`
  was invalid (W3C Trace Context: tracestate means nothing without its traceparent);
- the exporter is configured by the standard `OTEL_EXPORTER_OTLP_*` variables and the
  sampler by `OTEL_TRACES_SAMPLER` (default: follow the parent's sampled flag), which the
  OpenTelemetry SDK reads itself; spans are batched and exported off the event loop thread;
- a span always ends: the data plane ends it when it counts the request, whatever the
  outcome (answered, answered locally, reset).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)

from forklane.proxy.context.traceparent import parse_traceparent
from forklane.proxy.routing import Decision, ListenerKind, RequestView
from forklane.proxy.table import Destination, Endpoint

__all__ = ["ATTR", "ProxySpan", "ProxyTracer"]

# Attribute names on every proxy span (the `forklane.*` ones are ours; the others follow
# OpenTelemetry's HTTP semantic conventions).
ATTR = {
    "service": "forklane.service",
    "listener": "forklane.listener",
    "key": "forklane.routing_key",
    "carrier": "forklane.carrier",
    "kind": "forklane.destination.kind",
    "destination": "forklane.destination",
    "rule": "forklane.rule",
    "upstream": "forklane.upstream",
    "method": "http.request.method",
    "status": "http.response.status_code",
}

_DEFAULT_SERVICE_NAME = "forklane-proxy"


class ProxySpan:
    """The span of one request; `finish()` records the outcome and ends it (once).

    `traceparent` is the value to forward (it names this span); `keeps_tracestate` is False
    when the incoming traceparent was invalid, so its tracestate must not be forwarded (the
    forwarding core applies both to the forwarded fields).
    """

    __slots__ = ("_span", "keeps_tracestate", "traceparent")

    def __init__(self, span: Span, traceparent: bytes, keeps_tracestate: bool) -> None:
        self._span = span
        self.traceparent = traceparent
        self.keeps_tracestate = keeps_tracestate

    @property
    def span(self) -> Span:
        return self._span

    def finish(self, status: int, dest: Destination | None, endpoint: Endpoint | None) -> None:
        span = self._span
        if span.is_recording():
            if dest is not None:
                span.set_attribute(ATTR["destination"], dest.name)
            if endpoint is not None:
                span.set_attribute(ATTR["upstream"], endpoint.address)
            span.set_attribute(ATTR["status"], status)
            if status == 0 or status >= 500:
                span.set_status(StatusCode.ERROR, "reset" if status == 0 else None)
        span.end()


class ProxyTracer:
    """Makes the spans of one proxy process; owns the provider and its exporter."""

    def __init__(self, service: str | None, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create({"forklane.sidecar.service": service or ""})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            # OTEL_SERVICE_NAME was not given: name the proxy rather than "unknown_service".
            resource = resource.merge(Resource({SERVICE_NAME: _DEFAULT_SERVICE_NAME}))
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("forklane.proxy")
        self._service = service or ""

    def start(
        self,
        listener: ListenerKind,
        view: RequestView,
        decision: Decision,
    ) -> ProxySpan:
        """Start the request's span; its `traceparent` is what the request is forwarded with."""
        headers = view.headers
        parent = parse_traceparent(headers.get("traceparent"))
        context = None
        if parent is not None:
            state = headers.get("tracestate")
            remote = SpanContext(
                int(parent.trace_id, 16),
                int(parent.parent_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(int(parent.flags, 16)),
                trace_state=TraceState.from_header([state]) if state else None,
            )
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        route = decision.route
        key = decision.key
        attributes: dict[str, str] = {
            ATTR["service"]: self._service,
            ATTR["listener"]: listener,
            ATTR["kind"]: route.kind,
            ATTR["rule"]: route.rule,
            ATTR["method"]: view.method,
        }
        if key.key is not None:
            attributes[ATTR["key"]] = key.key
            attributes[ATTR["carrier"]] = key.carrier or ""
        span = self._tracer.start_span(
            f"{listener} {view.method}",
            context=context,
            kind=SpanKind.SERVER if listener == "inbound" else SpanKind.CLIENT,
            attributes=attributes,
        )
        sc = span.get_span_context()
        value = b"00-%032x-%016x-%02x" % (sc.trace_id, sc.span_id, int(sc.trace_flags))
        return ProxySpan(span, value, parent is not None)

    def shutdown(self) -> None:
        """Export what is still batched, then stop (blocking: call it off the event loop)."""
        self._provider.shutdown()
