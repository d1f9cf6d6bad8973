"""The tunnel's multiplexer with real sockets on loopback: two `Mux`es joined back to back
(what the WebSocket carries between them is exactly what they send), a client on one side,
a service on the other."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from forklane.controlplane.tunnel.endpoint import http_failure
from forklane.controlplane.tunnel.frames import DATA, decode
from forklane.controlplane.tunnel.mux import Mux


@dataclass
class Pair:
    """`near` is the control plane's end (it opens streams for accepted connections),
    `far` the laptop's (it dials `service_port` for each stream)."""

    service_port: int
    near: Mux | None = None
    far: Mux | None = None
    listen_port: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    in_flight: list[int] = field(default_factory=list)  # DATA bytes near→far not yet credited
    refuse: bool = False


@contextlib.asynccontextmanager
async def joined(service_port: int, *, refuse: bool = False) -> AsyncIterator[Pair]:
    pair = Pair(service_port, refuse=refuse)

    async def to_far(message: bytes) -> None:
        assert pair.far is not None
        frame = decode(message)
        if frame.kind == DATA:
            pair.in_flight.append(len(frame.payload))
        pair.far.handle(message)

    async def to_near(message: bytes) -> None:
        assert pair.near is not None
        pair.near.handle(message)

    async def dial(sid: int) -> None:
        assert pair.far is not None
        if pair.refuse:
            await pair.far.reset(sid, "127.0.0.1:1 on laptop refused the connection")
            return
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.service_port)
        await pair.far.bridge(sid, reader, writer)

    def on_open(sid: int, service: str) -> None:
        assert service == "web"
        task = asyncio.create_task(dial(sid))
        pair.tasks.add(task)
        task.add_done_callback(pair.tasks.discard)

    pair.near = Mux(to_far, opener=True)
    pair.far = Mux(to_near, opener=False, on_open=on_open)

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert pair.near is not None
        await pair.near.bridge(pair.near.open(), reader, writer, service="web",
                               failure=http_failure)

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    pair.listen_port = server.sockets[0].getsockname()[1]
    try:
        yield pair
    finally:
        server.close()
        for task in list(pair.tasks):
            task.cancel()


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    """A service that echoes every byte, then closes when its client half-closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_bytes_cross_both_ways_and_a_half_close_ends_the_stream(echo: int) -> None:
    async with joined(echo) as pair:
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.listen_port)
        blob = bytes(range(256)) * 4096 * 4  # 4 MiB: many times the credit
        writer.write(blob)
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(-1), 20)
        assert got == blob
        writer.close()
        assert max(pair.in_flight) <= 64 * 1024


async def test_a_slow_reader_holds_the_sender_within_the_credit() -> None:
    sent = asyncio.Event()
    total = 64 << 20  # beyond what the kernel's loopback buffers hold

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"y" * 65536
        for _ in range(total // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        sent.set()
        writer.close()

    server = await asyncio.start_server(firehose, "127.0.0.1", 0)
    try:
        async with joined(server.sockets[0].getsockname()[1]) as pair:
            reader, writer = await asyncio.open_connection("127.0.0.1", pair.listen_port)
            writer.write(b"go")
            first = await asyncio.wait_for(reader.read(65536), 10)
            assert first
            # we stop reading: the service must stall long before it has sent everything
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sent.wait(), 1.0)
            got = len(first)
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 20):
                got += len(chunk)
            assert got == total
            writer.close()
    finally:
        server.close()


async def test_a_refused_local_connection_is_a_503_naming_why(echo: int) -> None:
    async with joined(echo, refuse=True) as pair:
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.listen_port)
        writer.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"x-forklane-error: fork-unavailable" in answer
        assert answer.endswith(b"127.0.0.1:1 on laptop refused the connection\n")


async def test_a_dropped_channel_fails_the_waiting_request_at_once() -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        arrived.set()
        await release.wait()  # never answers: only the drop ends the request
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        async with joined(server.sockets[0].getsockname()[1]) as pair:
            reader, writer = await asyncio.open_connection("127.0.0.1", pair.listen_port)
            writer.write(b"POST /x HTTP/1.1\r\nHost: web\r\ncontent-length: 0\r\n\r\n")
            await asyncio.wait_for(arrived.wait(), 10)
            assert pair.near is not None
            pair.near.fail_all("the tunnel to laptop dropped")
            answer = await asyncio.wait_for(reader.read(-1), 5)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert answer.endswith(b"fork-unavailable: the tunnel to laptop dropped\n")
    finally:
        release.set()
        server.close()
