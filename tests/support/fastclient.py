"""A minimal keep-alive HTTP/1.1 load client for tests that need thousands of requests.

httpx costs about a millisecond of CPU per request; this client parses responses with
httptools on raw asyncio streams, so 10,000 requests take seconds, not minutes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httptools


class _Response:
    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_message_complete(self) -> None:
        self.done = True


async def count_upstreams(
    port: int,
    n: int,
    headers_for: Callable[[int], dict[str, str]],
    connections: int = 8,
    path: str = "/",
) -> Counter[str]:
    """Send `n` GETs over `connections` keep-alive connections; count `x-upstream` answers.
    Any non-200 answer raises."""
    seen: Counter[str] = Counter()

    async def worker(start: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(start, n, connections):
                lines = "".join(f"{k}: {v}\r\n" for k, v in headers_for(i).items())
                writer.write(f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode())
                resp = _Response()
                parser = httptools.HttpResponseParser(resp)
                while not resp.done:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("proxy closed the connection")
                    parser.feed_data(data)
                status = parser.get_status_code()
                if status != 200:
                    raise AssertionError(f"request {i}: status {status} {resp.headers}")
                seen[resp.headers.get(b"x-upstream", b"?").decode()] += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(s) for s in range(connections)))
    return seen
