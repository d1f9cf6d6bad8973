"""The ASGI and WSGI middlewares in real apps on real servers: FastAPI and Starlette under
uvicorn, Flask under werkzeug's server, Django under wsgiref in its own process. Each app's
handler calls the next hop (a loopback server echoing the headers it got) with the client
helpers; the key must arrive there, and only for the request that carried it."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import uvicorn
from fastapi import FastAPI
from flask import Flask, Response, stream_with_context
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.serving import make_server

from forklane.propagation import current_routing_key
from forklane.propagation.asgi import RoutingContextMiddleware as AsgiMiddleware
from forklane.propagation.httpx import async_event_hooks
from forklane.propagation.requests import instrument_session
from forklane.propagation.wsgi import RoutingContextMiddleware as WsgiMiddleware
from tests.support.polling import eventually

KEYED = {"x-forklane-routing-key": "sb-7", "baggage": "user=alice"}


def fetch(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A plain client (no forklane hooks) calling the app, off the event loop's thread."""
    answer = requests.get(url, headers=headers or {}, timeout=10)
    assert answer.status_code == 200, answer.text
    doc: dict[str, Any] = answer.json()
    return doc


async def call(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return await asyncio.to_thread(fetch, url, headers)


# --- ASGI ------------------------------------------------------------------------------------


@pytest.fixture
async def serve_asgi() -> AsyncIterator[Any]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(app: Any) -> str:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                lifespan="off")  # fmt: skip
        server = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(server.serve())
        servers.append((server, task))
        await eventually(lambda: server.started or task.done(), what="uvicorn started")
        assert server.started, task.exception()
        port = server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server, task in servers:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def fastapi_app(downstream: str) -> FastAPI:
    app = FastAPI()
    app.add_middleware(AsgiMiddleware)

    @app.get("/async")
    async def by_coroutine() -> dict[str, Any]:
        async with httpx.AsyncClient(event_hooks=async_event_hooks()) as client:
            seen = (await client.get(downstream)).json()
        return {"key": current_routing_key(), "next_hop": seen}

    @app.get("/sync")
    def in_the_thread_pool() -> dict[str, Any]:  # Starlette runs it in a worker thread
        with instrument_session(requests.Session()) as session:
            seen = session.get(downstream, timeout=10).json()
        return {"key": current_routing_key(), "next_hop": seen}

    return app


async def test_fastapi_async_and_sync_endpoints_pass_the_key_on(
    serve_asgi: Any, downstream_url: str
) -> None:
    base = await serve_asgi(fastapi_app(downstream_url))
    for path in ("/async", "/sync"):
        got = await call(base + path, KEYED)
        assert got["key"] == "sb-7"
        assert got["next_hop"]["x-forklane-routing-key"] == "sb-7"
        assert got["next_hop"]["baggage"] == "user=alice"
        bare = await call(base + path)
        assert bare["key"] is None and "x-forklane-routing-key" not in bare["next_hop"]


async def test_starlette_keeps_concurrent_requests_apart(
    serve_asgi: Any, downstream_url: str
) -> None:
    async def handler(request: Request) -> JSONResponse:
        await asyncio.sleep(0)  # let the other requests interleave with this one
        async with httpx.AsyncClient(event_hooks=async_event_hooks()) as client:
            seen = (await client.get(downstream_url)).json()
        return JSONResponse({"next_hop": seen.get("x-forklane-routing-key")})

    app = Starlette(routes=[Route("/", handler)])
    app.add_middleware(AsgiMiddleware)
    base = await serve_asgi(app)
    keys = [f"key-{i}" for i in range(12)]
    got = await asyncio.gather(*(call(base + "/", {"x-forklane-routing-key": k}) for k in keys))
    assert [g["next_hop"] for g in got] == keys


# --- WSGI ------------------------------------------------------------------------------------


@pytest.fixture
def serve_wsgi() -> Iterator[Any]:
    servers: list[Any] = []

    def start(app: Any) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def flask_app(downstream: str) -> Flask:
    app = Flask("forklane-test")
    app.wsgi_app = WsgiMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    session = instrument_session(requests.Session())

    @app.get("/")
    def index() -> dict[str, Any]:
        seen = session.get(downstream, timeout=10).json()
        return {"key": current_routing_key(), "next_hop": seen}

    @app.get("/stream")
    def streamed() -> Response:
        def chunks() -> Iterator[str]:  # runs after the view returned, while the body is sent
            yield "["
            seen = session.get(downstream, timeout=10).json()
            yield json.dumps(seen.get("x-forklane-routing-key")) + "]"

        return Response(chunks(), mimetype="application/json")

    @app.get("/flask-stream")
    def flask_streamed() -> Response:
        @stream_with_context
        def chunks() -> Iterator[str]:
            seen = session.get(downstream, timeout=10).json()
            yield json.dumps([seen.get("x-forklane-routing-key")])

        return Response(chunks(), mimetype="application/json")

    return app


async def test_flask_passes_the_key_on_also_from_a_streamed_body(
    serve_wsgi: Any, downstream_url: str
) -> None:
    base = serve_wsgi(flask_app(downstream_url))
    got = await call(base + "/", KEYED)
    assert got["key"] == "sb-7"
    assert got["next_hop"]["x-forklane-routing-key"] == "sb-7"
    assert got["next_hop"]["baggage"] == "user=alice"
    assert await call(base + "/stream", KEYED) == ["sb-7"]  # type: ignore[comparison-overlap]
    assert await call(base + "/flask-stream", KEYED) == ["sb-7"]  # type: ignore[comparison-overlap]
    bare = await call(base + "/")
    assert bare["key"] is None and "x-forklane-routing-key" not in bare["next_hop"]
    keys = [f"key-{i}" for i in range(8)]
    many = await asyncio.gather(*(call(base + "/", {"x-forklane-routing-key": k}) for k in keys))
    assert [m["next_hop"]["x-forklane-routing-key"] for m in many] == keys


DJANGO_SITE = '''
import json, sys
import django
from django.conf import settings
settings.configure(DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["127.0.0.1"],
                   SECRET_KEY="test-only", MIDDLEWARE=[])
django.setup()
import requests
from django.core.wsgi import get_wsgi_application
from django.http import JsonResponse
from django.urls import path
from wsgiref.simple_server import make_server, WSGIRequestHandler
from forklane.propagation import current_routing_key
from forklane.propagation.requests import instrument_session
from forklane.propagation.wsgi import RoutingContextMiddleware

DOWNSTREAM = sys.argv[1]
session = instrument_session(requests.Session())

def view(request):
    seen = session.get(DOWNSTREAM, timeout=10).json()
    return JsonResponse({"key": current_routing_key(), "next_hop": seen})

urlpatterns = [path("", view)]
application = RoutingContextMiddleware(get_wsgi_application())

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

server = make_server("127.0.0.1", 0, application, handler_class=Quiet)
print(server.server_port, flush=True)
server.serve_forever()
'''


async def test_django_passes_the_key_on(downstream_url: str, tmp_path: Path) -> None:
    site = tmp_path / "site.py"
    site.write_text(DJANGO_SITE)
    with (tmp_path / "stderr").open("w") as errors:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(site), downstream_url, stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        assert line.isdigit(), (tmp_path / "stderr").read_text()
        base = f"http://127.0.0.1:{line}/"
        got = await call(base, KEYED)
        assert got["key"] == "sb-7"
        assert got["next_hop"]["x-forklane-routing-key"] == "sb-7"
        assert got["next_hop"]["baggage"] == "user=alice"
        bare = await call(base)
        assert bare["key"] is None and "x-forklane-routing-key" not in bare["next_hop"]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
