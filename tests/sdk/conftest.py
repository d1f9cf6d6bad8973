"""Fixtures for SDK tests: a scripted loopback HTTP server, and a real control plane process.

`scripted_server` runs an aiohttp server on 127.0.0.1:0 in its own thread (so the sync client
can call it from the test thread) and answers with whatever the test's handler returns; it is
for behaviour a real control plane cannot be made to show on demand (503s, HTML error pages,
dropped connections).

`controlplane` starts `python -m controlplane serve` on port 0 with a temporary data
directory and the bootstrap admin token from `FORKLANE_ADMIN_TOKEN`, waits for its
"listening on" line, and stops it afterwards. Tests using it skip, saying why, while the
control plane is not there yet.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from controlplane_proc import (
    ADMIN_TOKEN,
    ControlPlane,
    controlplane_missing,
    start_controlplane,
    stop_process,
)

from sdk import AsyncClient, Client, RetryPolicy
from sdk.config import ClientConfig

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


class _ServerThread(threading.Thread):
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


@pytest.fixture
def scripted_server() -> Iterator[Callable[[Handler], ScriptedServer]]:
    """Call with an async handler; returns the running server's URL and its request log."""
    threads: list[_ServerThread] = []

    def start(handler: Handler) -> ScriptedServer:
        server = ScriptedServer(url="")
        thread = _ServerThread(handler, server.seen)
        threads.append(thread)
        thread.start()
        if not thread.ready.wait(timeout=10) or thread.error is not None:
            raise RuntimeError(f"scripted server did not start: {thread.error}")
        server.url = f"http://127.0.0.1:{thread.port}"
        return server

    yield start
    for thread in threads:
        thread.stop()


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


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --- the real control plane -------------------------------------------------------------------


@pytest.fixture(scope="module")
def controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    reason = controlplane_missing()
    if reason:
        pytest.skip(reason)
    data_dir = tmp_path_factory.mktemp("cp-data")
    proc, url = start_controlplane(data_dir)
    try:
        yield ControlPlane(url=url, token=ADMIN_TOKEN, data_dir=data_dir)
    finally:
        stop_process(proc)
