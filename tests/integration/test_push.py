"""Snapshot push end to end on loopback: a real grpc.aio PushServer and real Subscribers.

Each test drives what an operator or a proxy would notice: which version a proxy serves,
what the control plane reports about it, and what happens across outages and bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import pytest

from forklane.controlplane.auth import Grant
from forklane.controlplane.publisher import SnapshotPublisher
from forklane.controlplane.push.registry import ProxyRegistry
from forklane.controlplane.push.server import PushServer
from forklane.proxy.persist import SNAPSHOT_FILE, load_snapshot
from forklane.proxy.push_messages import METHOD, SubscribeRequest, encode_request
from forklane.proxy.schema import Fork, RoutingSnapshot, Service
from forklane.proxy.state import TableHolder
from forklane.proxy.subscriber import Subscriber

TOKEN = "proxy-secret-token"


def snapshot(version: int, *, forks: int = 0) -> RoutingSnapshot:
    return RoutingSnapshot(
        version=str(version),
        services=(Service(name="catalog", endpoints=("127.0.0.1:9001",)),),
        forks=tuple(
            Fork(routing_key=f"key{i}", service="catalog", endpoints=("127.0.0.1:9101",))
            for i in range(forks)
        ),
    )


def invalid_snapshot(version: int) -> RoutingSnapshot:
    """A snapshot built without validation (as a buggy or newer compiler might): its fork names
    a service the snapshot does not define, which the proxy's schema refuses."""
    fork = Fork.model_construct(
        routing_key="k1",
        service="ghost",
        endpoints=("127.0.0.1:9101",),
        fallback="fail",
        sandbox="",
        lb="round_robin",
        timeouts=snapshot(1).services[0].timeouts,
    )
    good = snapshot(version)
    return RoutingSnapshot.model_construct(
        version=str(version),
        carriers=good.carriers,
        services=good.services,
        forks=(fork,),
        splits=(),
        mirrors=(),
    )


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition with a deadline (for state that has no event of its own)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def _allow(token: str | None) -> Grant | None:
    return Grant("test") if token == TOKEN else None


@dataclass
class ControlPlane:
    publisher: SnapshotPublisher
    registry: ProxyRegistry
    server: PushServer
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def restart(self) -> None:
        """A new server process on the same port (registry and publisher start empty too)."""
        self.registry = ProxyRegistry(replica="cp-1")
        self.server = PushServer(self.publisher, self.registry, authorize=_allow)
        assert await self.server.start(self.address) == self.port


@pytest.fixture
async def cp() -> AsyncIterator[ControlPlane]:
    publisher = SnapshotPublisher()
    registry = ProxyRegistry(replica="cp-0")
    server = PushServer(publisher, registry, authorize=_allow)
    port = await server.start("127.0.0.1:0")
    plane = ControlPlane(publisher, registry, server, port)
    yield plane
    await plane.server.aclose()


@dataclass
class Proxy:
    sub: Subscriber
    holder: TableHolder
    task: asyncio.Task[None]
    transitions: list[bool] = field(default_factory=list)

    @property
    def version(self) -> str | None:
        return self.holder.table.version if self.holder.table is not None else None


StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy(cp: ControlPlane) -> AsyncIterator[StartProxy]:
    proxies: list[Proxy] = []

    async def start(
        node_id: str = "p1",
        *,
        token: str | None = TOKEN,
        state_dir: Path | None = None,
        holder: TableHolder | None = None,
        address: str | None = None,
        wait_connected: bool = False,
    ) -> Proxy:
        holder = holder or TableHolder()
        transitions: list[bool] = []
        sub = Subscriber(
            address or cp.address,
            holder,
            node_id,
            "catalog",
            ["inbound", "outbound"],
            token=token,
            state_dir=state_dir,
            on_connected_change=transitions.append,
            backoff_base=0.05,
            backoff_cap=0.2,
        )
        task = asyncio.create_task(sub.run())
        proxy = Proxy(sub, holder, task, transitions)
        proxies.append(proxy)
        if wait_connected:
            await until(lambda: sub.connected)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.sub.aclose()
        await proxy.task


async def test_publish_reaches_every_subscriber_and_all_ack(
    cp: ControlPlane, start_proxy: StartProxy
) -> None:
    proxies = [await start_proxy(f"node-{i}") for i in range(5)]
    await until(lambda: len(cp.registry) == 5 and all(p.sub.connected for p in proxies))
    assert cp.registry.all_acked(1) is False

    await cp.publisher.publish(snapshot(1))
    await asyncio.wait_for(cp.registry.wait_all_acked(1), 5)
    await cp.publisher.publish(snapshot(2, forks=3))
    await asyncio.wait_for(cp.registry.wait_all_acked(2), 5)

    assert [p.version for p in proxies] == ["2"] * 5
    assert all(len(p.holder.table.services["catalog"].forks) == 3 for p in proxies)  # type: ignore[union-attr]
    infos = {i.node_id: i for i in cp.registry.list()}
    assert set(infos) == {f"node-{i}" for i in range(5)}
    for info in infos.values():
        assert (info.sent_version, info.acked_version, info.nacked_version) == ("2", "2", None)
        assert info.listeners == ["inbound", "outbound"] and info.service == "catalog"
        assert info.replica == "cp-0"
    # The server saw the ACKs; each proxy counts its own once its write call returns.
    await until(lambda: all(p.sub.acks == 2 for p in proxies))
    assert all(p.sub.nacks == 0 for p in proxies)


async def test_late_subscriber_gets_latest_and_slow_one_skips_versions(
    cp: ControlPlane, start_proxy: StartProxy
) -> None:
    for v in range(1, 6):
        await cp.publisher.publish(snapshot(v))
    proxy = await start_proxy()
    await until(lambda: proxy.version == "5")
    assert proxy.sub.pushes_received == 1  # only the latest, not five versions


async def test_invalid_snapshot_is_nacked_and_never_applied(
    cp: ControlPlane, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(wait_connected=True)
    await cp.publisher.publish(snapshot(1))
    await asyncio.wait_for(cp.registry.wait_all_acked(1), 5)
    old_table = proxy.holder.table

    await cp.publisher.publish(invalid_snapshot(2))
    await until(lambda: proxy.sub.nacks == 1)
    await until(lambda: [i.nacked_version for i in cp.registry.list()] == ["2"])
    [info] = cp.registry.list()
    assert info.acked_version == "1" and info.nacked_version == "2"
    assert info.last_error is not None and "unknown service 'ghost'" in info.last_error
    assert proxy.holder.table is old_table and proxy.version == "1"
    assert not cp.registry.all_acked(2)
    assert "ghost" in proxy.holder.last_error

    # The control plane does not resend the refused version; the next good one goes through.
    await cp.publisher.publish(snapshot(3))
    await asyncio.wait_for(cp.registry.wait_all_acked(3), 5)
    [info] = cp.registry.list()
    assert (info.acked_version, info.nacked_version, info.last_error) == ("3", None, None)
    assert proxy.sub.pushes_received == 3


async def test_snapshot_failing_table_build_is_nacked(
    cp: ControlPlane, start_proxy: StartProxy
) -> None:
    # A sidecar configured with an unusable local app address cannot build any table.
    from forklane.proxy.table import LocalIdentity

    holder = TableHolder(LocalIdentity(service="catalog", app="127.0.0.1:0"))
    proxy = await start_proxy(holder=holder)
    await cp.publisher.publish(snapshot(1))
    await until(lambda: proxy.sub.nacks == 1)
    # The proxy counts its NACK when it sends it; the server records it when it arrives.
    await until(lambda: [i.nacked_version for i in cp.registry.list()] == ["1"])
    [info] = cp.registry.list()
    assert info.nacked_version == "1" and info.acked_version is None
    assert "port must be 1..65535" in (info.last_error or "")
    assert holder.table is None


async def test_outage_keeps_table_then_reconnects_to_newer_version(
    cp: ControlPlane, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(wait_connected=True)
    await cp.publisher.publish(snapshot(1))
    await asyncio.wait_for(cp.registry.wait_all_acked(1), 5)
    table = proxy.holder.table

    await cp.server.aclose()
    await until(lambda: not proxy.sub.connected)
    assert proxy.holder.table is table  # still serving the last good table
    assert proxy.transitions == [True, False]
    reconnects = proxy.sub.reconnects
    await until(lambda: proxy.sub.reconnects > reconnects)  # retrying in the background
    assert proxy.sub.last_error.startswith("UNAVAILABLE")

    await cp.publisher.publish(snapshot(2))
    await cp.restart()
    await until(lambda: proxy.version == "2")
    # Under load the first attempt after the restart may itself be cut and retried.
    # The control plane records the ACK when it arrives, a moment after the proxy applied
    # the version: wait for the record itself, not for the proxy's side of it.
    await until(lambda: proxy.sub.connected
                and [i.acked_version for i in cp.registry.list()] == ["2"])
    assert proxy.transitions[-1] is True
    [info] = cp.registry.list()
    assert info.acked_version == "2" and info.replica == "cp-1"


async def test_acked_snapshot_is_persisted_for_a_cold_start(
    cp: ControlPlane, start_proxy: StartProxy, tmp_path: Path
) -> None:
    proxy = await start_proxy(state_dir=tmp_path)
    await cp.publisher.publish(snapshot(1, forks=2))
    await until(lambda: proxy.sub.acks == 1)
    await until(lambda: (tmp_path / SNAPSHOT_FILE).exists())
    assert load_snapshot(tmp_path) == snapshot(1, forks=2)

    # Control plane down, sidecar restarted: it serves the persisted snapshot.
    await cp.server.aclose()
    cold = TableHolder()
    restarted = await start_proxy("p1-restarted", state_dir=tmp_path, holder=cold)
    await until(lambda: cold.table is not None)
    assert restarted.version == "1" and not restarted.sub.connected
    assert cold.source.startswith("persisted:")
    assert len(cold.table.services["catalog"].forks) == 2  # type: ignore[union-attr]


async def test_bad_token_is_refused_and_reported(
    cp: ControlPlane, start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    await cp.publisher.publish(snapshot(1))
    caplog.set_level(logging.ERROR, logger="forklane.proxy.subscriber")
    wrong = await start_proxy("intruder", token="wrong")
    anonymous = await start_proxy("anonymous", token=None)
    await until(lambda: wrong.sub.last_error != "" and anonymous.sub.last_error != "")
    assert wrong.sub.last_error.startswith("UNAUTHENTICATED")
    assert "token is invalid" in wrong.sub.last_error
    assert "missing bearer token" in anonymous.sub.last_error
    assert not wrong.sub.connected and wrong.holder.table is None
    assert wrong.transitions == [] and len(cp.registry) == 0
    assert any("refused the subscription" in r.getMessage() for r in caplog.records)


async def test_raw_client_errors_get_clear_statuses(cp: ControlPlane) -> None:
    async with grpc.aio.insecure_channel(cp.address) as channel:
        call = channel.stream_stream(METHOD)(metadata=(("authorization", f"Bearer {TOKEN}"),))
        await call.write(b"{not json")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "SubscribeRequest" in (err.value.details() or "")

        call = channel.stream_stream(METHOD)(metadata=(("authorization", f"Bearer {TOKEN}"),))
        await call.write(encode_request(SubscribeRequest(version_info="3")))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "must carry 'node'" in (err.value.details() or "")
    assert len(cp.registry) == 0


@contextlib.contextmanager
def _closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


async def test_unreachable_control_plane_retries_without_crashing(
    start_proxy: StartProxy,
) -> None:
    with _closed_port() as port:
        proxy = await start_proxy(address=f"127.0.0.1:{port}")
        await until(lambda: proxy.sub.reconnects >= 2)
    assert not proxy.sub.connected and proxy.transitions == []
    assert proxy.sub.last_error.startswith("UNAVAILABLE")
    assert not proxy.task.done()


async def test_unanswered_push_holds_back_the_next_and_latest_wins(cp: ControlPlane) -> None:
    """One push in flight per stream: a proxy busy with v1 later gets v3, never v2."""
    from forklane.proxy.push_messages import Node, decode_response

    await cp.publisher.publish(snapshot(1))
    async with grpc.aio.insecure_channel(cp.address) as channel:
        call = channel.stream_stream(METHOD)(metadata=(("authorization", f"Bearer {TOKEN}"),))
        await call.write(encode_request(SubscribeRequest(node=Node(id="slow"))))
        first = decode_response(await call.read())
        assert first.version_info == "1"
        await cp.publisher.publish(snapshot(2))
        await cp.publisher.publish(snapshot(3))
        await call.write(
            encode_request(SubscribeRequest(version_info="1", response_nonce=first.nonce))
        )
        second = decode_response(await call.read())
        assert second.version_info == "3"
        # A stale answer (wrong nonce) is ignored; answers are read in order, so once the
        # real ACK of 3 shows, the stale NACK before it has been seen and dropped.
        stale = SubscribeRequest(version_info="1", response_nonce="x", error_detail="old")
        await call.write(encode_request(stale))
        ack = SubscribeRequest(version_info="3", response_nonce=second.nonce)
        await call.write(encode_request(ack))
        await asyncio.wait_for(cp.registry.wait_all_acked(3), 5)
        [info] = cp.registry.list()
        assert (info.sent_version, info.acked_version, info.nacked_version) == ("3", "3", None)
        call.cancel()
    await until(lambda: len(cp.registry) == 0)
