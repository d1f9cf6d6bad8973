"""The key flows from an incoming request to an outgoing one, through each HTTP client.

Chain: test client -> middle service (aiohttp + forklane server middleware) -> downstream
echo server, the middle using one client library with its forklane hook.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import pytest
import requests
from opentelemetry.baggage.propagation import W3CBaggagePropagator

from forklane.propagation.aiohttp import client_middleware, client_trace_config
from forklane.propagation.httpx import async_event_hooks, event_hooks
from forklane.propagation.requests import instrument_session

Call = Callable[[str], Awaitable[dict[str, str]]]


async def via_aiohttp_trace_config(url: str) -> dict[str, str]:
    async with aiohttp.ClientSession(trace_configs=[client_trace_config()]) as s:
        async with s.get(url) as r:
            return dict(await r.json())


async def via_aiohttp_middleware(url: str) -> dict[str, str]:
    async with aiohttp.ClientSession(middlewares=[client_middleware]) as s:
        async with s.get(url) as r:
            return dict(await r.json())


def _requests_get(url: str) -> dict[str, str]:
    with instrument_session(requests.Session()) as s:
        return dict(s.get(url, timeout=5).json())


async def via_requests(url: str) -> dict[str, str]:
    return await asyncio.to_thread(_requests_get, url)


def _httpx_get(url: str) -> dict[str, str]:
    with httpx.Client(event_hooks=event_hooks()) as c:
        return dict(c.get(url).json())


async def via_httpx(url: str) -> dict[str, str]:
    return await asyncio.to_thread(_httpx_get, url)


async def via_httpx_async(url: str) -> dict[str, str]:
    async with httpx.AsyncClient(event_hooks=async_event_hooks()) as c:
        return dict((await c.get(url)).json())


CLIENTS = pytest.mark.parametrize(
    "call",
    [via_aiohttp_trace_config, via_aiohttp_middleware, via_requests, via_httpx, via_httpx_async],
)


async def get(url: str, headers: dict[str, str]) -> dict[str, str]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers=headers) as r:
            assert r.status == 200
            return dict(await r.json())


@CLIENTS
async def test_key_header_flows_to_the_next_hop(
    middle_url: Callable[..., Awaitable[str]], call: Call
) -> None:
    url = await middle_url(call)
    seen = await get(url, {"x-forklane-routing-key": "sb-1", "baggage": "user=alice"})
    assert seen["x-forklane-routing-key"] == "sb-1"
    assert seen["baggage"] == "user=alice"


@CLIENTS
async def test_key_in_baggage_only_reaches_the_next_hop_in_both(
    middle_url: Callable[..., Awaitable[str]], call: Call
) -> None:
    url = await middle_url(call)
    seen = await get(url, {"baggage": "forklane-routing-key=sb-2,user=bob"})
    assert seen["x-forklane-routing-key"] == "sb-2"
    assert seen["baggage"] == "forklane-routing-key=sb-2,user=bob"


@CLIENTS
async def test_no_key_adds_nothing(middle_url: Callable[..., Awaitable[str]], call: Call) -> None:
    url = await middle_url(call)
    seen = await get(url, {"x-other": "1"})
    assert "x-forklane-routing-key" not in seen
    assert "baggage" not in seen


async def test_an_explicit_header_of_the_app_wins(
    middle_url: Callable[..., Awaitable[str]],
) -> None:
    async def explicit(url: str) -> dict[str, str]:
        async with aiohttp.ClientSession(trace_configs=[client_trace_config()]) as s:
            async with s.get(url, headers={"X-Forklane-Routing-Key": "chosen"}) as r:
                return dict(await r.json())

    url = await middle_url(explicit)
    seen = await get(url, {"x-forklane-routing-key": "sb-1"})
    assert seen["x-forklane-routing-key"] == "chosen"


async def test_otel_baggage_carries_the_key_without_forklane_client_hooks(
    middle_url: Callable[..., Awaitable[str]],
) -> None:
    async def instrumented(url: str) -> dict[str, str]:
        # What an OpenTelemetry-instrumented client does: inject the current context.
        headers: dict[str, str] = {}
        W3CBaggagePropagator().inject(headers)
        async with aiohttp.ClientSession() as s:
            async with s.get(url, headers=headers) as r:
                return dict(await r.json())

    url = await middle_url(instrumented, otel_baggage=True)
    seen = await get(url, {"x-forklane-routing-key": "sb-3"})
    assert seen["baggage"] == "forklane-routing-key=sb-3"
    assert "x-forklane-routing-key" not in seen
