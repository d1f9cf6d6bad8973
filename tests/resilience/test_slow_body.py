"""Slowloris on request bodies: a body that falls behind `min_body_rate` once `body_timeout`
has passed is cut with 408 `body-timeout` and the connection closed; a body that keeps up,
however long, is forwarded whole. Real proxy process, real upstream, raw sockets."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.processes import Proc
from tests.support.upstream import RecordingUpstream

Upstreams = Callable[[str], Any]
ProxyFactory = Callable[..., Proc]


def config(address: str) -> dict[str, Any]:
    return {"version": "body-1", "services": [{"name": "svc", "endpoints": [address]}]}


async def metric(proxy: Proc, family: str, labels: str) -> float:
    async with httpx.AsyncClient(base_url=proxy.url("admin")) as admin:
        text = (await admin.get("/metrics")).text
    for line in text.splitlines():
        if re.match(re.escape(family) + r"\{" + re.escape(labels) + r"\} ", line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_body_slower_than_the_minimum_rate_is_cut_with_408(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    up: RecordingUpstream = await upstreams("up")
    proxy = proxy_factory(config(up.address), "--body-timeout", "0.5", "--min-body-rate", "1000")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports["outbound"])
    writer.write(b"POST /upload HTTP/1.1\r\nhost: svc\r\ncontent-length: 100000\r\n\r\n")
    started = time.monotonic()

    async def trickle() -> None:
        while not writer.is_closing():
            writer.write(b"x" * 10)  # 100 B/s: a tenth of the minimum rate
            await asyncio.sleep(0.1)  # the slow client's pace, not synchronisation

    pacer = asyncio.ensure_future(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), 10)  # until the proxy closes
    finally:
        pacer.cancel()
        writer.close()
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"x-forklane-error: body-timeout" in answer
    assert 0.5 <= elapsed < 2.0  # 0.5 s plus a few bytes' worth, swept every 0.1 s
    assert up.requests == []  # the upstream never got a complete request
    assert await metric(proxy, "forklane_rejected_requests_total", 'reason="body-timeout"') == 1


async def test_a_body_that_keeps_up_is_forwarded_whole(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    up: RecordingUpstream = await upstreams("up")
    proxy = proxy_factory(config(up.address), "--body-timeout", "0.3", "--min-body-rate", "1000")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports["outbound"])
    writer.write(b"POST /upload HTTP/1.1\r\nhost: svc\r\ncontent-length: 2000\r\n\r\n")
    for _ in range(10):  # 2,000 bytes in about a second: 2,000 B/s, twice the minimum
        writer.write(b"y" * 200)
        await asyncio.sleep(0.1)  # the client's pace
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert [len(r.body) for r in up.requests] == [2000]
