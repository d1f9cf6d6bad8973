"""OpenTelemetry spans from a real sidecar process, received by a real OTLP/HTTP collector.

The collector is a small aiohttp server in the test loop that accepts `POST /v1/traces`
(protobuf) and decodes it with `opentelemetry-proto`; the sidecar finds it through the
standard `OTEL_EXPORTER_OTLP_ENDPOINT` variable, as it would in a cluster.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.integration.test_http2 import h2_upstreams  # noqa: F401 - the fixture
from tests.support.processes import Proc

pytestmark = pytest.mark.asyncio

KEY = "dev-trace-9e2b"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP trace receiver: every exported span, with its resource attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Span]] = []
        self.arrived = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest.FromString(body)
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append((resource, span))
        self.arrived.set()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def start(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def wait_for(self, count: int, within: float = 10.0) -> list[tuple[dict[str, Any], Span]]:
        async with asyncio.timeout(within):
            while len(self.spans) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.spans


def _attributes(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in items:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    c = await Collector().start()
    yield c
    assert c.runner is not None
    await c.runner.cleanup()


@pytest.fixture
def traced(
    collector: Collector, proxy_factory: Any
) -> Callable[..., Proc]:
    """Start a sidecar with `--tracing` that exports to the collector every 50 ms."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "orders-sidecar",
    }

    def make(doc: dict[str, Any], *args: str, inbound: bool = False) -> Proc:
        proc: Proc = proxy_factory(doc, "--tracing", "--service", "orders", *args,
                                   inbound=inbound, env=env)
        return proc

    return make


def _routing(baseline: str, fork: str) -> dict[str, Any]:
    return {
        "version": "trace-1",
        "carriers": [
            {"kind": "header", "name": "x-forklane-routing-key"},
            {"kind": "tracestate", "name": "forklane", "emit": False},
        ],
        "services": [{"name": "catalog", "endpoints": [baseline]}],
        "forks": [{"routing_key": KEY, "service": "catalog", "endpoints": [fork],
                   "sandbox": "dev"}],
    }


async def test_a_span_per_request_child_of_the_incoming_traceparent(
    collector: Collector, traced: Callable[..., Proc], upstreams: Any
) -> None:
    base, fork = await upstreams("catalog"), await upstreams("catalog-fork")
    proc = traced(_routing(base.address, fork.address))
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{proc.url()}/items", headers={
            "host": "catalog", "x-forklane-routing-key": KEY,
            "traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    assert r.status_code == 200 and r.headers["x-upstream"] == "catalog-fork"
    [(resource, span)] = await collector.wait_for(1)

    assert resource["service.name"] == "orders-sidecar"
    assert span.trace_id.hex() == TRACE
    assert span.parent_span_id.hex() == PARENT
    assert span.kind == Span.SPAN_KIND_CLIENT
    attrs = _attributes(span.attributes)
    assert attrs["forklane.service"] == "orders"
    assert attrs["forklane.listener"] == "outbound"
    assert attrs["forklane.routing_key"] == KEY
    assert attrs["forklane.carrier"] == "header:x-forklane-routing-key"
    assert attrs["forklane.destination.kind"] == "fork"
    assert attrs["forklane.destination"] == f"fork/catalog@{KEY}"
    assert attrs["forklane.upstream"] == fork.address
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.response.status_code"] == 200

    # The next hop sees the proxy's span as its parent, in the same trace, same flags.
    seen = fork.requests[0]
    assert seen.header("traceparent") == f"00-{TRACE}-{span.span_id.hex()}-01"
    assert span.span_id.hex() != PARENT
    assert seen.header("tracestate") == TRACESTATE, "tracestate passes along unchanged"


async def test_without_a_traceparent_the_proxy_starts_the_trace(
    collector: Collector, traced: Callable[..., Proc], upstreams: Any
) -> None:
    base, fork = await upstreams("catalog"), await upstreams("catalog-fork")
    proc = traced(_routing(base.address, fork.address))
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{proc.url()}/", headers={
            "host": "catalog", "tracestate": TRACESTATE,
            "traceparent": f"00-{'0' * 32}-{PARENT}-01"})  # all-zero trace-id: invalid
    assert r.status_code == 200 and r.headers["x-upstream"] == "catalog"
    [(_, span)] = await collector.wait_for(1)
    assert span.parent_span_id == b""
    assert _attributes(span.attributes)["forklane.destination.kind"] == "baseline"
    assert "forklane.routing_key" not in _attributes(span.attributes)
    seen = base.requests[0]
    # Sampled; a new trace may also set the Trace Context Level 2 "random trace-id" flag.
    assert seen.header("traceparent") in {
        f"00-{span.trace_id.hex()}-{span.span_id.hex()}-{flags}" for flags in ("01", "03")
    }
    assert seen.header("tracestate") is None, "tracestate of an invalid traceparent is dropped"


async def test_failed_and_inbound_requests_get_spans_too(
    collector: Collector, traced: Callable[..., Proc], upstreams: Any
) -> None:
    app = await upstreams("orders-app")
    doc = _routing("127.0.0.1:9", "127.0.0.1:9")  # nothing listens on port 9
    proc = traced(doc, "--local-app", app.address, inbound=True)
    async with httpx.AsyncClient() as client:
        down = await client.get(f"{proc.url()}/", headers={
            "host": "catalog", "traceparent": TRACEPARENT})
        local = await client.get(f"{proc.url('inbound')}/", headers={
            "host": "orders", "traceparent": TRACEPARENT})
    assert down.status_code == 503 and local.status_code == 200
    spans = {_attributes(s.attributes)["forklane.listener"]: s
             for _, s in await collector.wait_for(2)}
    failed, served = spans["outbound"], spans["inbound"]
    assert _attributes(failed.attributes)["http.response.status_code"] == 503
    assert failed.status.code == Status.STATUS_CODE_ERROR
    assert served.kind == Span.SPAN_KIND_SERVER
    assert served.parent_span_id.hex() == PARENT
    assert _attributes(served.attributes)["forklane.upstream"] == app.address
    assert app.requests[0].header("traceparent") == f"00-{TRACE}-{served.span_id.hex()}-01"


async def test_without_tracing_the_traceparent_passes_untouched(
    proxy_factory: Any, upstreams: Any
) -> None:
    base = await upstreams("catalog")
    proc = proxy_factory(_routing(base.address, base.address))
    async with httpx.AsyncClient() as client:
        await client.get(f"{proc.url()}/", headers={
            "host": "catalog", "traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    assert base.requests[0].header("traceparent") == TRACEPARENT
    assert base.requests[0].header("tracestate") == TRACESTATE


async def test_http2_requests_get_the_same_spans(
    collector: Collector, traced: Callable[..., Proc], h2_upstreams: Any,  # noqa: F811
) -> None:
    """One decision and one set of hooks for every protocol: an h2c request is traced and its
    forwarded traceparent names the proxy's span, exactly as over HTTP/1.1."""
    base, fork = await h2_upstreams("catalog"), await h2_upstreams("catalog-fork")
    proc = traced(_routing(base.address, fork.address))
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        r = await client.get(f"{proc.url()}/items", headers={
            "host": "catalog", "x-forklane-routing-key": KEY, "traceparent": TRACEPARENT})
    assert r.status_code == 200 and r.http_version == "HTTP/2"
    [(_, span)] = await collector.wait_for(1)
    assert span.trace_id.hex() == TRACE and span.parent_span_id.hex() == PARENT
    assert _attributes(span.attributes)["forklane.destination.kind"] == "fork"
    assert fork.header(0, "traceparent") == f"00-{TRACE}-{span.span_id.hex()}-01"
