"""ASGI glue (Starlette, FastAPI, Django's ASGI handler, any ASGI 3 app): a middleware that
makes each request's routing context current while the app handles it.

    app.add_middleware(RoutingContextMiddleware)           # Starlette / FastAPI
    application = RoutingContextMiddleware(get_asgi_application())   # Django

Pure ASGI, so it imports no framework and streams bodies untouched. The context is set in
the task that runs the app; `contextvars` carry it into the app's own tasks and into the
thread pool where Starlette runs plain `def` endpoints, so outgoing calls made with the
client helpers (`forklane.propagation.httpx`, `.requests`, `.aiohttp`) carry the key.
Lifespan and other scope types pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import ExitStack
from typing import Any

from forklane.propagation._context import activate, context_from_headers, deactivate

__all__ = ["RoutingContextMiddleware"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RoutingContextMiddleware:
    """Capture the carrier headers of each HTTP or WebSocket request for the app's run.

    `otel_baggage=True` also puts the key into OpenTelemetry baggage, so clients
    instrumented with OpenTelemetry carry it without forklane hooks.
    """

    def __init__(self, app: ASGIApp, *, otel_baggage: bool = False) -> None:
        self.app = app
        self.otel_baggage = otel_baggage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        ctx = context_from_headers(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope.get("headers", ())
        )
        token = activate(ctx)
        try:
            with ExitStack() as stack:
                if self.otel_baggage and ctx.key is not None:
                    from forklane.propagation.otel import routing_key_baggage

                    stack.enter_context(routing_key_baggage(ctx.key))
                await self.app(scope, receive, send)
        finally:
            deactivate(token)
