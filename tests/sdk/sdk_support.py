"""Test support for the SDK tests: a scripted loopback server and a both-clients runner.

Kept out of `conftest.py` so that test modules can import these names unambiguously.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from forklane import AsyncClient, Client, RetryPolicy
from forklane.config import ClientConfig

__all__ = ["FAST", "Both", "Handler", "ScriptedServer", "Seen", "ServerThread", "with_sandbox"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedServer:
    url: str
    seen: list[Seen] = field(default_factory=list)


class ServerThread(threading.Thread):
    def __init__(self, handler: Handler, record: list[Seen]) -> None:
        super().__init__(daemon=True)
        self.handler = handler
        self.record = record
        self.ready = threading.Event()
        self.port = 0
        self.error: BaseException | None = None
        self.loop = asyncio.new_event_loop()
        self.stopping: asyncio.Event | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.record.append(
            Seen(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        return await self.handler(request)

    async def _main(self) -> None:
        self.stopping = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.ready.set()
        try:
            await self.stopping.wait()
        finally:
            await runner.cleanup()

    def run(self) -> None:
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to the test by the fixture
            self.error = exc
            self.ready.set()
        finally:
            self.loop.close()

    def stop(self) -> None:
        if self.stopping is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.join(timeout=10)


# --- one scenario, both clients ----------------------------------------------------------------

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)


class Both:
    """Runs `fn(client)` with a sync or an async client; same call syntax for tests."""

    def __init__(self, mode: str, url: str, token: str | None = "t0ken") -> None:
        self.mode = mode
        self.config = ClientConfig(url=url, token=token)

    async def run(self, fn: Callable[[Any], Any]) -> Any:
        if self.mode == "sync":

            def call() -> Any:
                with Client(config=self.config, retry=FAST) as client:
                    return fn(client)

            return await asyncio.to_thread(call)
        async with AsyncClient(config=self.config, retry=FAST) as client:
            return await fn(client)


def with_sandbox(forks: list[str], body: Callable[[Any], None], **kwargs: Any) -> Callable:
    """`fn(client)` running `with client.sandbox(forks, **kwargs) as sb: body(sb)`, returning
    the handle; for an async client `fn` returns the coroutine that does it."""

    def fn(client: Any) -> Any:
        if isinstance(client, Client):
            with client.sandbox(forks, **kwargs) as sb:
                body(sb)
                return sb

        async def run() -> Any:
            async with client.sandbox(forks, **kwargs) as sb:
                body(sb)
                return sb

        return run()

    return fn
