"""httpx glue: request event hooks, sync and async, that add the carrier headers.

Hooks run in the caller's thread or task, so the caller's routing context is current.
Use `httpx.Client(event_hooks=event_hooks())` or `httpx.AsyncClient(event_hooks=async_event_hooks())`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from forklane.propagation._context import outgoing_headers

__all__ = ["add_routing_headers", "async_event_hooks", "event_hooks"]


def add_routing_headers(request: httpx.Request) -> None:
    """Request hook: add the current context's carrier headers the request lacks."""
    for name, value in outgoing_headers(request.headers.keys()).items():
        request.headers[name] = value


async def _add_routing_headers_async(request: httpx.Request) -> None:
    add_routing_headers(request)


def event_hooks() -> dict[str, list[Callable[[httpx.Request], None]]]:
    """`event_hooks` for `httpx.Client`."""
    return {"request": [add_routing_headers]}


def async_event_hooks() -> dict[str, list[Callable[[httpx.Request], Awaitable[None]]]]:
    """`event_hooks` for `httpx.AsyncClient`."""
    return {"request": [_add_routing_headers_async]}
