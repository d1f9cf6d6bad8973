"""WebSocket (HTTP/1.1 Upgrade) through a real proxy process, routed by the routing key.

Upstreams are aiohttp WebSocket servers in the test loop; the client is aiohttp's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

pytestmark = pytest.mark.asyncio

KEY = "alice-7f3a"


class WsUpstream:
    """Echoes text frames prefixed with its name; `close` from the client ends the echo."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.keys: list[str | None] = []
        self.closed = asyncio.Event()
        self.sockets: list[web.WebSocketResponse] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        self.keys.append(request.headers.get("x-forklane-routing-key"))
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        self.sockets.append(ws)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "close-please":
                    await ws.close(code=4001, message=b"asked to")
                    break
                await ws.send_str(f"{self.name}:{msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        self.closed.set()
        return ws

    async def start(self) -> WsUpstream:
        app = web.Application()
        app.router.add_get("/ws", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def ws_mesh(proxy_factory: Callable[..., Any]) -> AsyncIterator[dict[str, Any]]:
    base, fork = await WsUpstream("chat").start(), await WsUpstream("chat-fork").start()
    doc = {
        "version": "w1",
        "services": [{"name": "chat", "endpoints": [base.address]}],
        "forks": [{"routing_key": KEY, "service": "chat", "endpoints": [fork.address]}],
    }
    proc = proxy_factory(doc, "--idle-timeout", "1")
    try:
        yield {"base": base, "fork": fork, "proc": proc,
               "url": f"http://127.0.0.1:{proc.ports['outbound']}/ws"}
    finally:
        await base.aclose()
        await fork.aclose()


Connect = Callable[..., Awaitable[aiohttp.ClientWebSocketResponse]]


async def test_echo_is_routed_by_the_key(ws_mesh: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        for headers, expected in (
            ({"host": "chat"}, "chat"),
            ({"host": "chat", "x-forklane-routing-key": KEY}, "chat-fork"),
            ({"host": "chat", "baggage": f"forklane-routing-key={KEY}"}, "chat-fork"),
            ({"host": "chat", "x-forklane-routing-key": "nobody-000"}, "chat"),
        ):
            async with session.ws_connect(ws_mesh["url"], headers=headers) as ws:
                for i in range(20):
                    await ws.send_str(f"m{i}")
                    assert await ws.receive_str(timeout=5) == f"{expected}:m{i}"
    assert ws_mesh["fork"].keys == [KEY, KEY]


async def test_large_binary_frames_cross_the_tunnel(ws_mesh: dict[str, Any]) -> None:
    blob = bytes(range(256)) * 16 * 1024  # 4 MiB, far above the socket buffers
    async with aiohttp.ClientSession() as session, session.ws_connect(
        ws_mesh["url"], headers={"host": "chat"}, max_msg_size=16 * 1024 * 1024
    ) as ws:
        await ws.send_bytes(blob)
        assert await ws.receive_bytes(timeout=10) == blob


async def test_close_from_either_side(ws_mesh: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(ws_mesh["url"], headers={"host": "chat"})
        await ws.send_str("close-please")
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4001
        await ws.close()

        ws = await session.ws_connect(ws_mesh["url"], headers={"host": "chat",
                                                               "x-forklane-routing-key": KEY})
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=5) == "chat-fork:hi"
        await ws.close()
    await asyncio.wait_for(ws_mesh["fork"].closed.wait(), 5)


async def test_idle_tunnel_is_closed(ws_mesh: dict[str, Any]) -> None:
    """No byte either way for the idle timeout (1 s here): the proxy ends the tunnel."""
    async with aiohttp.ClientSession() as session, session.ws_connect(
        ws_mesh["url"], headers={"host": "chat"}, autoping=False, heartbeat=None
    ) as ws:
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=5) == "chat:hi"
        msg = await ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE,
                            aiohttp.WSMsgType.ERROR)
    await asyncio.wait_for(ws_mesh["base"].closed.wait(), 5)


async def test_refused_upgrade_is_an_ordinary_answer(ws_mesh: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await session.ws_connect(ws_mesh["url"].replace("/ws", "/nope"),
                                     headers={"host": "chat"})
    assert err.value.status == 404
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await session.ws_connect(ws_mesh["url"], headers={"host": "nowhere"})
    assert err.value.status == 404
