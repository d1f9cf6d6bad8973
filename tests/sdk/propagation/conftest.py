"""Loopback servers for the propagation helpers: a downstream that echoes the headers it
received, and a middle service built with the forklane server middleware."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from forklane.propagation.aiohttp import server_middleware

Call = Callable[[str], Awaitable[dict[str, str]]]
ServerFactory = Callable[..., Awaitable[TestServer]]


async def _echo(request: web.Request) -> web.Response:
    seen: dict[str, str] = {}
    for name, value in request.headers.items():
        seen[name.lower()] = f"{seen[name.lower()]},{value}" if name.lower() in seen else value
    return web.json_response(seen)


@pytest.fixture
async def downstream_url(aiohttp_server: ServerFactory) -> str:
    """A real HTTP server on 127.0.0.1 answering with the request headers it got."""
    app = web.Application()
    app.router.add_get("/echo", _echo)
    server = await aiohttp_server(app)
    return str(server.make_url("/echo"))


@pytest.fixture
def middle_url(aiohttp_server: ServerFactory, downstream_url: str) -> Callable[..., Awaitable[str]]:
    """Start a service whose handler calls the downstream with `call`; returns its URL."""

    async def start(call: Call, **middleware_options: Any) -> str:
        async def handle(request: web.Request) -> web.Response:
            return web.json_response(await call(downstream_url))

        app = web.Application(middlewares=[server_middleware(**middleware_options)])
        app.router.add_get("/", handle)
        server = await aiohttp_server(app)
        return str(server.make_url("/"))

    return start
