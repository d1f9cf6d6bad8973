"""`Client` and `AsyncClient` over real HTTP against scripted loopback servers.

Every scenario runs twice, once with the sync client (in a worker thread) and once with the
async client, so the two faces of the one implementation are held to the same behaviour.
The real control plane is exercised in `test_client_controlplane.py`; here the server is
scripted to show what a real one will not on demand: 503s, HTML error pages, refused
connections.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from forklane import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    SandboxFailed,
    Unauthorized,
    Unavailable,
)
from forklane._core import build_sandbox
from tests.sdk.sdk_support import Both, ScriptedServer, with_sandbox

Start = Callable[[Callable[[web.Request], Any]], ScriptedServer]


def error(status: int, reason: str, message: str, details: list[Any] | None = None) -> web.Response:
    body = {
        "error": {"status": status, "reason": reason, "message": message, "details": details or []}
    }
    return web.json_response(body, status=status)


def sandbox_doc(name: str, phase: str = "Ready", key: str = "k" * 26) -> dict[str, Any]:
    return {
        "apiVersion": "forklane.dev/v1",
        "kind": "Sandbox",
        "metadata": {"name": name, "generation": 1, "resourceVersion": "1"},
        "spec": {"forks": [{"service": "pricing", "endpoints": ["127.0.0.1:9"]}]},
        "status": {"phase": phase, "routingKey": key, "observedGeneration": 1},
    }


async def test_transient_503_is_retried_and_then_succeeds(
    mode: str, scripted_server: Start
) -> None:
    answers = [error(503, "Unavailable", "starting"), error(503, "Unavailable", "starting")]

    async def handler(request: web.Request) -> web.Response:
        return answers.pop(0) if answers else web.json_response(sandbox_doc("sb"))

    server = scripted_server(handler)
    sb = await Both(mode, server.url).run(lambda c: c.sandboxes.get("sb"))
    assert sb.metadata.name == "sb"
    assert len(server.seen) == 3


async def test_requests_carry_the_token_and_json(mode: str, scripted_server: Start) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(sandbox_doc("sb"), status=201)

    server = scripted_server(handler)
    created = await Both(mode, server.url).run(
        lambda c: c.sandboxes.create(build_sandbox(["pricing=127.0.0.1:9"], name="sb"))
    )
    assert created.status.routing_key == "k" * 26
    seen = server.seen[0]
    assert (seen.method, seen.path) == ("POST", "/api/v1/sandboxes")
    assert seen.headers["Authorization"] == "Bearer t0ken"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"].startswith("forklane-sdk")
    assert json.loads(seen.body)["spec"]["forks"][0]["service"] == "pricing"


@pytest.mark.parametrize(
    ("answer", "cls", "text"),
    [
        (
            lambda: error(401, "Unauthorized", "invalid bearer token"),
            Unauthorized,
            "invalid bearer token",
        ),
        (lambda: error(403, "Forbidden", "sandbox 'sb' belongs to alice"), Forbidden, "alice"),
        (lambda: error(404, "NotFound", "sandbox 'sb' not found"), NotFound, "not found"),
        (lambda: error(409, "Conflict", "resourceVersion 3 is stale"), Conflict, "stale"),
        (
            lambda: web.Response(status=502, text="<html>bad gateway</html>"),
            Unavailable,
            "HTTP 502",
        ),
    ],
)
async def test_errors_carry_the_servers_reason(
    mode: str, scripted_server: Start, answer: Callable[[], web.Response], cls: type, text: str
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return answer()

    server = scripted_server(handler)
    with pytest.raises(cls, match=text):
        await Both(mode, server.url).run(lambda c: c.sandboxes.get("sb"))


async def test_invalid_names_the_fields(mode: str, scripted_server: Start) -> None:
    async def handler(request: web.Request) -> web.Response:
        return error(
            422,
            "Invalid",
            "Sandbox is invalid",
            [{"field": "spec.forks", "message": "at least one fork"}],
        )

    server = scripted_server(handler)
    with pytest.raises(Invalid) as info:
        await Both(mode, server.url).run(lambda c: c.sandboxes.get("sb"))
    assert info.value.fields == [("spec.forks", "at least one fork")]


async def test_refused_connection_becomes_unavailable_after_bounded_retries(mode: str) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1.*3 attempts"):
        await Both(mode, f"http://127.0.0.1:{port}").run(lambda c: c.sandboxes.list())


# --- the sandbox context manager -------------------------------------------------------------


class Sandboxes:
    """The sandbox part of the REST contract, in memory: enough to hold the context manager
    to its promise (create, wait, yield, delete on every exit)."""

    def __init__(self, phase_after_create: str = "Ready") -> None:
        self.phase = phase_after_create
        self.items: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []

    async def __call__(self, request: web.Request) -> web.Response:
        parts = request.path.strip("/").split("/")
        if parts[:3] != ["api", "v1", "sandboxes"]:
            return error(404, "NotFound", "no such path")
        if request.method == "POST":
            doc = await request.json()
            name = doc["metadata"]["name"]
            self.items[name] = sandbox_doc(name, phase="Pending")
            return web.json_response(self.items[name], status=201)
        name = parts[3]
        if name not in self.items:
            return error(404, "NotFound", f"sandbox {name!r} not found")
        if request.method == "DELETE":
            self.deleted.append(name)
            del self.items[name]
            return web.json_response({})
        self.items[name]["status"]["phase"] = self.phase
        return web.json_response(self.items[name])


async def test_sandbox_yields_key_and_headers_and_deletes_on_exit(
    mode: str, scripted_server: Start
) -> None:
    api = Sandboxes()
    server = scripted_server(api)
    seen: list[Any] = []
    sb = await Both(mode, server.url).run(
        with_sandbox(["pricing=127.0.0.1:9"], seen.append, name="mine", ttl="10m")
    )
    assert seen and seen[0].name == "mine"
    assert sb.headers == {
        "x-forklane-routing-key": "k" * 26,
        "baggage": f"forklane-routing-key={'k' * 26}",
    }
    assert api.deleted == ["mine"]
    created = json.loads(server.seen[0].body)
    assert created["spec"]["ttl"]["seconds"] == 600


async def test_sandbox_is_deleted_when_the_body_raises(mode: str, scripted_server: Start) -> None:
    api = Sandboxes()
    server = scripted_server(api)

    def body(sb: Any) -> None:
        raise KeyError("the test failed")

    with pytest.raises(KeyError):
        await Both(mode, server.url).run(with_sandbox(["pricing=127.0.0.1:9"], body, name="oops"))
    assert api.deleted == ["oops"]
    assert api.items == {}


async def test_sandbox_is_deleted_when_it_never_becomes_ready(
    mode: str, scripted_server: Start
) -> None:
    api = Sandboxes(phase_after_create="Failed")
    server = scripted_server(api)
    with pytest.raises(SandboxFailed, match="phase Failed"):
        await Both(mode, server.url).run(
            with_sandbox(["pricing=127.0.0.1:9"], lambda sb: None, name="bad")
        )
    assert api.deleted == ["bad"]


async def test_bad_fork_arguments_fail_before_anything_is_sent(
    mode: str, scripted_server: Start
) -> None:
    api = Sandboxes()
    server = scripted_server(api)
    with pytest.raises(ValueError, match="SERVICE=HOST:PORT"):
        await Both(mode, server.url).run(with_sandbox(["pricing"], lambda sb: None))
    assert server.seen == []
