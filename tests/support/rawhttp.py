"""Raw HTTP/1.1 over a socket, for tests that must control every byte a client sends.

`send_raw()` writes bytes exactly as given and reads until the peer closes (with a deadline);
`parse_responses()` splits what came back into responses with a real parser (httptools), so a
body that happens to contain `HTTP/1.1` is never mistaken for a second response.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import httptools


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        return ",".join(values) if values else None


class _Collector:
    def __init__(self) -> None:
        self.responses: list[RawResponse] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.responses.append(RawResponse(0))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.responses[-1].headers.append((name.decode("latin-1").lower(),
                                           value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.responses[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.responses[-1].body += body

    def on_message_complete(self) -> None:
        self.responses[-1].complete = True


def parse_responses(data: bytes) -> list[RawResponse]:
    """Every response in `data` (not for answers to HEAD, whose length the parser can't know)."""
    collector = _Collector()
    collector.parser.feed_data(data)
    return collector.responses


async def read_until_closed(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything until EOF; raises TimeoutError if the peer keeps the connection open."""
    async with asyncio.timeout(within):
        return await reader.read()


async def send_raw(port: int, data: bytes, within: float = 5.0) -> bytes:
    """Write `data` in one go, then read until the proxy closes the connection.

    A plain socket rather than a stream: when the proxy answers and closes while bytes we sent
    are still unread, the kernel resets the connection, and a stream would drop the answer
    that had already arrived. A socket hands it over before reporting the reset."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(within):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            try:
                await loop.sock_sendall(sock, data)
            except ConnectionError:
                pass  # closed before reading everything: what it answered is still there
            chunks: list[bytes] = []
            while True:
                try:
                    chunk = await loop.sock_recv(sock, 65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
    finally:
        sock.close()


async def read_head(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """One response head (status line and fields, up to the blank line)."""
    async with asyncio.timeout(within):
        return await reader.readuntil(b"\r\n\r\n")


async def read_response(
    reader: asyncio.StreamReader, head_request: bool = False, within: float = 5.0
) -> tuple[RawResponse, bytes]:
    """One response from a kept-alive connection, framed by its own fields; returns it with the
    raw bytes of its body framing (so a test can see chunk sizes and trailers)."""
    async with asyncio.timeout(within):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        resp = RawResponse(int(lines[0].split(b" ")[1]))
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            resp.headers.append((name.decode("latin-1").strip().lower(),
                                 value.decode("latin-1").strip()))
        if head_request or resp.status in (204, 304) or 100 <= resp.status < 200:
            resp.complete = True
            return resp, b""
        length = resp.header("content-length")
        if length is not None:
            resp.body = await reader.readexactly(int(length))
            resp.complete = True
            return resp, resp.body
        if (resp.header("transfer-encoding") or "").lower() == "chunked":
            framing = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                framing += size_line
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                framing += data
                resp.body += data[:-2]
            while True:  # trailer section, up to the blank line
                line = await reader.readuntil(b"\r\n")
                framing += line
                if line == b"\r\n":
                    break
                name, _, value = line[:-2].partition(b":")
                resp.headers.append((name.decode("latin-1").strip().lower(),
                                     value.decode("latin-1").strip()))
            resp.complete = True
            return resp, bytes(framing)
        resp.body = await reader.read()  # delimited by the end of the connection
        resp.complete = True
        return resp, resp.body
