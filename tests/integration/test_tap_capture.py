"""Tap capture end to end: a control plane in this process, a real proxy process, real
HTTP/1.1 and gRPC upstreams and clients.

A viewer that asks for headers and body prefixes sees them exactly as they passed (the
request as forwarded, the response as returned); credentials and configured fields are
`[redacted]` by the proxy, so their values never reach the control plane (checked on what
the control plane received from the proxy); a viewer that did not ask gets no capture.
Run over both hot-path modes, as the capture hooks sit in compiled modules.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc.aio
import pytest

from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from forklane.proxy import hotpath
from tests.integration.test_controlplane_e2e import ADMIN, until
from tests.integration.test_grpc import Upstream as GrpcUpstream
from tests.integration.test_tap import TapReader, installed
from tests.support.processes import Proc, start_proxy
from tests.support.upstream import RecordingUpstream

KEY = "capkey0123456789abcdef"
SECRETS = ("SECRET-A", "SECRET-B", "SECRET-C", "SECRET-D", "SECRET-E")
BODY = b"first sixty-four bytes are shown to the viewer; the rest stays out of it entirely"


@dataclass
class _Plane:
    """What `TapReader` needs of a control plane."""

    url: str


@dataclass
class Scene:
    plane: ControlPlane
    url: str
    proxy: Proc
    web: RecordingUpstream
    greeter: GrpcUpstream
    received: list[dict[str, Any]]


async def _call(session: aiohttp.ClientSession, url: str, method: str, path: str,
                body: Any = None) -> Any:
    async with session.request(method, f"{url}/api/v1/{path}", json=body,
                               headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        doc = await r.json()
        assert r.status in (200, 201), doc
        return doc


@pytest.fixture(params=["compiled", "interpreted"])
async def scene(request: pytest.FixtureRequest, tmp_path: Path,
                session: aiohttp.ClientSession) -> AsyncIterator[Scene]:
    mode = request.param
    if mode == "compiled" and not hotpath.compiled_available():
        pytest.skip("the compiled hot path is not built")
    plane = ControlPlane(Settings(
        listen="127.0.0.1:0", grpc="127.0.0.1:0", data_dir=tmp_path, admin_token=ADMIN,
        replica="cap", tap_redact_headers="x-api-key"))
    await plane.start()
    received: list[dict[str, Any]] = []
    hub_received = plane.taps.received

    def spy(proxy: str, records: Any, dropped: Mapping[str, int]) -> None:
        """What the control plane got from the proxy, as it got it."""
        received.extend(json.loads(json.dumps(list(records))))
        hub_received(proxy, records, dropped)

    plane.taps.received = spy  # type: ignore[method-assign]
    web = await RecordingUpstream("web").start()
    web.behaviour.extra_headers = [("set-cookie", "sid=SECRET-E"), ("x-resp", "shown")]
    greeter = GrpcUpstream("greeter").start()
    proxy: Proc | None = None
    try:
        assert plane.api_address is not None and plane.grpc_address is not None
        url = f"http://127.0.0.1:{plane.api_address[1]}"
        for name, up in (("web", web.address), ("greeter", greeter.address)):
            await _call(session, url, "POST", "services",
                        {"metadata": {"name": name}, "spec": {"endpoints": [up]}})
        await _call(session, url, "POST", "sandboxes", {"metadata": {"name": "dev"}, "spec": {
            "routingKey": KEY, "forks": [{"service": "web", "endpoints": [web.address]},
                                         {"service": "greeter", "endpoints": [greeter.address]}]}})
        version = int((await _call(session, url, "GET", "snapshot"))["version"])
        proxy = start_proxy(
            None, tmp_path / "proxy.log", "--controlplane",
            f"127.0.0.1:{plane.grpc_address[1]}", "--service", "frontend", "--token", ADMIN,
            "--node-id", "p-cap", env={"FORKLANE_HOT_PATH": mode},
        )

        async def acked() -> bool:
            doc = await _call(session, url, "GET", "proxies")
            return any(p["nodeId"] == "p-cap" and int(p.get("ackedVersion") or -1) >= version
                       for p in doc["items"])

        await until("the proxy's ACK", acked)
        yield Scene(plane, url, proxy, web, greeter, received)
    finally:
        if proxy is not None:
            proxy.stop()
        greeter.stop()
        await web.aclose()
        await plane.aclose()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _h1(session: aiohttp.ClientSession, proxy: Proc) -> tuple[bytes, dict[str, str]]:
    headers = {"Host": "web", "x-forklane-routing-key": KEY, "Authorization": "Bearer SECRET-A",
               "Cookie": "sid=SECRET-B", "x-api-key": "SECRET-C", "x-note": "visible"}
    async with session.post(f"{proxy.url()}/echo?q=1", data=BODY, headers=headers) as r:
        assert r.status == 200
        return await r.read(), dict(r.headers)


async def _grpc(proxy: Proc) -> None:
    target = f"127.0.0.1:{proxy.ports['outbound']}"
    async with grpc.aio.insecure_channel(
            target, options=[("grpc.default_authority", "greeter")]) as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        meta = (("x-forklane-routing-key", KEY), ("authorization", "Bearer SECRET-D"),
                ("x-note", "grpc"))
        assert await unary(b"ping-grpc", metadata=meta, timeout=10) == b"ping-grpc"


def _headers(part: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in part["headers"]}


async def test_capture_shows_heads_and_body_prefixes_redacted_by_the_proxy(
    scene: Scene, session: aiohttp.ClientSession,
) -> None:
    view = _Plane(scene.url)
    async with TapReader(session, view, "sandbox=dev&headers=true&body=64") as capturing, \
            TapReader(session, view, "sandbox=dev") as plain:
        await installed(session, scene.proxy, capturing.id)
        await installed(session, scene.proxy, plain.id)
        answer, _ = await _h1(session, scene.proxy)
        await _grpc(scene.proxy)

        async def both() -> bool:
            return len(capturing.requests()) >= 2 and len(plain.requests()) >= 2

        await until("both lines on both viewers", both)
    by_protocol = {d["protocol"]: d for d in capturing.requests()}
    h1, g = by_protocol["http/1.1"], by_protocol["grpc"]

    request, response = h1["capture"]["request"], h1["capture"]["response"]
    sent = _headers(request)
    assert sent["x-note"] == "visible" and sent["host"] == "web"
    assert sent["x-forklane-routing-key"] == KEY
    for name in ("authorization", "cookie", "x-api-key"):
        assert sent[name] == "[redacted]", name
    assert request["body"] == BODY[:64].decode() and request["body_bytes"] == len(BODY)
    assert request["body_truncated"] is True
    returned = _headers(response)
    assert returned["x-resp"] == "shown" and returned["set-cookie"] == "[redacted]"
    assert returned["content-length"] == str(len(answer))
    assert response["body"] == answer[:64].decode()
    assert response["body_bytes"] == len(answer)

    grpc_request = _headers(g["capture"]["request"])
    assert grpc_request[":path"] == "/test.Echo/Unary" and grpc_request["x-note"] == "grpc"
    assert grpc_request["authorization"] == "[redacted]"
    framed = b"\x00" + len(b"ping-grpc").to_bytes(4, "big") + b"ping-grpc"
    assert g["capture"]["request"]["body"] == framed.decode()
    assert g["capture"]["request"]["body_bytes"] == len(framed)
    assert g["capture"]["response"]["body"] == framed.decode()
    assert _headers(g["capture"]["response"])[":status"] == "200"

    # what the control plane received: no secret, ever; captures only for the capturing tap
    wire = json.dumps(scene.received)
    assert "[redacted]" in wire
    for secret in SECRETS:
        assert secret not in wire, secret
        assert secret not in json.dumps(capturing.lines)
    for record in scene.received:
        assert ("capture" in record) is (record["taps"] == [capturing.id]), record["taps"]
    assert all("capture" not in d for d in plain.requests())


async def test_capture_off_sends_no_heads_and_bad_wishes_are_refused(
    scene: Scene, session: aiohttp.ClientSession,
) -> None:
    async with TapReader(session, _Plane(scene.url), "sandbox=dev") as plain:
        await installed(session, scene.proxy, plain.id)
        await _h1(session, scene.proxy)
        await _grpc(scene.proxy)

        async def both() -> bool:
            return len(plain.requests()) >= 2

        await until("both lines", both)
    assert scene.received and all("capture" not in r for r in scene.received)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    for query, word in (("body=99999", "body"), ("body=-1", "body"), ("headers=maybe", "headers")):
        async with session.get(f"{scene.url}/api/v1/tap?sandbox=dev&{query}",
                               headers=headers) as r:
            assert r.status == 400 and word in (await r.json())["error"]["message"], query


async def test_the_cli_prints_captures_under_their_line(
    scene: Scene, session: aiohttp.ClientSession,
) -> None:
    env = {**os.environ, "FORKLANE_URL": scene.url, "FORKLANE_TOKEN": ADMIN,
           "FORKLANE_CONFIG": os.devnull}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "forklane", "tap", "--sandbox", "dev", "--capture-headers",
        "--capture-body", "1KiB", "--seconds", "60", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        started = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert b"started" in started
        tap_id = started.split()[1].decode()
        await installed(session, scene.proxy, tap_id)
        await _h1(session, scene.proxy)
        lines: list[str] = []
        while not any(line.startswith("    < body:") for line in lines):
            lines.append((await asyncio.wait_for(proc.stdout.readline(), 30)).decode().rstrip())
    finally:
        proc.terminate()
        await proc.wait()
    assert " POST /echo?q=1 " in lines[0]
    assert "    > authorization: [redacted]" in [line.lower() for line in lines]
    assert "    > x-note: visible" in lines
    assert f"    > body: {len(BODY)} bytes" in lines
    assert f"    >   {BODY.decode()}" in lines
    assert not any("SECRET" in line for line in lines)
