"""A real HTTP/1.1 upstream for tests: answers with its own name and records every byte.

It runs in the test's event loop on 127.0.0.1:0. `raw` holds every byte it ever received, so
a test can assert that a smuggled request never reached it; `requests` holds the parsed
requests (method, target, headers, body).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httptools


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ",".join(values) if values else None


@dataclass
class Behaviour:
    """How the upstream answers; tests change it at run time."""

    status: int = 200
    delay: float = 0.0
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None  # default: JSON naming the upstream and echoing the request
    chunked: bool = False
    close_after_headers: bool = False  # reset mid-body
    hold: asyncio.Event | None = None  # wait for this before answering
    reset_before_head: bool = False  # abort the connection instead of answering
    continue_interim: bool = True  # answer `Expect: 100-continue` with a 100 first
    trailers: list[tuple[str, str]] = field(default_factory=list)  # chunked answers only
    mid_body: asyncio.Event | None = None  # chunked: send half the body, wait, send the rest


class _Conn(asyncio.Protocol):
    def __init__(self, server: RecordingUpstream) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.reset()

    def reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.server.connections += 1
        self.server.open_transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open_transports.discard(self.transport)
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self.server.raw.extend(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.server.upgrades += 1
            if self.transport is not None:
                self.transport.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                    b"upgrade: echo\r\n\r\n"
                )
                self.upgraded = True
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        expect = [v for k, v in self.headers if k.lower() == "expect"]
        if expect and expect[0].lower() == "100-continue" and self.server.behaviour.continue_interim:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.server.count_only:
            self.server.body_bytes += len(body)
        else:
            self.body.extend(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        seen = SeenRequest(method, self.url.decode("latin-1"), self.headers, bytes(self.body))
        self.server.requests.append(seen)
        keep_alive = self.parser.should_keep_alive()
        self.reset()
        asyncio.get_running_loop().create_task(self.server.answer(self, seen, keep_alive))


class RecordingUpstream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.behaviour = Behaviour()
        self.raw = bytearray()
        self.requests: list[SeenRequest] = []
        self.connections = 0
        self.upgrades = 0
        self.count_only = False
        self.body_bytes = 0
        self.download_bytes = 0  # when > 0: answer GET with this many bytes, streamed
        self.server: asyncio.Server | None = None
        self.open_transports: set[Any] = set()
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> RecordingUpstream:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self.open_transports):
                t.abort()
            await self.server.wait_closed()
            self.server = None

    async def answer(self, conn: _Conn, seen: SeenRequest, keep_alive: bool) -> None:
        b = self.behaviour
        if b.hold is not None:
            await b.hold.wait()
        if b.delay:
            await asyncio.sleep(b.delay)  # the upstream is slow on purpose (not test sync)
        t = conn.transport
        if t is None or t.is_closing():
            return
        if b.reset_before_head:
            t.abort()
            return
        if self.download_bytes and seen.method == "GET":
            await self._stream_download(conn, t)
            return
        body = b.body
        if body is None:
            body = json.dumps({"upstream": self.name, "method": seen.method,
                               "target": seen.target, "body_len": len(seen.body)}).encode()
        head = [f"HTTP/1.1 {b.status} X".encode(), f"x-upstream: {self.name}".encode()]
        head += [f"{k}: {v}".encode() for k, v in b.extra_headers]
        if not keep_alive:
            head.append(b"connection: close")
        no_body = seen.method == "HEAD" or b.status in (204, 304)
        if b.chunked and not no_body:
            head.append(b"transfer-encoding: chunked")
            t.write(b"\r\n".join(head) + b"\r\n\r\n")
            if b.close_after_headers:
                t.write(b"%x\r\n%s\r\n" % (len(body), body))
                t.abort()
                return
            if b.mid_body is not None:
                half = len(body) // 2
                t.write(b"%x\r\n%s\r\n" % (half, body[:half]))
                await b.mid_body.wait()
                body = body[half:]
            tail = b"".join(f"{k}: {v}\r\n".encode() for k, v in b.trailers)
            t.write(b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, tail))
        else:
            if b.status not in (204, 304) or seen.method == "HEAD":
                head.append(f"content-length: {len(body)}".encode())
            t.write(b"\r\n".join(head) + b"\r\n\r\n")
            if b.close_after_headers:
                t.write(body[: len(body) // 2])
                t.abort()
                return
            if not no_body:
                t.write(body)
        if not keep_alive:
            t.close()

    async def _stream_download(self, conn: _Conn, t: Any) -> None:
        """Stream `download_bytes` with flow control: memory stays bounded on both ends."""
        total = self.download_bytes
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        chunk = b"x" * (256 * 1024)
        sent = 0
        while sent < total and not t.is_closing():
            n = min(len(chunk), total - sent)
            t.write(chunk if n == len(chunk) else chunk[:n])
            sent += n
            await conn.can_write.wait()
