"""aiohttp glue: a server middleware that captures the routing context, and client hooks
(a `TraceConfig` for every aiohttp 3.x, a client middleware for aiohttp >= 3.12) that add
the carrier headers to outgoing requests.

Invariant: the context is current exactly while the handler runs, in the handler's task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from types import SimpleNamespace

from aiohttp import (
    ClientRequest,
    ClientResponse,
    ClientSession,
    TraceConfig,
    TraceRequestStartParams,
    web,
)
from aiohttp.typedefs import Middleware

from forklane.propagation._context import (
    activate,
    context_from_headers,
    deactivate,
    outgoing_headers,
)

__all__ = ["client_middleware", "client_trace_config", "server_middleware"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ClientHandler = Callable[[ClientRequest], Awaitable[ClientResponse]]


def server_middleware(
    *, otel_baggage: bool = False
) -> Middleware:
    """Middleware making the request's routing context current for its handler.

    `otel_baggage=True` also puts the key into OpenTelemetry baggage, so clients
    instrumented with OpenTelemetry carry it without forklane hooks.
    """

    @web.middleware
    async def forklane_routing(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = context_from_headers(request.headers.items())
        token = activate(ctx)
        try:
            with ExitStack() as stack:
                if otel_baggage and ctx.key is not None:
                    from forklane.propagation.otel import routing_key_baggage

                    stack.enter_context(routing_key_baggage(ctx.key))
                return await handler(request)
        finally:
            deactivate(token)

    return forklane_routing


async def _on_request_start(
    session: ClientSession, trace_ctx: SimpleNamespace, params: TraceRequestStartParams
) -> None:
    for name, value in outgoing_headers(params.headers.keys()).items():
        params.headers[name] = value


def client_trace_config() -> TraceConfig:
    """A `TraceConfig` for `ClientSession(trace_configs=[...])` that adds carrier headers."""
    config = TraceConfig()
    config.on_request_start.append(_on_request_start)
    return config


async def client_middleware(request: ClientRequest, handler: ClientHandler) -> ClientResponse:
    """Client middleware (aiohttp >= 3.12: `ClientSession(middlewares=[...])`)."""
    for name, value in outgoing_headers(request.headers.keys()).items():
        request.headers[name] = value
    return await handler(request)
