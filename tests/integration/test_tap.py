"""`forklane tap` end to end: a real control plane and a real proxy process, real upstreams.

The tap must show exactly the decisions the proxy made for the filter (checked against the
proxy's own access log), nothing of other traffic, and a viewer that stops reading must not
slow the proxy: every decision is then either shown or counted as dropped (a ledger).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httptools
import pytest

from tests.integration.test_controlplane_e2e import (
    ADMIN,
    Api,
    ControlPlane,
    World,
    base_world,
    endpoint,
    until,
    wait_acked,
)
from tests.support.processes import Proc, start_proxy

KEY = "tapkey0123456789abcdef"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with aiohttp.ClientSession() as session:
        w = World(tmp_path, session)
        try:
            yield w
        finally:
            await w.aclose()


async def tapped_world(world: World) -> tuple[ControlPlane, Api, Proc, Any, Any]:
    plane, api, token, baseline = await base_world(world)
    fork = await world.upstream("fork")
    await api.write("POST", "sandboxes", {"metadata": {"name": "dev"}, "spec": {
        "routingKey": KEY, "forks": [{"service": "web", "endpoints": [endpoint(fork)]}]}})
    proxy = start_proxy(
        None, world.tmp / "proxy-tap.log", "--controlplane", plane.grpc, "--service", "frontend",
        "--token", token, "--node-id", "p-tap", "--access-log",
    )
    world.sidecars.append(_Sidecar(proxy))
    version = int((await api.call("GET", "snapshot"))[1]["version"])
    await wait_acked(api, ["p-tap"], version)
    return plane, api, proxy, baseline, fork


class _Sidecar:
    """What `World.aclose` needs of a sidecar: its process."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc


class TapReader:
    """One `GET /api/v1/tap` stream read in the background into `lines`."""

    def __init__(self, session: aiohttp.ClientSession, plane: ControlPlane, query: str) -> None:
        self.session = session
        self.url = f"{plane.url}/api/v1/tap?{query}"
        self.lines: list[dict[str, Any]] = []
        self.arrived: list[float] = []  # when each line was read (time.time())
        self.started = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TapReader:
        self.task = asyncio.create_task(self._read())
        await asyncio.wait_for(self.started.wait(), 20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _read(self) -> None:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with self.session.get(self.url, headers=headers, timeout=aiohttp.ClientTimeout()) as r:
            assert r.status == 200, await r.text()
            async for raw in r.content:
                doc = json.loads(raw)
                self.lines.append(doc)
                self.arrived.append(time.time())
                if doc["type"] == "started":
                    self.id = doc["id"]
                    self.started.set()

    def requests(self) -> list[dict[str, Any]]:
        return [d for d in self.lines if d["type"] == "request"]


async def installed(session: aiohttp.ClientSession, proxy: Proc, tap_id: str, present: bool = True,
                    ) -> None:
    async def check() -> bool:
        async with session.get(f"{proxy.url('admin')}/config") as r:
            return (tap_id in (await r.json())["taps"]) is present

    await until(f"tap {tap_id} {'on' if present else 'off'} the proxy", check)


async def send(session: aiohttp.ClientSession, proxy: Proc, path: str, key: bool) -> int:
    headers = {"Host": "web", **({"x-forklane-routing-key": KEY} if key else {})}
    async with session.get(f"{proxy.url()}{path}", headers=headers) as r:
        await r.read()
        return r.status


def _access_log(proxy: Proc) -> list[dict[str, Any]]:
    out = []
    for line in proxy.output().splitlines():
        if line.startswith("{") and '"listener"' in line:
            out.append(json.loads(line))
    return out


def _essence(doc: dict[str, Any]) -> tuple[Any, ...]:
    return (doc["method"], doc["target"], doc["status"], doc["service"], doc["kind"],
            doc["rule"], doc["destination"], doc["carrier"], doc["routing_key"])


async def test_tap_shows_exactly_the_decisions_made(world: World) -> None:
    plane, _, proxy, _, fork = await tapped_world(world)
    s = world.session
    async with TapReader(s, plane, "sandbox=dev") as everything, \
            TapReader(s, plane, "sandbox=dev&status=5xx") as errors:
        await installed(s, proxy, everything.id)
        await installed(s, proxy, errors.id)
        for i in range(6):
            assert await send(s, proxy, f"/k{i}?q={i}", key=True) == 200
            assert await send(s, proxy, f"/n{i}", key=False) == 200
        fork.behaviour.status = 503
        for i in range(2):
            assert await send(s, proxy, f"/e{i}", key=True) == 503

        async def all_seen() -> bool:
            return len(everything.requests()) >= 8 and len(errors.requests()) >= 2

        await until("the tap lines", all_seen)
        logged = [d for d in _access_log(proxy) if d["routing_key"] == KEY]
        assert len(logged) == 8
        seen = everything.requests()
        assert sorted(map(_essence, seen)) == sorted(map(_essence, logged))
        assert [d["target"] for d in errors.requests()] == ["/e0", "/e1"]
        for d in seen:
            assert d["proxy"] == "p-tap" and d["listener"] == "outbound"
            assert d["protocol"] == "http/1.1" and d["service"] == "web"
            assert d["destination"].startswith("fork/") and d["duration_ms"] >= 0
            assert abs(d["time"] - time.time()) < 60
        # nothing of the keyless traffic, and nothing beyond what was sent
        assert not any(d["target"].startswith("/n") for d in seen)
        # a last request, in order behind the others: nothing more arrived before it
        assert await send(s, proxy, "/last", key=True) == 503

        async def last_seen() -> bool:
            return any(d["target"] == "/last" for d in everything.requests())

        await until("the last line", last_seen)
        assert len(everything.requests()) == 9 and everything.requests()[-1]["target"] == "/last"
        first = everything.id
    await installed(s, proxy, first, present=False)  # the viewer left: the proxy stops sending


async def test_tap_refuses_bad_input_and_strangers(world: World) -> None:
    plane, api, _, _, _ = await tapped_world(world)
    status, doc = await api.call("GET", "tap?sandbox=dev&status=7xx")
    assert status == 400 and "7xx" in doc["error"]["message"]
    status, doc = await api.call("GET", "tap?sandbox=nope")
    assert status == 404
    status, doc = await api.call("POST", "tokens", {"subject": "alice", "role": "developer"})
    assert status == 201
    async with world.session.get(f"{plane.url}/api/v1/tap?sandbox=dev", headers={
            "Authorization": f"Bearer {doc['token']}"}) as r:
        assert r.status == 403  # dev belongs to the admin who created it


class _Chunks:
    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False

    def on_body(self, data: bytes) -> None:
        self.body.extend(data)

    def on_message_complete(self) -> None:
        self.done = True


@contextlib.asynccontextmanager
async def stalled_tap(plane: ControlPlane, query: str) -> AsyncIterator[socket.socket]:
    """A viewer that sends its request and then does not read (a tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", plane.api_port))
    sock.sendall(f"GET /api/v1/tap?{query} HTTP/1.1\r\nHost: cp\r\n"
                 f"Authorization: Bearer {ADMIN}\r\n\r\n".encode())
    try:
        yield sock
    finally:
        sock.close()


async def _latencies(session: aiohttp.ClientSession, proxy: Proc, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        assert await send(session, proxy, f"/lat{i}", key=True) == 200
        out.append(time.perf_counter() - t0)
    return out


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


@pytest.mark.parametrize("query", ["sandbox=dev", "sandbox=dev&headers=true&body=4096"],
                         ids=["plain", "capturing"])
async def test_a_stalled_viewer_leaves_proxy_latency_unchanged(world: World, query: str) -> None:
    plane, _, proxy, _, _ = await tapped_world(world)
    s = world.session
    n = 1500
    await _latencies(s, proxy, 100)  # warm up
    quiet = await _latencies(s, proxy, n)
    async with stalled_tap(plane, query) as sock:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        collector = _Chunks()
        parser = httptools.HttpResponseParser(collector)
        while b"\n" not in collector.body:  # the started line comes at once
            parser.feed_data(await asyncio.wait_for(loop.sock_recv(sock, 4096), 20))
        started = json.loads(bytes(collector.body).split(b"\n")[0])
        await installed(s, proxy, started["id"])
        stalled = await _latencies(s, proxy, n)
        # now read everything: each decision was shown or counted as dropped

        def tally() -> tuple[int, int]:
            shown = dropped = 0
            for raw in bytes(collector.body).split(b"\n")[:-1]:  # complete lines only
                doc = json.loads(raw)
                if doc["type"] == "request":
                    shown += 1
                elif doc["type"] == "dropped":
                    dropped = doc["viewer"] + sum(doc["proxies"].values())
            return shown, dropped

        async def accounted() -> bool:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 0.2)
            except TimeoutError:
                data = b""
            if data:
                parser.feed_data(data)
            shown, dropped = tally()
            return shown + dropped >= n

        await until("every decision shown or counted as dropped", accounted, within=60)
        shown, dropped = tally()
    assert shown + dropped == n, (shown, dropped)
    figures = (f"{query}: sequential keyed GETs through the proxy, n={n}: "
               f"p50 {_p(quiet, .5):.3f} ms / "
               f"p99 {_p(quiet, .99):.3f} ms without a tap; p50 {_p(stalled, .5):.3f} ms / "
               f"p99 {_p(stalled, .99):.3f} ms with a stalled viewer "
               f"({shown} shown, {dropped} dropped)")
    sys.stderr.write(figures + "\n")
    assert statistics.median(stalled) < 2 * statistics.median(quiet) + 0.001, figures


async def _cli(plane: ControlPlane, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "FORKLANE_URL": plane.url, "FORKLANE_TOKEN": ADMIN,
           "FORKLANE_CONFIG": os.devnull}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "forklane", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _cli_tap(plane: ControlPlane, *args: str) -> asyncio.subprocess.Process:
    return await _cli(plane, "tap", *args)


async def test_the_cli_prints_one_line_per_decision(world: World) -> None:
    plane, _, proxy, _, _ = await tapped_world(world)
    s = world.session
    proc = await _cli_tap(plane, "--sandbox", "dev", "--seconds", "60", "-o", "json")
    try:
        assert proc.stdout is not None
        started = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert started["type"] == "started"
        await installed(s, proxy, started["id"])
        assert await send(s, proxy, "/cli?x=1", key=True) == 200
        assert await send(s, proxy, "/other", key=False) == 200
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert line["type"] == "request" and line["target"] == "/cli?x=1"
        assert line["destination"].startswith("fork/") and line["carrier"]
        replay = await _cli(plane, "explain", "--from-tap", line["id"], "-o", "json")
        out, err = await replay.communicate()
        assert replay.returncode == 0, err
        explained = json.loads(out)
        assert explained["sameAsRecorded"] is True and explained["kind"] == "fork"
        assert explained["recorded"]["id"] == line["id"]
        assert explained["carrier"] == line["carrier"]
        gone = await _cli(plane, "explain", "--from-tap", "r999999")
        _, err = await gone.communicate()
        assert gone.returncode == 3 and b"r999999" in err and b"Traceback" not in err
    finally:
        proc.terminate()
        await proc.wait()
    table = await _cli_tap(plane, "--sandbox", "dev", "--seconds", "0.5")
    _, err = await table.communicate()
    assert table.returncode == 0, err
    assert b"started" in err
    bad = await _cli_tap(plane, "--sandbox", "dev", "--status", "9xx")
    _, err = await bad.communicate()
    assert bad.returncode == 2 and b"9xx" in err and b"Traceback" not in err
    missing = await _cli_tap(plane, "--sandbox", "nope", "--seconds", "1")
    _, err = await missing.communicate()
    assert missing.returncode == 3 and b"Traceback" not in err, err


async def test_message_deliveries_appear_beside_requests(world: World) -> None:
    from forklane.client import AsyncClient
    from forklane.messaging.report import Delivery
    from forklane.messaging.tap import TapReporter

    plane, _, proxy, _, _ = await tapped_world(world)
    s = world.session
    async with TapReader(s, plane, "sandbox=dev") as viewer, \
            AsyncClient(url=plane.url, token=ADMIN) as client:
        await installed(s, proxy, viewer.id)
        reporter = TapReporter(client, interval=0.05)
        await reporter.start()
        for key, outcome in ((KEY, "taken"), (None, "taken"), (KEY, "handed-on")):
            reporter(Delivery(time.time(), "nats", "orders.created", "orders", "dev", outcome,
                              "dev" if key else "baseline", key, "baggage:forklane-routing-key"
                              if key else None, "forked" if key else "no-key", "7"))
        assert await send(s, proxy, "/beside", key=True) == 200

        def kinds() -> list[tuple[str, str]]:
            return [(d["type"], d.get("outcome") or d.get("target")) for d in viewer.lines
                    if d["type"] in ("request", "delivery")]

        async def both() -> bool:
            return len(kinds()) >= 3

        await until("deliveries and the request", both)
        await reporter.aclose()
    assert sorted(kinds()) == [("delivery", "handed-on"), ("delivery", "taken"),
                               ("request", "/beside")]
    assert reporter.sent == 3 and reporter.failures == 0


async def test_a_tap_that_ends_counts_the_lines_it_never_showed(world: World) -> None:
    """`seconds` ends a stream whose viewer fell behind: what is still queued is reported as
    dropped in a last line, so shown + dropped = decisions made, even then. (Lines capture
    16 KiB bodies, so that they outgrow the socket buffers behind the viewer.)"""
    plane, _, proxy, _, _ = await tapped_world(world)
    s = world.session
    n = 300
    async with stalled_tap(plane, "sandbox=dev&seconds=3&body=16384") as sock:
        ends = time.monotonic() + 3
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        collector = _Chunks()
        parser = httptools.HttpResponseParser(collector)
        while b"\n" not in collector.body:
            parser.feed_data(await asyncio.wait_for(loop.sock_recv(sock, 4096), 20))
        await installed(s, proxy, json.loads(bytes(collector.body).split(b"\n")[0])["id"])
        body = b"b" * 16384
        for i in range(n):
            async with s.post(f"{proxy.url()}/big{i}", data=body,
                              headers={"Host": "web", "x-forklane-routing-key": KEY}) as r:
                assert r.status == 200
                await r.read()

        async def over() -> bool:
            return time.monotonic() > ends + 0.5  # the stream's own deadline, then some

        await until("the tap's deadline", over)
        while True:  # now read it all, to the end of the stream
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 20)
            if not data:
                break
            parser.feed_data(data)
            if bytes(collector.body).endswith(b"\n") and collector.done:
                break
    shown = dropped = 0
    for raw in bytes(collector.body).split(b"\n")[:-1]:
        doc = json.loads(raw)
        if doc["type"] == "request":
            shown += 1
        elif doc["type"] == "dropped":
            dropped = doc["viewer"] + sum(doc["proxies"].values())
    assert dropped > 0 and shown + dropped == n, (shown, dropped)
