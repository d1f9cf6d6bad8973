"""`forklane connect` end to end, with real processes on loopback.

The environment is a control plane and a proxy process; the developer's machine is a
`python -m forklane connect` process and local servers in the test loop (HTTP/1.1, gRPC,
WebSocket). Requests carrying the sandbox's key reach the local servers through the tunnel,
requests without it never do; the local service's own calls reach the environment through
the printed HTTP_PROXY with the key; a killed tunnel under traffic leaves a ledger where every
request was answered or failed with `503 fork-unavailable`, and none hung.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from tests.integration.test_controlplane_e2e import (
    ADMIN,
    Api,
    ControlPlane,
    Sidecar,
    World,
    base_world,
    endpoint,
    get,
    until,
    wait_acked,
)
from tests.integration.test_grpc import Upstream as GrpcUpstream
from tests.integration.test_tap import TapReader, installed
from tests.integration.test_websocket import WsUpstream
from tests.support.processes import Proc, spawn, wait_for_line
from tests.support.upstream import RecordingUpstream

KEY = "connectkey0123456789abcdef"
HEADERS = {"x-forklane-routing-key": KEY}
pytestmark = pytest.mark.slow


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with aiohttp.ClientSession() as session:
        w = World(tmp_path, session)
        try:
            yield w
        finally:
            await w.aclose()


@dataclass
class Env:
    plane: ControlPlane
    api: Api
    sidecar: Sidecar
    baseline: RecordingUpstream
    laptop: RecordingUpstream
    connects: list[Proc] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.connects:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(10)


def cli(plane: ControlPlane, *args: str, token: str = ADMIN) -> list[str]:
    return [sys.executable, "-m", "forklane", "--url", plane.url, "--token", token, *args]


def start_connect(world: World, env: Env, *args: str) -> Proc:
    proc = spawn(cli(env.plane, "connect", "--sandbox", "dev", *args),
                 world.tmp / f"connect-{len(env.connects)}.log")
    env.connects.append(proc)
    wait_for_line(proc, "connected: sandbox dev", 30)
    return proc


async def environment(world: World, forks: list[dict[str, Any]] | None = None,
                      services: dict[str, str] | None = None) -> Env:
    plane, api, token, baseline = await base_world(world)
    for name, address in (services or {}).items():
        await api.write("POST", "services", {"metadata": {"name": name},
                                             "spec": {"endpoints": [address]}})
    laptop = await world.upstream("laptop")
    await api.write("POST", "sandboxes", {"metadata": {"name": "dev"}, "spec": {
        "routingKey": KEY, "forks": [{"service": "web", "local": True}, *(forks or [])]}})
    sidecar = world.sidecar(plane, token, "p1")
    return Env(plane, api, sidecar, baseline, laptop)


async def routed_everywhere(env: Env) -> None:
    """The proxy runs the control plane's latest snapshot."""
    version = int((await env.api.call("GET", "snapshot"))[1]["version"])
    await wait_acked(env.api, ["p1"], version)


async def test_keyed_requests_reach_the_laptop_over_http1_grpc_and_websocket(
        world: World) -> None:
    greeter, greeter_laptop = GrpcUpstream("greeter").start(), GrpcUpstream("greeter-laptop").start()
    chat, chat_laptop = await WsUpstream("chat").start(), await WsUpstream("chat-laptop").start()
    try:
        env = await environment(
            world, forks=[{"service": "greeter", "local": True}, {"service": "chat", "local": True}],
            services={"greeter": greeter.address, "chat": chat.address})
        try:
            start_connect(world, env, "--service", "web", "--to", endpoint(env.laptop),
                          "--service", f"greeter={greeter_laptop.address}",
                          "--service", "chat", "--to", chat_laptop.address)
            await routed_everywhere(env)
            s, sidecar = world.session, env.sidecar
            # HTTP/1.1
            assert await get(s, sidecar, "web", HEADERS) == (200, "laptop")
            assert await get(s, sidecar, "web") == (200, "baseline")
            assert env.laptop.requests[-1].header("x-forklane-routing-key") == KEY
            assert len(env.laptop.requests) == 1  # the keyless request never reached it
            # gRPC (h2c through the byte stream)
            target = f"127.0.0.1:{sidecar.proc.ports['outbound']}"

            def unary(metadata: tuple[tuple[str, str], ...]) -> str:
                with grpc.insecure_channel(
                        target, options=[("grpc.default_authority", "greeter")]) as channel:
                    reply, call = channel.unary_unary("/test.Echo/Unary").with_call(
                        b"ping", metadata=metadata, timeout=10)
                    assert reply == b"ping"
                    return str(dict(call.initial_metadata())["x-upstream"])

            assert await asyncio.to_thread(unary, tuple(HEADERS.items())) == "greeter-laptop"
            assert await asyncio.to_thread(unary, ()) == "greeter"
            assert greeter_laptop.keys == [KEY]
            # WebSocket (HTTP/1.1 Upgrade)
            url = f"http://127.0.0.1:{sidecar.proc.ports['outbound']}/ws"
            for headers, expected in (({"host": "chat", **HEADERS}, "chat-laptop"),
                                      ({"host": "chat"}, "chat")):
                async with s.ws_connect(url, headers=headers) as ws:
                    for i in range(5):
                        await ws.send_str(f"m{i}")
                        assert await ws.receive_str(timeout=10) == f"{expected}:m{i}"
            assert chat_laptop.keys == [KEY]
            # the status says where from, and `forklane get` shows it
            _, doc = await env.api.call("GET", "sandboxes/dev")
            conns = {c["service"]: c for c in doc["status"]["connections"]}
            assert set(conns) == {"web", "greeter", "chat"}
            assert all(c["state"] == "connected" and c["host"] for c in conns.values())
            shown = (await asyncio.to_thread(
                subprocess.run, cli(env.plane, "get", "sandbox", "dev"), capture_output=True,
                text=True, timeout=60, check=True)).stdout
            assert f"connected from {conns['web']['host']} since" in shown
        finally:
            env.stop()
    finally:
        greeter.stop()
        greeter_laptop.stop()
        await chat.aclose()
        await chat_laptop.aclose()


async def test_the_laptops_own_calls_reach_the_environment_with_the_key(world: World) -> None:
    orders_fork = await world.upstream("orders-fork")
    orders = await world.upstream("orders")
    env = await environment(world, forks=[{"service": "orders",
                                           "endpoints": [endpoint(orders_fork)]}],
                            services={"orders": endpoint(orders)})
    try:
        env_file = world.tmp / "connect.env"
        proc = start_connect(world, env, "--service", "web", "--to", endpoint(env.laptop),
                             "--env-file", str(env_file), "--outbound",
                             f"http://127.0.0.1:{env.sidecar.proc.ports['outbound']}")
        line = wait_for_line(proc, "HTTP_PROXY=", 10)
        proxy_url = re.search(r"HTTP_PROXY=(\S+)", line).group(1)  # type: ignore[union-attr]
        wait_for_line(proc, "wrote ", 10)
        written = env_file.read_text().splitlines()
        assert f"HTTP_PROXY={proxy_url}" in written and f"FORKLANE_ROUTING_KEY={KEY}" in written
        await routed_everywhere(env)
        # the local service calls orders as it would in the cluster, through HTTP_PROXY
        async with world.session.get("http://orders/checkout?n=1", proxy=proxy_url) as r:
            assert r.status == 200 and r.headers["x-upstream"] == "orders-fork"
        assert orders_fork.requests[-1].header("x-forklane-routing-key") == KEY
        assert orders_fork.requests[-1].target == "/checkout?n=1"
        assert not orders.requests
        # CONNECT: the key cannot be added inside TLS, and the answer says so
        port = int(proxy_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"CONNECT orders:443 HTTP/1.1\r\nHost: orders:443\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 405 ") and b"plain HTTP" in answer
    finally:
        env.stop()


def run_cli(plane: ControlPlane, *args: str, token: str = ADMIN) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(plane, "connect", *args, token=token), capture_output=True,
                          text=True, timeout=60, check=False)


async def test_refusals_are_one_line_and_an_exit_code(world: World) -> None:
    env = await environment(world)
    try:
        status, doc = await env.api.call("POST", "tokens", {"subject": "alice",
                                                            "role": "developer"})
        assert status == 201
        here = endpoint(env.laptop)
        cases = [
            (("--sandbox", "dev", "--service", "web", "--to", here), doc["token"], 5,
             "belongs to"),
            (("--sandbox", "nope", "--service", "web", "--to", here), ADMIN, 3, "nope"),
            (("--sandbox", "dev", "--service", "orders", "--to", here), ADMIN, 6,
             "unknown service 'orders'"),
            (("--sandbox", "dev", "--service", "web", "--to", "127.0.0.1:1"), ADMIN, 7,
             "nothing accepts connections on 127.0.0.1:1"),
            (("--sandbox", "dev", "--service", "web"), ADMIN, 2, "one --to per --service"),
        ]
        for args, token, code, text in cases:
            done = await asyncio.to_thread(run_cli, env.plane, *args, token=token)
            assert done.returncode == code, (args, done.stdout, done.stderr)
            assert text in done.stderr and "Traceback" not in done.stderr, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        await env.api.write("POST", "services", {"metadata": {"name": "orders"},
                                                 "spec": {"endpoints": ["127.0.0.1:9"]}})
        done = await asyncio.to_thread(run_cli, env.plane, "--sandbox", "dev", "--service",
                                       "orders", "--to", here)
        assert done.returncode == 6 and "does not fork 'orders'" in done.stderr, done.stderr
        # a developer connects to a sandbox of her own (made with --fork web=local)
        made = await asyncio.to_thread(subprocess.run, cli(
            env.plane, "sandbox", "create", "--name", "mine", "--fork", "web=local",
            token=doc["token"]), capture_output=True, text=True, timeout=60, check=False)
        assert made.returncode == 0, made.stderr
        hers = spawn(cli(env.plane, "connect", "--sandbox", "mine", "--service", "web", "--to",
                         here, token=doc["token"]), world.tmp / "connect-alice.log")
        env.connects.append(hers)
        wait_for_line(hers, "connected: sandbox mine", 30)
        # the owner may, and a second machine may not take the fork over while connected
        start_connect(world, env, "--service", "web", "--to", here)
        done = await asyncio.to_thread(run_cli, env.plane, "--sandbox", "dev", "--service",
                                       "web", "--to", here)
        assert done.returncode == 4 and "is connected from" in done.stderr, done.stderr
    finally:
        env.stop()


async def test_ctrl_c_withdraws_the_route_before_exiting(world: World) -> None:
    env = await environment(world)
    try:
        proc = start_connect(world, env, "--service", "web", "--to", endpoint(env.laptop))
        await routed_everywhere(env)
        assert await get(world.session, env.sidecar, "web", HEADERS) == (200, "laptop")
        _, doc = await env.api.call("GET", "sandboxes/dev")
        tunnel = doc["status"]["connections"][0]["endpoint"]
        described = (await asyncio.to_thread(
            subprocess.run, cli(env.plane, "describe", "sandbox", "dev"), capture_output=True,
            text=True, timeout=60, check=True)).stdout
        assert re.search(r"Connected: +web connected from \S+ since .* \(tunnel "
                         + re.escape(tunnel), described), described
        assert re.search(r"Connected +admin", described), described  # the audited event
        proc.popen.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.popen.wait, 30) == 0, proc.output()
        assert "route withdrawn; disconnected" in proc.output()
        # withdrawn before the process ended: status and snapshot no longer name the tunnel
        _, doc = await env.api.call("GET", "sandboxes/dev")
        assert doc["status"].get("connections", []) == []
        _, snap = await env.api.call("GET", "snapshot")
        assert not [f for f in snap["forks"] if tunnel in f["endpoints"]]
        await routed_everywhere(env)
        assert await get(world.session, env.sidecar, "web", HEADERS) == (200, "baseline")
    finally:
        env.stop()


async def test_requests_through_the_tunnel_show_in_the_tap(world: World) -> None:
    env = await environment(world)
    try:
        start_connect(world, env, "--service", "web", "--to", endpoint(env.laptop))
        await routed_everywhere(env)
        async with TapReader(world.session, env.plane, "sandbox=dev") as tap:
            await installed(world.session, env.sidecar.proc, tap.id)
            assert await get(world.session, env.sidecar, "web", HEADERS) == (200, "laptop")
            assert await get(world.session, env.sidecar, "web") == (200, "baseline")

            async def shown() -> bool:
                return bool(tap.requests())

            await until("the tap line", shown)
            (line,) = tap.requests()
            assert line["service"] == "web" and line["status"] == 200
            assert line["destination"] == f"fork/web@{KEY}"  # the fork, served by the laptop
    finally:
        env.stop()


@dataclass
class Ledger:
    sent: int = 0
    answered: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # 503 with the documented reason
    failures: list[str] = field(default_factory=list)  # anything else, hangs included


async def keyed_load(session: aiohttp.ClientSession, sidecar: Sidecar, ledger: Ledger,
                     stop: asyncio.Event, workers: int = 4) -> None:
    url = f"http://127.0.0.1:{sidecar.proc.ports['outbound']}/load"

    async def worker() -> None:
        while not stop.is_set():
            ledger.sent += 1
            try:
                async with asyncio.timeout(10):  # longer than this is a hang
                    async with session.get(url, headers={"Host": "web", **HEADERS}) as r:
                        await r.read()
                        if r.status == 200:
                            ledger.answered[r.headers.get("x-upstream", "?")] += 1
                        elif r.status == 503 and r.headers.get("x-forklane-error") == \
                                "fork-unavailable":
                            ledger.refused[r.headers.get("x-forklane-error", "")] += 1
                        else:
                            ledger.failures.append(f"{r.status} {r.headers.get('x-forklane-error')}"
                                                   f" {(await r.text())[:80]}")
            except TimeoutError:
                ledger.failures.append("hung for 10 s")
            except aiohttp.ClientError as exc:
                ledger.failures.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.005)  # a steady trickle, not a flood: the machine is shared

    await asyncio.gather(*(worker() for _ in range(workers)))


async def test_killing_and_restoring_the_tunnel_under_traffic_loses_nothing(
        world: World) -> None:
    env = await environment(world)
    try:
        first = start_connect(world, env, "--service", "web", "--to", endpoint(env.laptop))
        await routed_everywhere(env)
        _, doc = await env.api.call("GET", "sandboxes/dev")
        tunnel = doc["status"]["connections"][0]["endpoint"]
        ledger, stop = Ledger(), asyncio.Event()
        load = asyncio.create_task(keyed_load(world.session, env.sidecar, ledger, stop))

        async def answers(at_least: int) -> bool:
            return ledger.answered["laptop"] >= at_least

        await until("answers from the laptop", lambda: answers(50))
        first.popen.kill()  # the developer's machine vanishes mid-traffic
        first.popen.wait(10)

        async def refused() -> bool:
            return sum(ledger.refused.values()) >= 5

        await until("503 fork-unavailable while the tunnel is down", refused)
        _, doc = await env.api.call("GET", "sandboxes/dev")
        assert doc["status"]["connections"][0]["state"] == "reconnecting"
        before = ledger.answered["laptop"]
        start_connect(world, env, "--service", "web", "--to", endpoint(env.laptop))
        await until("answers from the laptop again", lambda: answers(before + 50))
        stop.set()
        await asyncio.wait_for(load, 30)
        _, doc = await env.api.call("GET", "sandboxes/dev")
        assert doc["status"]["connections"][0]["endpoint"] == tunnel  # the route never moved
        assert ledger.failures == [], ledger.failures[:10]
        settled = sum(ledger.answered.values()) + sum(ledger.refused.values())
        assert ledger.sent == settled
        assert set(ledger.answered) == {"laptop"}  # never the baseline: the route stayed
    finally:
        env.stop()


async def test_a_grpc_call_in_flight_when_the_tunnel_drops_ends_unavailable(
        world: World) -> None:
    greeter, laptop = GrpcUpstream("greeter").start(), GrpcUpstream("greeter-laptop").start()
    try:
        env = await environment(world, forks=[{"service": "greeter", "local": True}],
                                services={"greeter": greeter.address})
        try:
            proc = start_connect(world, env, "--service", f"greeter={laptop.address}",
                                 "--service", "web", "--to", endpoint(env.laptop))
            await routed_everywhere(env)
            target = f"127.0.0.1:{env.sidecar.proc.ports['outbound']}"

            def waiting_call() -> grpc.StatusCode:
                with grpc.insecure_channel(
                        target, options=[("grpc.default_authority", "greeter")]) as channel:
                    try:
                        channel.unary_unary("/test.Echo/Wait")(
                            b"", metadata=tuple(HEADERS.items()), timeout=20)
                    except grpc.RpcError as exc:
                        return exc.code()  # type: ignore[no-any-return]
                    return grpc.StatusCode.OK

            call = asyncio.create_task(asyncio.to_thread(waiting_call))
            await asyncio.to_thread(laptop.streaming.wait, 20)  # the call reached the laptop
            started = time.monotonic()
            proc.popen.kill()
            assert await asyncio.wait_for(call, 15) == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 5  # failed at once, not at its deadline
        finally:
            laptop.release.set()
            env.stop()
    finally:
        greeter.stop()
        laptop.stop()


class Relay:
    """A TCP relay in front of the control plane that can cut every connection through it
    (a laptop's Wi-Fi dropping for a moment), and keeps accepting afterwards."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> Relay:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.pairs.append((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for a, b in self.pairs:
            a.transport.abort()
            b.transport.abort()
        self.pairs.clear()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.cut()


async def test_a_short_drop_reconnects_by_itself_and_keeps_the_route(world: World) -> None:
    env = await environment(world)
    relay = await Relay(env.plane.api_port).start()
    try:
        proc = spawn([sys.executable, "-m", "forklane", "--url", f"http://127.0.0.1:{relay.port}",
                      "--token", ADMIN, "connect", "--sandbox", "dev", "--service", "web",
                      "--to", endpoint(env.laptop)], world.tmp / "connect-relayed.log")
        env.connects.append(proc)
        # (in a thread: the relay runs in this loop)
        await asyncio.to_thread(wait_for_line, proc, "connected: sandbox dev", 30)
        await routed_everywhere(env)
        _, doc = await env.api.call("GET", "sandboxes/dev")
        tunnel = doc["status"]["connections"][0]["endpoint"]
        ledger, stop = Ledger(), asyncio.Event()
        load = asyncio.create_task(keyed_load(world.session, env.sidecar, ledger, stop))

        async def answers(at_least: int) -> bool:
            return ledger.answered["laptop"] >= at_least

        await until("answers from the laptop", lambda: answers(50))
        relay.cut()  # the WebSocket drops; the process lives on and dials again
        await asyncio.to_thread(wait_for_line, proc, "reconnected: sandbox dev", 30)
        before = ledger.answered["laptop"]
        await until("answers from the laptop again", lambda: answers(before + 50))
        stop.set()
        await asyncio.wait_for(load, 30)
        assert "tunnel dropped" in proc.output()
        _, doc = await env.api.call("GET", "sandboxes/dev")
        (entry,) = doc["status"]["connections"]
        assert entry["endpoint"] == tunnel and entry["state"] == "connected"
        assert ledger.failures == [], ledger.failures[:10]
        assert ledger.sent == sum(ledger.answered.values()) + sum(ledger.refused.values())
        assert set(ledger.answered) == {"laptop"}
    finally:
        relay.close()
        env.stop()


async def test_a_restarted_control_plane_gets_the_tunnel_back(world: World) -> None:
    env = await environment(world)
    try:
        proc = start_connect(world, env, "--service", "web", "--to", endpoint(env.laptop))
        await routed_everywhere(env)
        assert await get(world.session, env.sidecar, "web", HEADERS) == (200, "laptop")
        env.plane.kill()  # SIGKILL: its entry in the status points at a listener gone with it
        await asyncio.to_thread(wait_for_line, proc, "reconnecting in", 30)
        env.plane.start()  # same ports, same store; the laptop dials it again by itself
        await asyncio.to_thread(wait_for_line, proc, "reconnected: sandbox dev", 30)
        _, doc = await env.api.call("GET", "sandboxes/dev")
        (entry,) = doc["status"]["connections"]
        assert entry["state"] == "connected"

        async def laptop_answers() -> bool:
            try:
                return await get(world.session, env.sidecar, "web", HEADERS) == (200, "laptop")
            except aiohttp.ClientError:
                return False

        await until("the laptop answering through the new endpoint", laptop_answers, 30)
    finally:
        env.stop()


async def test_a_restarted_control_plane_forgets_tunnels_whose_laptop_is_gone(
        world: World) -> None:
    env = await environment(world)
    try:
        proc = start_connect(world, env, "--service", "web", "--to", endpoint(env.laptop))
        await routed_everywhere(env)
        env.plane.kill()  # no chance to clean up ...
        proc.popen.kill()  # ... and the laptop is gone too
        proc.popen.wait(10)
        env.plane.start()
        _, doc = await env.api.call("GET", "sandboxes/dev")
        assert not doc["status"].get("connections")
        await routed_everywhere(env)
        assert await get(world.session, env.sidecar, "web", HEADERS) == (200, "baseline")
    finally:
        env.stop()


async def test_deleting_the_sandbox_ends_the_connect(world: World) -> None:
    env = await environment(world)
    try:
        proc = start_connect(world, env, "--service", "web", "--to", endpoint(env.laptop))
        status, _ = await env.api.call("DELETE", "sandboxes/dev")
        assert status == 200
        assert await asyncio.to_thread(proc.popen.wait, 30) == 3, proc.output()
        assert "error: sandbox dev was deleted: disconnected" in proc.output()
    finally:
        env.stop()


async def test_a_tunnel_not_back_within_the_grace_period_is_withdrawn(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORKLANE_TUNNEL_GRACE", "1")
    env = await environment(world)
    try:
        proc = start_connect(world, env, "--service", "web", "--to", endpoint(env.laptop))
        await routed_everywhere(env)
        proc.popen.kill()
        proc.popen.wait(10)

        async def withdrawn() -> bool:
            _, doc = await env.api.call("GET", "sandboxes/dev")
            return not doc["status"].get("connections")

        started = time.monotonic()
        await until("the route withdrawn after the grace period", withdrawn)
        assert time.monotonic() - started >= 0.5
        await routed_everywhere(env)
        assert await get(world.session, env.sidecar, "web", HEADERS) == (200, "baseline")
    finally:
        env.stop()
