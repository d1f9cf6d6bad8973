"""Keep the routing key flowing through a service: capture it from each incoming request,
add it to every outgoing one.

The core (`RoutingContext`, `routing_context`, `current_routing_key`, `outgoing_headers`)
imports no HTTP or RPC library. One small module per library holds the glue:
`forklane.propagation.aiohttp`, `.asgi` (FastAPI, Starlette, Django ASGI), `.wsgi` (Flask,
Django), `.requests`, `.httpx`, `.grpc` and `.otel` (OpenTelemetry baggage).
"""

from forklane.propagation._context import (
    BAGGAGE_MEMBER,
    FORWARDED_HEADERS,
    ROUTING_KEY_HEADER,
    RoutingContext,
    activate,
    context_from_headers,
    current_context,
    current_routing_key,
    deactivate,
    is_routing_key,
    outgoing_headers,
    routing_context,
)

__all__ = [
    "BAGGAGE_MEMBER",
    "FORWARDED_HEADERS",
    "ROUTING_KEY_HEADER",
    "RoutingContext",
    "activate",
    "context_from_headers",
    "current_context",
    "current_routing_key",
    "deactivate",
    "is_routing_key",
    "outgoing_headers",
    "routing_context",
]
